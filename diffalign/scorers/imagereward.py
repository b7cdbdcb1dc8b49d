"""ImageReward (Xu et al., NeurIPS 2023): BLIP ViT-L image encoder + BERT text encoder with cross-attention to the
image tokens, and a linear MLP head on the [CLS] output.

    r = MLP(BERT(tokens(prompt) | cross-attn ViT(image))[:, 0]);   score = (r - 0.16717) / 1.03334

Implemented on transformers' BLIP modules (``BlipVisionModel`` and ``BlipTextModel`` are ports of BLIP's vit.py
and med.py) instead of the ``image-reward`` wheel, which pins timm 0.6.13 and breaks open_clip 3. The official
``ImageReward.pt`` (hub ``THUDM/ImageReward``; keys ``blip.visual_encoder.*``, ``blip.text_encoder.*``,
``mlp.layers.*``) is renamed onto those modules by ``convert_official_state_dict`` and loaded with
``weights_only=True``. As the authors do:
- images: shortest side resized to 224 (bicubic), centre crop 224, CLIP mean/std;
- prompts: ``bert-base-uncased`` tokenizer plus BLIP's two added tokens ([DEC], [ENC]; vocabulary 30524),
  padded/truncated to 35 tokens; the ids go in unchanged (the [CLS] id is not swapped for [ENC]);
- the text encoder runs bidirectionally (not as a decoder) over all prompt tokens, every image token visible.
"""

from __future__ import annotations

import logging

import torch
from torchvision import transforms
from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig
from transformers.models.blip.modeling_blip import BlipVisionModel
from transformers.models.blip.modeling_blip_text import BlipTextModel

from ..models.checkpoints import load_state_dict, local_or_hub_file
from .base import as_dtype, batched, register, to_pil
from .heads import LinearMLPHead
from .hps import CLIP_MEAN, CLIP_STD

log = logging.getLogger(__name__)

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # the authors' normalisation of the raw head output
MAX_PROMPT_TOKENS = 35

# BLIP ViT-L/16 at 224 px (timm-style LayerNorm eps 1e-6) and BLIP's med_config (bert-base + cross-attention to
# 1024-wide image tokens). ``is_decoder=True`` only makes transformers build the cross-attention layers; the
# forward pass is called with is_decoder=False, i.e. bidirectional self-attention as in ImageReward.
VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              image_size=224, patch_size=16, layer_norm_eps=1e-6)
TEXT = dict(vocab_size=30524, hidden_size=768, encoder_hidden_size=1024, intermediate_size=3072,
            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512, layer_norm_eps=1e-12,
            is_decoder=True)

_BLOCK_RENAMES = ((".norm1.", ".layer_norm1."), (".norm2.", ".layer_norm2."), (".attn.qkv.", ".self_attn.qkv."),
                  (".attn.proj.", ".self_attn.projection."))


def _rename_vision(key: str) -> str:
    """BLIP vit.py name -> transformers BlipVisionModel name."""
    if key == "cls_token":
        return "embeddings.class_embedding"
    if key == "pos_embed":
        return "embeddings.position_embedding"
    if key.startswith("norm."):  # the final LayerNorm
        return "post_layernorm." + key[len("norm."):]
    key = key.replace("patch_embed.proj.", "embeddings.patch_embedding.").replace("blocks.", "encoder.layers.")
    for old, new in _BLOCK_RENAMES:
        key = key.replace(old, new)
    return key


def convert_official_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict, list[str]]:
    """Split the official checkpoint into (vision, text, head) state dicts named for our modules.

    Returns also the keys that ImageReward's scoring never uses (e.g. BLIP's projection heads), which are skipped.
    """
    vision, text, head, unused = {}, {}, {}, []
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            vision[_rename_vision(key[len("blip.visual_encoder."):])] = value
        elif key.startswith("blip.text_encoder."):
            name = key[len("blip.text_encoder."):]
            if not name.endswith("position_ids"):  # a buffer, rebuilt by the module
                text[name] = value
        elif key.startswith("mlp."):
            head[key[len("mlp."):]] = value
        else:
            unused.append(key)
    return vision, text, head, unused


def image_transform(size: int) -> transforms.Compose:
    """The authors' preprocessing: shortest side -> size (bicubic), centre crop, CLIP normalisation."""
    return transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(size), transforms.ToTensor(),
                               transforms.Normalize(CLIP_MEAN, CLIP_STD)])


def blip_tokenizer(source: str) -> BertTokenizer:
    """bert-base-uncased (hub id or local folder) with BLIP's added [DEC] bos token and [ENC] token."""
    tokenizer = BertTokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


@register("imagereward")
class ImageReward:
    def __init__(self, checkpoint: str | None = None, tokenizer: str = "bert-base-uncased", device: str = "cpu",
                 dtype: torch.dtype | str = torch.float32, batch_size: int = 32, vision_config: dict | None = None,
                 text_config: dict | None = None):
        """``checkpoint``: ImageReward.pt (local file or a file name in THUDM/ImageReward); ``tokenizer``: hub id or
        folder of bert-base-uncased. ``vision_config``/``text_config`` override the architecture (tests)."""
        dtype = as_dtype(dtype)
        vision, text, head, unused = convert_official_state_dict(load_state_dict(local_or_hub_file(checkpoint, "THUDM/ImageReward", "ImageReward.pt")))
        if not vision or not text or not head:
            raise ValueError(f"{checkpoint}: not an ImageReward checkpoint (expected keys blip.visual_encoder.*, "
                             f"blip.text_encoder.*, mlp.*; got {len(vision)}/{len(text)}/{len(head)})")
        if unused:
            log.info("ImageReward: %d checkpoint tensors unused by scoring (e.g. %s)", len(unused), unused[0])
        self.vision = BlipVisionModel(BlipVisionConfig(**(vision_config or VISION)))
        self.text = BlipTextModel(BlipTextConfig(**(text_config or TEXT)), add_pooling_layer=False)
        self.head = LinearMLPHead(self.text.config.hidden_size)
        for module, weights in ((self.vision, vision), (self.text, text), (self.head, head)):
            module.load_state_dict(weights)
            module.eval().to(device=device, dtype=dtype if module is not self.head else torch.float32)
        self.tokenizer = blip_tokenizer(tokenizer)
        if len(self.tokenizer) != self.text.config.vocab_size:
            raise ValueError(f"tokenizer has {len(self.tokenizer)} tokens but the text encoder {self.text.config.vocab_size}")
        self.preprocess = image_transform(self.vision.config.image_size)
        self.device, self.dtype, self.batch_size = device, dtype, batch_size

    @torch.no_grad()
    def __call__(self, images: list, prompts: list[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        out = []
        for chunk in batched(list(zip(images, prompts)), self.batch_size):
            ims, texts = zip(*chunk)
            pixels = torch.stack([self.preprocess(to_pil(i)) for i in ims]).to(self.device, self.dtype)
            image_tokens = self.vision(pixel_values=pixels).last_hidden_state  # [b, 1 + patches, 1024]
            tokens = self.tokenizer(list(texts), padding="max_length", truncation=True,
                                    max_length=MAX_PROMPT_TOKENS, return_tensors="pt").to(self.device)
            hidden = self.text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                               encoder_hidden_states=image_tokens,
                               encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long,
                                                                 device=self.device),
                               is_decoder=False).last_hidden_state  # [b, 35, 768]
            raw = self.head(hidden[:, 0].float()).squeeze(-1)  # [b]; the head runs in float32, as the authors'
            out.append(((raw - MEAN) / STD).cpu())
        return torch.cat(out)
