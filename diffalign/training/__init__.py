"""What the training loop (diffalign/train.py) composes: the trained components, the optimizer and schedule,
data-parallel helpers, the accelerator, and the step of each step kind."""
