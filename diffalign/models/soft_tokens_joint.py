"""SoftREPA's soft tokens for SD3's joint transformer blocks (Lee et al., 2025, as the authors' SD3 code does it).

SD3 has no cross-attention: text and image tokens share one attention in every joint block, and the text stream
(``encoder_hidden_states`` [B, L, C] after ``context_embedder``) is updated block by block. Each of the first K
blocks gets its own m soft tokens, put in front of the text stream as the block starts; the block's output for them
is dropped as it ends, so the next block sees the plain text stream again (and its own fresh tokens). The tokens live
in the text-state space [K, m, J] (J = joint_attention_dim, T5's width) and reach the block through the frozen
``context_embedder`` (J -> C), as the caption does:

    block k < K:  context [B, L, C] -> [embed(tokens[k]) (+ E[bucket(t), k]) ; context] [B, m + L, C]
                  -> block -> context out [B, m + L, C] -> its last L rows [B, L, C]

With ``timestep_buckets`` N > 0 (the authors use 100 for SD3), block k adds a per-bucket offset E[t · N // T, k]
[m, C] after the embedding; E starts at zero (the authors: N(0, 0.02²)), so untrained buckets are the plain tokens.
The timestep is recorded by a forward pre-hook on the transformer (flow timesteps are 1000 σ). The transformer's own
parameters and state dict are untouched: the tokens are saved on their own (models/soft_tokens.save_soft_tokens).
"""

from __future__ import annotations

import torch
from diffusers import SD3Transformer2DModel

from .soft_token_timesteps import bucket_of, record_timestep


class JointSoftTokens(torch.nn.Module):
    layout = "joint"

    def __init__(self, num_tokens: int, num_blocks: int, dim: int, inner_dim: int, timestep_buckets: int = 0,
                 num_train_timesteps: int = 1000, std: float = 0.02):
        """``dim``: the transformer's joint_attention_dim (J); ``inner_dim``: its caption_projection_dim (C)."""
        super().__init__()
        if num_tokens < 1 or num_blocks < 1 or timestep_buckets < 0:
            raise ValueError(f"joint soft tokens: num_tokens >= 1, num_blocks >= 1 and timestep_buckets >= 0; got "
                             f"{num_tokens}, {num_blocks}, {timestep_buckets}")
        self.tokens = torch.nn.Parameter(torch.randn(num_blocks, num_tokens, dim) * std)  # [K, m, J]
        self.bucket_embedding = torch.nn.Parameter(torch.zeros(timestep_buckets, num_blocks, num_tokens, inner_dim)) \
            if timestep_buckets else None  # [N, K, m, C]
        self.num_train_timesteps, self.inner_dim = num_train_timesteps, inner_dim
        self.timestep: torch.Tensor | None = None  # the transformer call's timestep, set by the pre-hook

    @property
    def num_blocks(self) -> int:
        return self.tokens.shape[0]

    def for_block(self, index: int, batch: int, embedder: torch.nn.Module) -> torch.Tensor:
        """[B, m, C]: block ``index``'s tokens through the context embedder, plus their timestep bucket's offset."""
        # the tokens live outside the transformer (not moved by pipe.to): brought to the embedder's device and dtype
        soft = embedder(self.tokens[index].to(embedder.weight.device, embedder.weight.dtype))  # [m, C]
        soft = soft.unsqueeze(0).expand(batch, -1, -1)
        if self.bucket_embedding is None:
            return soft
        if self.timestep is None:
            raise RuntimeError("joint soft tokens with timestep buckets need the transformer's timestep: attach them "
                               "with attach_joint_soft_tokens (which hooks the transformer's forward)")
        buckets = bucket_of(self.timestep, self.bucket_embedding.shape[0], self.num_train_timesteps)
        offsets = self.bucket_embedding[buckets.to(self.bucket_embedding.device), index]  # [1 or B, m, C]
        if len(offsets) not in (1, batch):
            raise ValueError(f"joint soft tokens: {len(offsets)} timesteps for a batch of {batch}")
        return soft + offsets.to(soft.device, soft.dtype)


def _prepend(tokens: JointSoftTokens, index: int, embedder):
    """A block forward pre-hook: the block's soft tokens in front of its text stream (positional or keyword)."""
    def hook(module, args, kwargs):
        if len(args) > 1:  # gradient checkpointing calls block(hidden, context, temb, kwargs)
            context = args[1]
            return (args[0], torch.cat([tokens.for_block(index, len(context), embedder).to(context.dtype), context],
                                       dim=1), *args[2:]), kwargs
        context = kwargs["encoder_hidden_states"]
        soft = tokens.for_block(index, len(context), embedder).to(context.dtype)
        return args, {**kwargs, "encoder_hidden_states": torch.cat([soft, context], dim=1)}

    return hook


def _drop(tokens: JointSoftTokens):
    """A block forward hook: the text stream out without the soft tokens' rows (None in SD3's last block)."""
    def hook(module, args, kwargs, output):
        context, hidden = output
        m = tokens.tokens.shape[1]
        return (None if context is None else context[:, m:], hidden)

    return hook


def attach_joint_soft_tokens(transformer, num_tokens: int = 4, num_blocks: int = 5,
                             tokens: JointSoftTokens | None = None, timestep_buckets: int = 0) -> JointSoftTokens:
    """Freeze an ``SD3Transformer2DModel`` and give its first ``num_blocks`` joint blocks soft tokens; returns them."""
    config = transformer.config
    if not isinstance(transformer, SD3Transformer2DModel):
        raise ValueError(f"joint soft tokens are SD3's (an SD3Transformer2DModel: pipe.transformer of a "
                         f"StableDiffusion3Pipeline); got {type(transformer).__name__}")
    if tokens is not None and not tokens.num_blocks <= config.num_layers:
        raise ValueError(f"these soft tokens were trained for {tokens.num_blocks} joint blocks; this transformer "
                         f"has {config.num_layers}")
    blocks = tokens.num_blocks if tokens is not None else num_blocks
    if not 1 <= blocks <= config.num_layers:
        raise ValueError(f"SoftREPA on SD3: objective.transformer_blocks must be between 1 and the transformer's "
                         f"{config.num_layers} joint blocks; got {blocks}")
    transformer.requires_grad_(False)
    tokens = tokens or JointSoftTokens(num_tokens, num_blocks, config.joint_attention_dim,
                                       config.caption_projection_dim, timestep_buckets=timestep_buckets)
    tokens.to(transformer.device)
    for handle in getattr(transformer, "_soft_token_hooks", []):  # attached again (a reload): replace, don't nest
        handle.remove()
    handles = [transformer.register_forward_pre_hook(record_timestep(tokens, position=3), with_kwargs=True)]
    for index, block in enumerate(transformer.transformer_blocks[:blocks]):
        handles.append(block.register_forward_pre_hook(_prepend(tokens, index, transformer.context_embedder),
                                                       with_kwargs=True))
        handles.append(block.register_forward_hook(_drop(tokens), with_kwargs=True))
    transformer._soft_token_hooks = handles
    return tokens
