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

SD3 has joint blocks instead of cross-attention: its per-block tokens are models/soft_tokens_joint.py; the two share
the bucket rule and the timestep hook (models/soft_token_timesteps.py), and ``save_soft_tokens`` /
``load_soft_tokens`` here (the JSON's ``layout`` says which kind a folder holds).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file, save_file

from .soft_token_timesteps import bucket_of, record_timestep
from .soft_tokens_joint import JointSoftTokens, attach_joint_soft_tokens

WEIGHTS_FILE, CONFIG_FILE = "soft_tokens.safetensors", "soft_tokens.json"
BLOCKS = ("down", "mid", "up")


class SoftTokens(torch.nn.Module):
    layout = "cross_attention"  # saved in the JSON; SD3's are "joint" (models/soft_tokens_joint.py)

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
        return bucket_of(timestep, self.bucket_embedding.shape[0], self.num_train_timesteps)

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
    unet._soft_token_hook = unet.register_forward_pre_hook(record_timestep(tokens), with_kwargs=True)
    processors = {}
    for name, processor in unet.attn_processors.items():
        if isinstance(processor, SoftTokenAttnProcessor):  # attached again: replace the old tokens, don't nest
            processor = processor.inner
        in_blocks = name.split(".")[0].removesuffix("_blocks").removesuffix("_block") in tokens.blocks
        processors[name] = SoftTokenAttnProcessor(tokens, processor) if in_blocks and ".attn2." in name \
            else processor
    unet.set_attn_processor(processors)
    return tokens


def save_soft_tokens(tokens, folder: str | Path) -> Path:
    """SoftTokens (UNet cross-attention) or JointSoftTokens (SD3's joint blocks) as safetensors + a JSON config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {"tokens": tokens.tokens.detach().cpu().contiguous()}
    if tokens.bucket_embedding is not None:
        weights["bucket_embedding"] = tokens.bucket_embedding.detach().cpu().contiguous()
    save_file(weights, str(folder / WEIGHTS_FILE))
    buckets = 0 if tokens.bucket_embedding is None else tokens.bucket_embedding.shape[0]
    config = {"layout": tokens.layout, "num_tokens": tokens.tokens.shape[-2],
              "dim": tokens.tokens.shape[-1], "timestep_buckets": buckets,
              "num_train_timesteps": tokens.num_train_timesteps}
    if config["layout"] == "joint":
        config["num_blocks"], config["inner_dim"] = tokens.num_blocks, tokens.inner_dim
    else:
        config["blocks"] = list(tokens.blocks)
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return folder / WEIGHTS_FILE


def load_soft_tokens(model, folder: str | Path):
    """Attach saved soft tokens to ``model``: the UNet (the same blocks as when trained) or, for tokens trained on
    SD3, its transformer (``pipe.transformer``)."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    layout = config.get("layout", "cross_attention")
    joint = layout == "joint"
    if joint and not isinstance(model, SD3Transformer2DModel):
        raise ValueError(f"{folder}: these soft tokens were trained in SD3's joint blocks: load them onto a "
                         f"StableDiffusion3Pipeline's pipe.transformer; got {type(model).__name__}")
    if not joint and not hasattr(model.config, "cross_attention_dim"):
        raise ValueError(f"{folder}: these soft tokens were trained in a UNet's cross-attention: load them onto "
                         f"pipe.unet of an SD/SDXL pipeline; got {type(model).__name__}")
    widths = ((config["dim"], model.config.joint_attention_dim), (config.get("inner_dim"),
              model.config.caption_projection_dim)) if joint else ((config["dim"], model.config.cross_attention_dim),)
    if any(saved is not None and saved != width for saved, width in widths):
        raise ValueError(f"{folder}: soft tokens of widths {[w[0] for w in widths]} were trained on another model "
                         f"than this {type(model).__name__} (widths {[w[1] for w in widths]})")
    weights = load_file(str(folder / WEIGHTS_FILE))
    if joint:
        tokens = JointSoftTokens(config["num_tokens"], config["num_blocks"], config["dim"],
                                 model.config.caption_projection_dim, config["timestep_buckets"],
                                 config["num_train_timesteps"])
    else:
        tokens = SoftTokens(config["num_tokens"], config["dim"], tuple(config["blocks"]),
                            timestep_buckets=config.get("timestep_buckets", 0),
                            num_train_timesteps=config.get("num_train_timesteps", 1000))
    with torch.no_grad():
        tokens.tokens.copy_(weights["tokens"])
        if tokens.bucket_embedding is not None:
            tokens.bucket_embedding.copy_(weights["bucket_embedding"])
    if joint:
        return attach_joint_soft_tokens(model, tokens=tokens)
    return attach_soft_tokens(model, blocks=tokens.blocks, tokens=tokens)
