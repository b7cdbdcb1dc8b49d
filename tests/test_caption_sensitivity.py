"""experiments/caption_sensitivity.py's in-batch row: SoftREPA's contrastive loss over a batch, measured with every
(image, caption) pair denoised in one UNet call, equals the same loss built pair by pair."""

import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline

from diffalign.data.tables import open_table
from diffalign.objectives.softrepa import softrepa_loss
from diffalign.paths import REPO_ROOT, TOY_SD

sys.path.insert(0, str(REPO_ROOT / "experiments"))
from caption_sensitivity import TIMESTEPS, _images, _in_batch  # noqa: E402

pytestmark = pytest.mark.experiments  # a study (experiments/), out of the default suite: pytest -m experiments


@torch.no_grad()
def test_in_batch_contrastive_equals_the_loss_built_pair_by_pair():
    pipe = StableDiffusionPipeline.from_pretrained(str(TOY_SD))
    table = open_table(str(REPO_ROOT / "assets/toy-data/captioned.parquet")).select(range(6))
    latents = pipe.vae.encode(_images(table, 6)).latent_dist.mean * pipe.vae.config.scaling_factor
    ids = pipe.tokenizer(list(table["caption"]), padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    states = pipe.text_encoder(ids)[0]  # [6, 77, D]
    measured = _in_batch(pipe, latents, states, torch.Generator().manual_seed(3), batch=3)  # two batches of 3

    generator = torch.Generator().manual_seed(3)
    for t in TIMESTEPS:
        losses, accuracies = [], []
        for batch in (slice(0, 3), slice(3, 6)):
            x0, text = latents[batch], states[batch]
            eps = torch.randn(x0[:1].shape, generator=generator)  # one noise per batch
            x_t = pipe.scheduler.add_noise(x0, eps.expand_as(x0), torch.tensor([t]))
            errors = torch.tensor([[((pipe.unet(x_t[i:i + 1], t, text[j:j + 1]).sample - eps) ** 2).mean().item()
                                    for j in range(3)] for i in range(3)])  # row: image, column: caption
            loss, metrics = softrepa_loss(errors, matched_weight=0.0)
            losses.append(loss.item())
            accuracies.append(metrics["caption_accuracy"])
        assert abs(measured[t]["contrastive"] - sum(losses) / 2) < 1e-4, t
        assert abs(measured[t]["caption_accuracy"] - sum(accuracies) / 2) < 1e-9, t
    assert len({round(v["contrastive"], 6) for v in measured.values()}) > 1  # the loss moves with t
