"""PPD's user conditioning: a user embedding -> K user tokens -> decoupled cross-attention in every attn2.

IP-Adapter's design (Ye et al., 2023), as PPD uses it (Dang et al., 2025). In each cross-attention layer, with
q = to_q(h) of the image features h [B, N, inner] and the K user tokens u [B, K, C]:

    out = Attention(q, to_k(text), to_v(text))  +  scale · to_out_linear(Attention(q, k_u(u), v_u(u)))

where k_u, v_u are this layer's added projections (k_u initialised from its text to_k as IP-Adapter does, v_u at
zero so that training starts at the base model; see ``attach_user_adapter``) and
to_out_linear is the layer's output projection without its bias (the bias is in the text term already).
The user tokens come from a projector: Linear(E, K·C) -> reshape [K, C] -> LayerNorm(C) (IP-Adapter's). No
normalisation of the embedding itself: its norm says how consistent a user's choices are, and a mix of two users
must stay a mix (a LayerNorm would blow the near-zero midpoint of two opposite users up to an arbitrary user).
What PPD leaves unpublished is chosen here: K = 4 tokens, every attn2 (down, mid, up), scale 1.

The tokens travel *appended to the text states* ([B, 77 + K, C]) so that every caller of the UNet passes them
unchanged; each user processor splits off the last K. With the adapter ``disabled()`` (the reference model) the
processors drop them and compute the base model's attention exactly. Processors are not nn.Modules: the UNet's
state dict stays the base's; the adapter (projector + per-layer projections) is saved on its own as safetensors
with a JSON config, together with the spec of the user encoder it was trained with.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file, save_file

WEIGHTS_FILE, CONFIG_FILE = "user_adapter.safetensors", "user_adapter.json"


class UserProjector(torch.nn.Module):
    def __init__(self, embed_dim: int, num_tokens: int, cross_dim: int):
        super().__init__()
        self.num_tokens, self.cross_dim = num_tokens, cross_dim
        self.proj = torch.nn.Linear(embed_dim, num_tokens * cross_dim)
        self.norm_out = torch.nn.LayerNorm(cross_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """[B, E] -> [B, K, C]."""
        tokens = self.proj(embedding).reshape(len(embedding), self.num_tokens, self.cross_dim)
        return self.norm_out(tokens)


class UserKeyValue(torch.nn.Module):
    """One cross-attention layer's added key/value projections C -> inner (no bias, like SD's to_k/to_v)."""

    def __init__(self, cross_dim: int, inner_dim: int):
        super().__init__()
        self.to_k = torch.nn.Linear(cross_dim, inner_dim, bias=False)
        self.to_v = torch.nn.Linear(cross_dim, inner_dim, bias=False)


def _module_key(processor_name: str) -> str:
    return processor_name.removesuffix(".processor").replace(".", "__")  # ModuleDict keys cannot hold dots


class UserAdapter(torch.nn.Module):
    def __init__(self, embed_dim: int, num_tokens: int, cross_dim: int, layers: dict[str, tuple[int, int]],
                 scale: float = 1.0, encoder_spec: dict | None = None):
        """``layers``: attn2 processor name -> (cross_dim, inner_dim) of its to_k."""
        super().__init__()
        if num_tokens < 1 or not layers:
            raise ValueError(f"user adapter: num_tokens >= 1 and at least one layer; got {num_tokens}, {len(layers)}")
        self.embed_dim, self.num_tokens, self.scale, self.enabled = embed_dim, num_tokens, scale, True
        self.encoder_spec = encoder_spec or {}
        self.layer_dims = dict(layers)
        self.projector = UserProjector(embed_dim, num_tokens, cross_dim)
        self.layers = torch.nn.ModuleDict({_module_key(n): UserKeyValue(c, i) for n, (c, i) in layers.items()})

    def append_tokens(self, text: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """text states [B, L, C] + user embeddings [B, E] -> [B, L + K, C] (the user tokens last)."""
        tokens = self(embedding.to(self.projector.proj.weight.dtype)).to(text.dtype)
        return torch.cat([text, tokens], dim=1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projector(embedding)  # [B, K, C]

    @contextmanager
    def disabled(self):
        """The base model inside: processors drop the user tokens (used for the reference)."""
        before, self.enabled = self.enabled, False
        try:
            yield self
        finally:
            self.enabled = before

    def config(self) -> dict:
        return {"embed_dim": self.embed_dim, "num_tokens": self.num_tokens,
                "cross_dim": self.projector.cross_dim, "scale": self.scale,
                "layers": {n: list(d) for n, d in self.layer_dims.items()}, "encoder": self.encoder_spec}


class UserAttnProcessor:
    """attn2 with the decoupled user branch; ``inner`` (the layer's previous processor) computes the text term."""

    def __init__(self, adapter: UserAdapter, layer: UserKeyValue, inner=None):
        self.adapter, self.layer, self.inner = adapter, layer, inner or AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        k = self.adapter.num_tokens
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] <= k:
            raise ValueError(f"the UNet has a user adapter: its text states must end with {k} user tokens "
                             "(UserAdapter.append_tokens), or run it under adapter.disabled() with plain text "
                             "states plus any K placeholder tokens")
        text, user = encoder_hidden_states[:, :-k], encoder_hidden_states[:, -k:]
        out = self.inner(attn, hidden_states, text, attention_mask, temb, *args, **kwargs)
        if not self.adapter.enabled:
            return out
        if hidden_states.ndim != 3:
            raise ValueError(f"user attention expects [B, N, C] image features; got {tuple(hidden_states.shape)}")
        b, heads = hidden_states.shape[0], attn.heads
        q = attn.to_q(hidden_states)  # [B, N, inner]
        key, value = self.layer.to_k(user.to(q.dtype)), self.layer.to_v(user.to(q.dtype))  # [B, K, inner]
        split = lambda x: x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)  # noqa: E731 [B, h, n, d]
        attended = F.scaled_dot_product_attention(split(q), split(key), split(value))  # [B, h, N, d]
        attended = attended.transpose(1, 2).reshape(b, -1, q.shape[-1])  # [B, N, inner]
        projection = attn.to_out[0]
        bias = getattr(projection, "base_layer", projection).bias  # peft's LoRA Linear keeps it on base_layer
        user_out = projection(attended)  # under autocast: fp16/bf16, its bias rounded the same way as below
        if bias is not None:
            user_out = user_out - bias.to(user_out.dtype)
        return out + self.adapter.scale * user_out / attn.rescale_output_factor


