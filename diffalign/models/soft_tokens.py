"""SoftREPA's soft tokens: m learnable text tokens that only the UNet's down blocks (SD; down + mid for SDXL) see.

(Lee et al., 2025.) The tokens [m, D] are inserted right after the start token of the text states, inside the
cross-attention of the chosen blocks only, through a diffusers attention processor: the text states the UNet gets
are unchanged, so the mid and up blocks (and any other consumer) see the plain caption. Only the tokens train
(m x D parameters; the UNet stays frozen). Saved as safetensors with a JSON config beside it.

    tokens = attach_soft_tokens(unet, num_tokens=4, blocks=("down",))      # unet now uses them
    save_soft_tokens(tokens, folder); load_soft_tokens(unet, folder)
The timestep-bucket embedding of the paper is not implemented.
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
    def __init__(self, num_tokens: int, dim: int, blocks: tuple[str, ...] = ("down",), std: float = 0.02):
        super().__init__()
        bad = sorted(set(blocks) - set(BLOCKS))
        if bad or not blocks or num_tokens < 1:
            raise ValueError(f"soft tokens: num_tokens >= 1 and blocks among {BLOCKS}; got {num_tokens}, {blocks}")
        self.blocks = tuple(blocks)
        self.tokens = torch.nn.Parameter(torch.randn(num_tokens, dim) * std)  # [m, D]

    def insert(self, states: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, L + m, D]: the start token, the soft tokens, then the rest."""
        soft = self.tokens.to(states.device, states.dtype).expand(states.shape[0], -1, -1)
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
                       tokens: SoftTokens | None = None) -> SoftTokens:
    """Freeze ``unet`` and route the cross-attention (attn2) of ``blocks`` through soft tokens; returns them."""
    unet.requires_grad_(False)
    tokens = tokens or SoftTokens(num_tokens, unet.config.cross_attention_dim, blocks)
    tokens.to(unet.device)
    processors = {}
    for name, processor in unet.attn_processors.items():
        in_blocks = name.split(".")[0].removesuffix("_blocks").removesuffix("_block") in tokens.blocks
        processors[name] = SoftTokenAttnProcessor(tokens, processor) if in_blocks and ".attn2." in name \
            else processor
    unet.set_attn_processor(processors)
    return tokens


def save_soft_tokens(tokens: SoftTokens, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"tokens": tokens.tokens.detach().cpu().contiguous()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"num_tokens": tokens.tokens.shape[0],
                                                  "dim": tokens.tokens.shape[1], "blocks": list(tokens.blocks)}))
    return folder / WEIGHTS_FILE


def load_soft_tokens(unet, folder: str | Path) -> SoftTokens:
    """Attach saved soft tokens to ``unet`` (the same blocks as when trained)."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config["dim"] != unet.config.cross_attention_dim:
        raise ValueError(f"{folder}: soft tokens of width {config['dim']} do not fit a UNet with "
                         f"cross_attention_dim {unet.config.cross_attention_dim}")
    tokens = SoftTokens(config["num_tokens"], config["dim"], tuple(config["blocks"]))
    with torch.no_grad():
        tokens.tokens.copy_(load_file(str(folder / WEIGHTS_FILE))["tokens"])
    return attach_soft_tokens(unet, blocks=tokens.blocks, tokens=tokens)
