"""SoftREPA's soft tokens: m learnable text tokens that only the UNet's down blocks (SD; down + mid for SDXL) see.

(Lee et al., 2025.) The tokens [m, D] are inserted right after the start token of the text states, inside the
cross-attention of the chosen blocks only, through a diffusers attention processor: the text states the UNet gets
are unchanged, so the mid and up blocks (and any other consumer) see the plain caption. Only the tokens train
(m x D parameters; the UNet stays frozen). Saved as safetensors with a JSON config beside it.

    tokens = attach_soft_tokens(unet, num_tokens=4, blocks=("down",))      # unet now uses them
    save_soft_tokens(tokens, folder); load_soft_tokens(unet, folder)

With ``timestep_buckets`` N > 0 (the paper's option, N = 100), each bucket of the training timesteps has its own
[m, D] embedding added to the tokens: tokens(t) = tokens + E[t · N // T] (T = 1000). The processors do not see the
timestep, so a forward pre-hook on the UNet records it before each call. E starts at zero: untrained buckets are the
plain tokens. The recorded timestep is the *last* call's: gradient checkpointing recomputes the blocks in backward,
so with buckets a step must make one UNet call per backward (SoftREPA's step does; two calls at different t before
one backward under checkpointing would recompute the first with the second's buckets).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file, save_file

WEIGHTS_FILE, CONFIG_FILE = "soft_tokens.safetensors", "soft_tokens.json"
BLOCKS = ("down", "mid", "up")


class SoftTokens(torch.nn.Module):
    def __init__(self, num_tokens: int, dim: int, blocks: tuple[str, ...] = ("down",), std: float = 0.02,
                 timestep_buckets: int = 0, num_train_timesteps: int = 1000, init: torch.Tensor | None = None):
        """``init`` [D]: every token starts as this vector (e.g. the empty prompt's start-token state, as the
        authors' code does for SD1.5); default N(0, std²) per entry (theirs for SDXL/SD3)."""
        super().__init__()
        bad = sorted(set(blocks) - set(BLOCKS))
        if bad or not blocks or num_tokens < 1 or timestep_buckets < 0:
            raise ValueError(f"soft tokens: num_tokens >= 1, timestep_buckets >= 0 and blocks among {BLOCKS}; got "
                             f"{num_tokens}, {timestep_buckets}, {blocks}")
        if init is not None and tuple(init.shape) != (dim,):
            raise ValueError(f"soft tokens: init must be one [{dim}] vector; got {tuple(init.shape)}")
        self.blocks = tuple(blocks)
        start = torch.randn(num_tokens, dim) * std if init is None else \
            init.detach().float().cpu().expand(num_tokens, -1).clone()
        self.tokens = torch.nn.Parameter(start)  # [m, D]
        self.num_train_timesteps = num_train_timesteps
        # [N, m, D]: one offset per timestep bucket, zero at the start
        self.bucket_embedding = torch.nn.Parameter(torch.zeros(timestep_buckets, num_tokens, dim)) \
            if timestep_buckets else None
        self.timestep: torch.Tensor | None = None  # the UNet call's timestep (scalar or [B]), set by the pre-hook

    def buckets(self, timestep) -> torch.Tensor:
        """Bucket index of each timestep: t · N // T, clamped to [0, N - 1]."""
        n = self.bucket_embedding.shape[0]
        t = torch.as_tensor(timestep).reshape(-1).long()
        return (t * n // self.num_train_timesteps).clamp(0, n - 1)

    def current(self, batch: int) -> torch.Tensor:
        """[B, m, D]: the tokens, plus their timestep bucket's embedding when there is one."""
        soft = self.tokens.expand(batch, -1, -1)
        if self.bucket_embedding is None:
            return soft
        if self.timestep is None:
            raise RuntimeError("soft tokens with timestep buckets need the UNet's timestep: attach them with "
                               "attach_soft_tokens (which hooks the UNet's forward)")
        offsets = self.bucket_embedding[self.buckets(self.timestep).to(self.tokens.device)]  # [1 or B, m, D]
        if len(offsets) not in (1, batch):
            raise ValueError(f"soft tokens: {len(offsets)} timesteps for a batch of {batch} text states")
        return soft + offsets.expand(batch, -1, -1)

    def insert(self, states: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, L + m, D]: the start token, the soft tokens, then the rest."""
        soft = self.current(states.shape[0]).to(states.device, states.dtype)
        return torch.cat([states[:, :1], soft, states[:, 1:]], dim=1)


class SoftTokenAttnProcessor:
    """Cross-attention that inserts the soft tokens into its text states; self-attention passes through.

    Not an nn.Module on purpose: the tokens stay out of the UNet's parameters and state dict (a saved UNet is the
    base's; the tokens are saved on their own)."""

    def __init__(self, soft_tokens: SoftTokens, inner=None):
        self.soft_tokens = soft_tokens
        self.inner = inner or AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            encoder_hidden_states = self.soft_tokens.insert(encoder_hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def _timestep_recorder(tokens: SoftTokens):
    """A UNet forward pre-hook that hands the call's timestep (2nd argument or ``timestep=``) to the tokens."""
    def hook(module, args, kwargs):
        tokens.timestep = args[1] if len(args) > 1 else kwargs.get("timestep")

    return hook


def attach_soft_tokens(unet, num_tokens: int = 4, blocks: tuple[str, ...] = ("down",),
                       tokens: SoftTokens | None = None, timestep_buckets: int = 0,
                       init: torch.Tensor | None = None) -> SoftTokens:
    """Freeze ``unet`` and route the cross-attention (attn2) of ``blocks`` through soft tokens; returns them.
    ``init`` [D]: the new tokens' starting vector (see SoftTokens)."""
    unet.requires_grad_(False)
    tokens = tokens or SoftTokens(num_tokens, unet.config.cross_attention_dim, blocks,
                                  timestep_buckets=timestep_buckets, init=init)
    tokens.to(unet.device)
    previous = getattr(unet, "_soft_token_hook", None)
    if previous is not None:  # attached again (a reload): one hook, feeding the new tokens
        previous.remove()
    unet._soft_token_hook = unet.register_forward_pre_hook(_timestep_recorder(tokens), with_kwargs=True)
    processors = {}
    for name, processor in unet.attn_processors.items():
        if isinstance(processor, SoftTokenAttnProcessor):  # attached again: replace the old tokens, don't nest
            processor = processor.inner
        in_blocks = name.split(".")[0].removesuffix("_blocks").removesuffix("_block") in tokens.blocks
        processors[name] = SoftTokenAttnProcessor(tokens, processor) if in_blocks and ".attn2." in name \
            else processor
    unet.set_attn_processor(processors)
    return tokens


def save_soft_tokens(tokens: SoftTokens, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {"tokens": tokens.tokens.detach().cpu().contiguous()}
    if tokens.bucket_embedding is not None:
        weights["bucket_embedding"] = tokens.bucket_embedding.detach().cpu().contiguous()
    save_file(weights, str(folder / WEIGHTS_FILE))
    buckets = 0 if tokens.bucket_embedding is None else tokens.bucket_embedding.shape[0]
    (folder / CONFIG_FILE).write_text(json.dumps({"num_tokens": tokens.tokens.shape[0],
                                                  "dim": tokens.tokens.shape[1], "blocks": list(tokens.blocks),
                                                  "timestep_buckets": buckets,
                                                  "num_train_timesteps": tokens.num_train_timesteps}))
    return folder / WEIGHTS_FILE


def load_soft_tokens(unet, folder: str | Path) -> SoftTokens:
    """Attach saved soft tokens to ``unet`` (the same blocks as when trained)."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config["dim"] != unet.config.cross_attention_dim:
        raise ValueError(f"{folder}: soft tokens of width {config['dim']} do not fit a UNet with "
                         f"cross_attention_dim {unet.config.cross_attention_dim}")
    tokens = SoftTokens(config["num_tokens"], config["dim"], tuple(config["blocks"]),
                        timestep_buckets=config.get("timestep_buckets", 0),
                        num_train_timesteps=config.get("num_train_timesteps", 1000))
    weights = load_file(str(folder / WEIGHTS_FILE))
    with torch.no_grad():
        tokens.tokens.copy_(weights["tokens"])
        if tokens.bucket_embedding is not None:
            tokens.bucket_embedding.copy_(weights["bucket_embedding"])
    return attach_soft_tokens(unet, blocks=tokens.blocks, tokens=tokens)
