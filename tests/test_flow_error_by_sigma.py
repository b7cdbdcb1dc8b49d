"""experiments/flow_error_by_sigma.py: its base errors are the training step's own velocity errors (the library's
family and per-sample error, at the schedule index of each σ), and a LoRA row differs from the base's."""

import json
import sys

import numpy as np
import pytest
import torch

from diffalign.paths import REPO_ROOT, TOY_FLOW

sys.path.insert(0, str(REPO_ROOT / "experiments"))
from flow_error_by_sigma import SIGMAS, _latents, main  # noqa: E402

pytestmark = pytest.mark.experiments  # a study (experiments/), out of the default suite: pytest -m experiments


def test_base_errors_are_the_training_steps_velocity_errors(tmp_path):
    from diffalign.config import load_config
    from diffalign.core.errors import per_sample_errors
    from diffalign.families import family_for
    from diffalign.models.loading import load_sd_components
    from diffalign.toy.samples import captioned_renders
    from diffalign.train import train

    train(load_config(REPO_ROOT / "configs/toy/flow_dpo.yaml", [
        ("train.max_steps", "2"), ("train.lr", "5e-2"), ("data.max_pairs", "8"), ("train.batch_size", "4"),
        ("eval.enabled", "false"),
        ("train.report_to", "none"), ("output_dir", str(tmp_path / "lora"))]))
    main(["--images", "4", "--lora", f"tuned={tmp_path / 'lora'}", "--out", str(tmp_path / "out")])
    errors = json.loads((tmp_path / "out" / "flow_error_by_sigma.json").read_text())["errors"]["fresh renders"]

    parts = load_sd_components(str(TOY_FLOW))
    family = family_for(parts)
    captions, images = captioned_renders(np.random.default_rng(123), 4)
    x0 = _latents(parts.vae, images)
    states, pooled = family.conditioner.encode(parts.tokenizers(captions).input_ids)
    generator = torch.Generator().manual_seed(0)
    for sigma, measured in zip(SIGMAS, errors["base"]):
        eps = torch.randn(x0.shape, generator=generator)
        index = torch.full((4,), round((1 - sigma) * 1000))  # shift 1: σ = 1 - index / 1000
        torch.testing.assert_close(family.sigma(index, x0).flatten(), torch.full((4,), sigma))
        with torch.no_grad():
            expected = per_sample_errors(parts.unet, family.noisy(x0, eps, index), index, states,
                                         family.target(x0, eps, index), predict=family.predict,
                                         pooled_projections=pooled)
        assert measured == pytest.approx(expected.mean().item(), rel=1e-5)
    assert max(abs(a - b) for a, b in zip(errors["base"], errors["tuned"])) > 1e-4
