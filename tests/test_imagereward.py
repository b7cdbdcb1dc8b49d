"""ImageReward on a tiny random checkpoint in the official key layout, checked against a from-scratch forward pass
written here on those official names (BLIP vit.py + med.py as published), with the authors' preprocessing."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffalign.scorers import create_scorer
from diffalign.scorers.hps import CLIP_MEAN, CLIP_STD
from diffalign.scorers.imagereward import MEAN, STD, blip_tokenizer

W, VLAYERS, VHEADS, PATCH, SIZE, VMLP = 32, 2, 4, 8, 32, 64  # vision width, depth, heads, patch, px, mlp
H, TLAYERS, THEADS, TMLP, MAXPOS = 24, 2, 3, 48, 64  # text width, depth, heads, intermediate, positions
WORDS = ["a", "red", "blue", "circle", "square", "dog", "on", "the", "beach", "big"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return str(root)


def _official_state(vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=gen) * scale

    def norm(prefix, dim):
        return {f"{prefix}.weight": 1 + rand(dim, scale=0.1), f"{prefix}.bias": rand(dim, scale=0.1)}

    def linear(prefix, out_dim, in_dim):
        return {f"{prefix}.weight": rand(out_dim, in_dim, scale=1 / math.sqrt(in_dim)), f"{prefix}.bias": rand(out_dim)}

    v = "blip.visual_encoder"
    state = {f"{v}.cls_token": rand(1, 1, W), f"{v}.pos_embed": rand(1, 1 + (SIZE // PATCH) ** 2, W),
             f"{v}.patch_embed.proj.weight": rand(W, 3, PATCH, PATCH, scale=0.05), f"{v}.patch_embed.proj.bias": rand(W),
             **norm(f"{v}.norm", W)}
    for i in range(VLAYERS):
        b = f"{v}.blocks.{i}"
        state |= {**norm(f"{b}.norm1", W), **linear(f"{b}.attn.qkv", 3 * W, W), **linear(f"{b}.attn.proj", W, W),
                  **norm(f"{b}.norm2", W), **linear(f"{b}.mlp.fc1", VMLP, W), **linear(f"{b}.mlp.fc2", W, VMLP)}
    t = "blip.text_encoder"
    state |= {f"{t}.embeddings.word_embeddings.weight": rand(vocab, H),
              f"{t}.embeddings.position_embeddings.weight": rand(MAXPOS, H),
              f"{t}.embeddings.position_ids": torch.arange(MAXPOS)[None], **norm(f"{t}.embeddings.LayerNorm", H)}
    for i in range(TLAYERS):
        b = f"{t}.encoder.layer.{i}"
        for part, kv_dim in (("attention", H), ("crossattention", W)):
            state |= {**linear(f"{b}.{part}.self.query", H, H), **linear(f"{b}.{part}.self.key", H, kv_dim),
                      **linear(f"{b}.{part}.self.value", H, kv_dim), **linear(f"{b}.{part}.output.dense", H, H),
                      **norm(f"{b}.{part}.output.LayerNorm", H)}
        state |= {**linear(f"{b}.intermediate.dense", TMLP, H), **linear(f"{b}.output.dense", H, TMLP),
                  **norm(f"{b}.output.LayerNorm", H)}
    for index, (out_dim, in_dim) in zip((0, 2, 4, 6, 7), ((1024, H), (128, 1024), (64, 128), (16, 64), (1, 16))):
        state |= linear(f"mlp.layers.{index}", out_dim, in_dim)
    state["blip.vision_proj.weight"] = rand(8, W)  # present in BLIP checkpoints, unused by ImageReward's score
    return state


def _reference_score(state, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BLIP ViT (pre-norm blocks, LayerNorm eps 1e-6) -> BERT with cross-attention (post-norm, eps 1e-12) ->
    MLP on [CLS] -> (r - mean) / std. pixels [B, 3, S, S], ids/mask [B, 35]."""
    s = lambda name: state[name]  # noqa: E731
    lin = lambda x, p: F.linear(x, s(p + ".weight"), s(p + ".bias"))  # noqa: E731

    def attention(q, k, v, heads, bias=None):
        b, n, d = q.shape
        split = lambda x: x.view(b, x.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
        scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
        if bias is not None:
            scores = scores + bias
        return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, d)

    v = "blip.visual_encoder"
    x = F.conv2d(pixels, s(f"{v}.patch_embed.proj.weight"), s(f"{v}.patch_embed.proj.bias"), stride=PATCH)
    x = torch.cat([s(f"{v}.cls_token").expand(len(x), 1, W), x.flatten(2).transpose(1, 2)], 1) + s(f"{v}.pos_embed")
    ln6 = lambda x, p: F.layer_norm(x, (x.shape[-1],), s(p + ".weight"), s(p + ".bias"), 1e-6)  # noqa: E731
    for i in range(VLAYERS):
        b = f"{v}.blocks.{i}"
        q, k, val = lin(ln6(x, f"{b}.norm1"), f"{b}.attn.qkv").chunk(3, -1)
        x = x + lin(attention(q, k, val, VHEADS), f"{b}.attn.proj")
        x = x + lin(F.gelu(lin(ln6(x, f"{b}.norm2"), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    image = ln6(x, f"{v}.norm")

    t = "blip.text_encoder"
    ln12 = lambda x, p: F.layer_norm(x, (x.shape[-1],), s(p + ".weight"), s(p + ".bias"), 1e-12)  # noqa: E731
    h = s(f"{t}.embeddings.word_embeddings.weight")[ids] + s(f"{t}.embeddings.position_embeddings.weight")[:ids.shape[1]]
    h = ln12(h, f"{t}.embeddings.LayerNorm")
    pad_bias = (1.0 - mask[:, None, None, :].float()) * -1e4
    for i in range(TLAYERS):
        b = f"{t}.encoder.layer.{i}"
        for part, bias in (("attention", pad_bias), ("crossattention", None)):
            memory = h if part == "attention" else image  # self-attention, then cross-attention to image tokens
            ctx = attention(lin(h, f"{b}.{part}.self.query"), lin(memory, f"{b}.{part}.self.key"),
                            lin(memory, f"{b}.{part}.self.value"), THEADS, bias)
            h = ln12(lin(ctx, f"{b}.{part}.output.dense") + h, f"{b}.{part}.output.LayerNorm")
        h = ln12(lin(F.gelu(lin(h, f"{b}.intermediate.dense")), f"{b}.output.dense") + h, f"{b}.output.LayerNorm")
    r = h[:, 0]
    for index in (0, 2, 4, 6, 7):
        r = lin(r, f"mlp.layers.{index}")
    return ((r.squeeze(-1) - MEAN) / STD)


def _authors_pixels(image: np.ndarray) -> torch.Tensor:
    """40 high x 20 wide: shortest side -> 32 (so 64 x 32, bicubic), centre crop rows 16..48, CLIP mean/std."""
    im = Image.fromarray(image).resize((SIZE, 2 * SIZE), Image.BICUBIC).crop((0, SIZE // 2, SIZE, SIZE // 2 + SIZE))
    arr = (np.asarray(im, dtype=np.float64) / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    return torch.tensor(arr, dtype=torch.float32).permute(2, 0, 1)


@pytest.fixture(scope="module")
def tiny_imagereward(tmp_path_factory, tokenizer_dir):
    vocab = len(blip_tokenizer(tokenizer_dir))
    assert vocab == len(WORDS) + 5 + 2  # BLIP adds [DEC] and [ENC]
    state = _official_state(vocab)
    path = tmp_path_factory.mktemp("ir") / "ImageReward.pt"
    torch.save(state, path)
    options = dict(checkpoint=str(path), tokenizer=tokenizer_dir,
                   vision_config=dict(hidden_size=W, intermediate_size=VMLP, num_hidden_layers=VLAYERS,
                                      num_attention_heads=VHEADS, image_size=SIZE, patch_size=PATCH, layer_norm_eps=1e-6),
                   text_config=dict(vocab_size=vocab, hidden_size=H, encoder_hidden_size=W, intermediate_size=TMLP,
                                    num_hidden_layers=TLAYERS, num_attention_heads=THEADS,
                                    max_position_embeddings=MAXPOS, layer_norm_eps=1e-12, is_decoder=True))
    return state, options, tokenizer_dir


def test_imagereward_matches_the_published_architecture_and_preprocessing(tiny_imagereward):
    state, options, tokenizer_dir = tiny_imagereward
    scorer = create_scorer("imagereward", **options)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 20, 3), dtype=np.uint8) for _ in range(3)]
    prompts = ["a red circle", "a big dog on the beach", "a blue square " * 20]  # the last is cut at 35 tokens
    scores = scorer(images, prompts)
    tokens = blip_tokenizer(tokenizer_dir)(prompts, padding="max_length", truncation=True, max_length=35,
                                           return_tensors="pt")
    assert tokens.input_ids.shape == (3, 35) and tokens.attention_mask[2].all() and not tokens.attention_mask[0].all()
    with torch.no_grad():
        expected = _reference_score(state, torch.stack([_authors_pixels(i) for i in images]), tokens.input_ids,
                                    tokens.attention_mask)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    assert scores.std() > 0.01  # the three inputs do not collapse to one value
    torch.testing.assert_close(create_scorer("imagereward", batch_size=1, **options)(images, prompts), scores,
                               rtol=1e-5, atol=1e-5)


def test_imagereward_rejects_a_checkpoint_of_another_model(tmp_path, tokenizer_dir):
    torch.save({"visual.proj": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an ImageReward checkpoint"):
        create_scorer("imagereward", checkpoint=str(tmp_path / "other.pt"), tokenizer=tokenizer_dir)
