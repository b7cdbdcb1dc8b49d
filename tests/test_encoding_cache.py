"""The encoding cache: with it warm, training never calls the VAE or the text encoders, and trains the same
weights as without it (the posterior is cached, each step still draws its own seeded latent)."""

import pytest
import torch
from safetensors.torch import load_file

from diffalign.config import load_config
from diffalign.data.encoding_cache import EncodingCache, FrozenEncoders, tensor_digest
from diffalign.models.lora import LORA_FILE
from diffalign.paths import REPO_ROOT
from diffalign.train import train

FAST = [("train.max_steps", "4"), ("train.batch_size", "4"), ("eval.enabled", "false"),
        ("train.report_to", "none"), ("data.max_pairs", "8"), ("train.warmup_steps", "0")]


def _cfg(out, cache_dir, method="dpo", extra=()):
    cache = [("data.cache_encodings", "true"), ("data.cache_dir", str(cache_dir))] if cache_dir else []
    return load_config(REPO_ROOT / f"configs/toy/{method}.yaml", FAST + cache + [("output_dir", str(out))] +
                       list(extra))


@pytest.mark.parametrize("method", ["dpo", "kto", "tdpo"])
def test_a_warm_cache_calls_no_encoder_and_trains_the_same_weights(tmp_path, method):
    plain = train(_cfg(tmp_path / "plain", None, method))
    # 8 examples, 4 per step: the first epoch (steps 1-2) fills the cache, the second only reads it.
    cold = train(_cfg(tmp_path / "cold", tmp_path / "cache", method))
    assert cold["encoding_cache"]["misses"] > 0
    warm = train(_cfg(tmp_path / "warm", tmp_path / "cache", method))
    assert warm["encoding_cache"]["encoder_calls"] == {"vae": 0, "text_encoder": 0}
    assert warm["encoding_cache"]["misses"] == 0 and warm["encoding_cache"]["hits"] > 0
    for run in ("cold", "warm"):
        a, b = load_file(tmp_path / "plain" / LORA_FILE), load_file(tmp_path / run / LORA_FILE)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)


def test_another_transform_uses_another_cache_folder(tmp_path):
    first = train(_cfg(tmp_path / "a", tmp_path / "cache"))
    second = train(_cfg(tmp_path / "b", tmp_path / "cache", extra=[("data.random_flip", "true")]))
    assert second["encoding_cache"]["directory"] != first["encoding_cache"]["directory"]
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one fingerprint folder per transform
    assert second["encoding_cache"]["encoder_calls"]["vae"] > 0


def test_entries_are_content_addressed_and_survive_a_reopen(tmp_path):
    vae_calls = []

    class Posterior:
        def __init__(self, x):
            self.mean, self.std = x[:, :1] * 2, x[:, :1].abs() + 1

    class FakeVAE:  # a stand-in encoder: the cache, not the VAE, is under test
        device, dtype = torch.device("cpu"), torch.float32

        def encode(self, x):
            vae_calls.append(len(x))
            return type("Out", (), {"latent_dist": Posterior(x)})

    cache = EncodingCache(tmp_path)
    encoders = FrozenEncoders(FakeVAE(), None, cache)
    pixels = torch.randn(3, 3, 4, 4)
    mean, std = encoders.posterior(pixels)
    again = FrozenEncoders(FakeVAE(), None, cache).posterior(torch.cat([pixels[1:], torch.randn(1, 3, 4, 4)]))
    assert vae_calls == [3, 1]  # only the new image is encoded, in one batched call
    torch.testing.assert_close(again[0][:2], mean[1:])
    cache.flush()
    reopened = EncodingCache(tmp_path)
    assert len(reopened) == 8 and reopened.get(f"img-{tensor_digest(pixels[0])}-std") is not None
    assert tensor_digest(pixels[0]) != tensor_digest(pixels[0].double())  # dtype is part of the key
    assert not list(tmp_path.glob(".writing-*"))
    # A kill during a flush leaves a half-written temporary: it is not a shard and is never read.
    (tmp_path / ".writing-shard-0-1.safetensors").write_bytes(b"truncated")
    assert len(EncodingCache(tmp_path)) == 8
    # Two caches with the same writer name (two runs on one fingerprint) never replace each other's shard.
    first, second = EncodingCache(tmp_path), EncodingCache(tmp_path)
    first.put("a", torch.ones(2))
    second.put("b", torch.zeros(2))
    first.flush()
    second.flush()
    both = EncodingCache(tmp_path)
    assert both.get("a") is not None and both.get("b") is not None


def test_diffalign_cache_precomputes_every_epoch_the_run_will_see(tmp_path, capsys):
    """tdpo perturbs each caption afresh every epoch: the precompute walks all epochs of the run."""
    from diffalign.cli import main

    args = ["--config", str(REPO_ROOT / "configs/toy/tdpo.yaml"), *[x for k, v in FAST for x in (f"--{k}", v)],
            "--data.cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "run")]
    assert main(["cache", *args]) == 0
    assert "over 2 epoch(s)" in capsys.readouterr().out
    warm = train(_cfg(tmp_path / "run", tmp_path / "cache", "tdpo"))
    assert warm["encoding_cache"]["encoder_calls"] == {"vae": 0, "text_encoder": 0}
