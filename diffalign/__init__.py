"""diffalign: align text-to-image diffusion models with human preferences.

``diffalign.evaluate(...)`` is the evaluation API (see diffalign.evaluation); it is imported on first use so that
``import diffalign`` stays light.
"""


def __getattr__(name: str):
    if name == "evaluate":
        from .evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'diffalign' has no attribute {name!r}")
