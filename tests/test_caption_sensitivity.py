"""benchmarks/caption_sensitivity.py's in-batch row: SoftREPA's contrastive loss over a batch, measured with every
(image, caption) pair denoised in one UNet call, equals the same loss built pair by pair."""

import sys

import torch
from diffusers import StableDiffusionPipeline

from diffalign.data.tables import open_table
from diffalign.objectives.softrepa import softrepa_loss
from diffalign.paths import REPO_ROOT, TOY_SD

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from caption_sensitivity import TIMESTEPS, _images, _in_batch  # noqa: E402


@torch.no_grad()
def test_in_batch_contrastive_equals_the_loss_built_pair_by_pair():
    pipe = StableDiffusionPipeline.from_pretrained(str(TOY_SD))
    table = open_table(str(REPO_ROOT / "assets/toy-data/captioned.parquet")).select(range(4))
    latents = pipe.vae.encode(_images(table, 4)).latent_dist.mean * pipe.vae.config.scaling_factor
    ids = pipe.tokenizer(list(table["caption"]), padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    states = pipe.text_encoder(ids)[0]  # [4, 77, D]
    measured = _in_batch(pipe, latents, states, torch.Generator().manual_seed(3), batch=4)

    generator = torch.Generator().manual_seed(3)
    for t in TIMESTEPS:
        eps = torch.randn(latents[:1].shape, generator=generator)
        x_t = pipe.scheduler.add_noise(latents, eps.expand_as(latents), torch.tensor([t]))
        errors = torch.tensor([[((pipe.unet(x_t[i:i + 1], t, states[j:j + 1]).sample - eps) ** 2).mean().item()
                                for j in range(4)] for i in range(4)])  # row: image, column: caption
        loss, metrics = softrepa_loss(errors, matched_weight=0.0)
        assert abs(measured[t]["contrastive"] - loss.item()) < 1e-4, t
        assert measured[t]["caption_accuracy"] == metrics["caption_accuracy"]
    assert len({round(v["contrastive"], 6) for v in measured.values()}) > 1  # the loss moves with t
