"""A disk cache of the frozen encoders' outputs: VAE posteriors of images and text-encoder states of captions.

The VAE and text encoders never train, so encoding the same image view or caption twice is wasted work (for SD1.5
at 512 px the VAE encode of a pair costs about as much as a UNet forward). Entries are content-addressed:
    img-<digest>-mean, img-<digest>-std   [C, h, w]  the posterior of one preprocessed image [3, H, W]
    txt-<digest>                          [77, D]    the last hidden state of one token-id row [77]
where ``digest`` hashes the exact input tensor. So any change to the data or the transform (resolution, crop,
flip) gives new keys, and random crops/flips are cached per view (a flip is 2 views; a random crop rarely
repeats, so it gains little — turn random_crop off to use the cache well). The posterior, not a latent draw, is
stored: each step still draws its own seeded sample from it, exactly as without the cache.

Shards live in ``root/<fingerprint>/`` where the fingerprint covers the encoders (model id or folder, revision,
variant, the weight files' size and time, the dtype) and the data source, resolution and transform, so a new
model or data set never reads old entries. They are safetensors files written to a temporary name and renamed
(a kill leaves no half shard), one series per process, read lazily (memory-mapped) through an index of keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FLUSH_BYTES = 256 << 20  # write a shard once this much is pending


def default_cache_root() -> Path:
    return Path(os.environ.get("DIFFALIGN_CACHE", Path.home() / ".cache" / "diffalign")) / "encodings"


def tensor_digest(x: torch.Tensor) -> str:
    """Hash of a tensor's dtype, shape and bytes (a 16-byte blake2b, hex)."""
    x = x.detach().contiguous().cpu()
    h = hashlib.blake2b(f"{x.dtype}|{tuple(x.shape)}".encode(), digest_size=16)
    h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()


def encoders_fingerprint(pretrained: str, revision: str | None, variant: str | None, dtype: torch.dtype,
                         data_identity: dict) -> str:
    """Which encoders and which data the entries come from (see the module docstring)."""
    h = hashlib.sha256(json.dumps([pretrained, revision, variant, str(dtype), data_identity], sort_keys=True,
                                  default=str).encode())
    root = Path(pretrained)
    # Local weights: size and time of every file the encoders come from (hashing GBs each run is too slow):
    # the VAE and both text encoders of a folder, a single-file checkpoint, a replacement VAE (data_identity).
    candidates = [root / sub for sub in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3")] + [root]
    if data_identity.get("vae"):
        candidates.append(Path(data_identity["vae"]))
    for place in candidates:
        files = sorted(place.glob("*")) if place.is_dir() and place != root else [place] if place.is_file() else []
        for path in files:
            if path.is_file():
                stat = path.stat()
                h.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


class EncodingCache:
    """Content-addressed tensors on disk; ``get`` returns None for a key never stored."""

    def __init__(self, directory: Path, writer: str = "0"):
        self.directory, self.writer = Path(directory), writer
        self.directory.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.hits = self.misses = 0
        for shard in sorted(self.directory.glob("shard-*.safetensors")):  # not .writing-* temporaries
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    self.index.setdefault(key, shard)

    def __len__(self) -> int:
        return len(self.index) + len(self.pending)

    def get(self, key: str) -> torch.Tensor | None:
        if key in self.pending:
            return self.pending[key]
        shard = self.index.get(key)
        if shard is None:
            return None
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(shard), framework="pt")
        return self._handles[shard].get_tensor(key)

    def put(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().contiguous().cpu()
        self.pending[key] = value
        self.pending_bytes += value.numel() * value.element_size()
        if self.pending_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the pending entries as one new shard (temporary name, then rename)."""
        if not self.pending:
            return
        # A unique name: two processes with the same writer name (two runs, or `diffalign cache` during training)
        # must never replace each other's shard; keys are content-addressed, so duplicate entries are harmless.
        final = self.directory / f"shard-{self.writer}-{time.time_ns()}-{os.getpid()}.safetensors"
        temporary = self.directory / f".writing-{final.name}"
        save_file(self.pending, str(temporary))
        os.replace(temporary, final)
        for key in self.pending:
            self.index.setdefault(key, final)
        self.pending, self.pending_bytes = {}, 0


class FrozenEncoders:
    """The VAE posterior of images and the text conditioning of captions, through an optional cache.

    ``text``: a text encoder (SD) or a conditioner (models/conditioning.py, families/: SDXL, SD3 and Flux have
    several encoders and a pooled output). Without a cache every call runs the encoders; with one, only the inputs never seen run (batched),
    and their outputs are stored. ``calls`` counts the encoder invocations (the warm-cache test reads it).
    """

    def __init__(self, vae, text, cache: EncodingCache | None = None):
        from ..models.conditioning import SDConditioner

        self.vae, self.cache = vae, cache
        # a conditioner (models/conditioning.py, families/) or a bare SD text encoder
        self.conditioner = text if hasattr(text, "text_parts") or text is None else SDConditioner(text)
        self.calls = {"vae": 0, "text_encoder": 0}

    def _encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls["vae"] += 1
        posterior = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
        return posterior.mean, posterior.std

    def _encode_text(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.calls["text_encoder"] += 1
        return self.conditioner.encode(input_ids)

    @torch.no_grad()
    def posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels [N, 3, H, W] in [-1, 1] -> (mean, std) [N, C, h, w] of the VAE posterior."""
        if self.cache is None:
            return self._encode_images(pixels)
        keys = [f"img-{tensor_digest(p)}" for p in pixels]
        return tuple(self._cached(keys, pixels, self._encode_images, ("mean", "std")))

    @torch.no_grad()
    def text(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """input_ids [U, 77] (SDXL [U, 2, 77]) -> (states [U, 77, D],) or, SDXL, (states, pooled [U, P])."""
        if self.cache is None:
            return self._encode_text(input_ids)
        keys = [f"txt-{tensor_digest(ids)}" for ids in input_ids]
        return tuple(self._cached(keys, input_ids, self._encode_text, self.conditioner.text_parts))

    def _cached(self, keys: list[str], inputs: torch.Tensor, encode, parts: tuple[str, ...]) -> list[torch.Tensor]:
        def name(key, part):
            return f"{key}-{part}" if part else key

        found = [[self.cache.get(name(k, part)) for part in parts] for k in keys]
        missing = [i for i, entry in enumerate(found) if any(v is None for v in entry)]
        self.cache.hits += len(keys) - len(missing)
        self.cache.misses += len(missing)
        if missing:
            outputs = encode(inputs[missing])  # one batched call for every input not cached
            for j, i in enumerate(missing):
                found[i] = [out[j] for out in outputs]
                for part, value in zip(parts, found[i]):
                    self.cache.put(name(keys[i], part), value)
        device = self.vae.device
        # hits come from CPU (disk, pending), misses from the encoder's device: bring every entry to one device
        return [torch.stack([entry[p].to(device) for entry in found]) for p in range(len(parts))]