def _cross_attention_layers(unet) -> dict[str, tuple[int, int]]:
    layers = {}
    for name in unet.attn_processors:
        if ".attn2." in name:
            to_k = unet.get_submodule(name.removesuffix(".processor")).to_k
            to_k = getattr(to_k, "base_layer", to_k)
            layers[name] = (to_k.in_features, to_k.out_features)
    return layers


def attach_user_adapter(unet, embed_dim: int, num_tokens: int = 4, scale: float = 1.0,
                        encoder_spec: dict | None = None, adapter: UserAdapter | None = None) -> UserAdapter:
    """Route every attn2 of ``unet`` through a user adapter (new, or ``adapter``); returns it on the UNet's device.

    A new adapter's k_u starts as a copy of the layer's text to_k (IP-Adapter's initialisation) and its v_u at
    zero (IP-Adapter copies to_v too): so the untrained policy *is* the reference, as DPO assumes (h = 0, loss
    log 2 at the first step); with a copied v_u the fresh branch adds an arbitrary shift that training must first
    undo. v_u gets gradient at once (softmax weights times the loss's gradient); k_u and the projector follow."""
    layers = _cross_attention_layers(unet)
    if adapter is None:
        adapter = UserAdapter(embed_dim, num_tokens, unet.config.cross_attention_dim, layers, scale, encoder_spec)
        with torch.no_grad():
            for name in layers:
                attn = unet.get_submodule(name.removesuffix(".processor"))
                kv = adapter.layers[_module_key(name)]
                kv.to_k.weight.copy_(getattr(attn.to_k, "base_layer", attn.to_k).weight)
                kv.to_v.weight.zero_()
    elif set(adapter.layer_dims) != set(layers):
        raise ValueError(f"the user adapter was made for {len(adapter.layer_dims)} cross-attention layers that do "
                         f"not match this UNet's {len(layers)}")
    adapter.to(unet.device)
    # A second adapter replaces the first (nesting would split K more tokens off the text).
    unwrap = lambda p: p.inner if isinstance(p, UserAttnProcessor) else p  # noqa: E731
    processors = {name: UserAttnProcessor(adapter, adapter.layers[_module_key(name)], unwrap(p))
                  if name in layers else p for name, p in unet.attn_processors.items()}
    unet.set_attn_processor(processors)
    return adapter


def save_user_adapter(adapter: UserAdapter, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in adapter.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(adapter.config(), indent=2))
    return folder / WEIGHTS_FILE


def load_user_adapter(unet, folder: str | Path) -> UserAdapter:
    """Attach a saved user adapter to ``unet`` (which must have the architecture it was trained on)."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_FILE}: not a PPD user adapter")
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config["cross_dim"] != unet.config.cross_attention_dim:
        raise ValueError(f"{folder}: a user adapter of width {config['cross_dim']} does not fit a UNet with "
                         f"cross_attention_dim {unet.config.cross_attention_dim}")
    adapter = UserAdapter(config["embed_dim"], config["num_tokens"], config["cross_dim"],
                          {n: tuple(d) for n, d in config["layers"].items()}, config["scale"], config["encoder"])
    adapter.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return attach_user_adapter(unet, adapter.embed_dim, adapter=adapter.to(unet.dtype))
