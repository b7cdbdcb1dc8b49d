"""Scorers on a tiny random CLIP built from config: preprocessing as the authors do it, the formula by hand,
batching and determinism; the toy scorer against the judge."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig,
                          CLIPVisionConfig)

from diffalign.models.tokenizer import build_clip_tokenizer
from diffalign.scorers import create_scorer
from diffalign.toy import plugin  # noqa: F401  (registers the scorer "toy")
from diffalign.toy.render import render
from diffalign.toy.world import Scene, Shape

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    torch.manual_seed(0)
    text = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, projection_dim=16, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=49407)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    path = tmp_path_factory.mktemp("tiny-clip")
    model.save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                         resample=Image.BICUBIC, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    CLIPProcessor(image_processor=image_processor, tokenizer=build_clip_tokenizer()).save_pretrained(path)
    return str(path), model.eval()


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (48, 40, 3), dtype=np.uint8) for _ in range(n)]


def _hand_cosine(model, image, prompt):
    """Short side -> 32 bicubic, centre crop 32, CLIP mean/std; normalised embeddings; dot product."""
    im = Image.fromarray(image)
    w, h = im.size
    im = im.resize((32, round(h * 32 / w)), Image.BICUBIC)  # w is the short side here (40 < 48)
    top = (im.size[1] - 32) // 2
    arr = (np.asarray(im.crop((0, top, 32, top + 32)), dtype=np.float64) / 255 - CLIP_MEAN) / CLIP_STD
    pixels = torch.tensor(arr, dtype=torch.float32).permute(2, 0, 1)[None]
    ids = build_clip_tokenizer()(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
    return float((out.image_embeds * out.text_embeds).sum()), float(model.logit_scale.detach().exp())


def test_pickscore_is_logit_scale_times_cosine(tiny_clip):
    path, model = tiny_clip
    scorer = create_scorer("pickscore", model=path, processor=path)
    images, prompts = _images(3), ["a red circle", "a blue square on a beige background", "a cat"]
    scores = scorer(images, prompts)
    for score, image, prompt in zip(scores, images, prompts):
        cos, scale = _hand_cosine(model, image, prompt)
        assert float(score) == pytest.approx(scale * cos, rel=2e-3, abs=2e-3)


def test_clipscore_is_100_cosine_clamped_at_zero(tiny_clip):
    path, model = tiny_clip
    scorer = create_scorer("clipscore", model=path)
    images, prompts = _images(6, seed=1), ["a red circle"] * 6
    scores = scorer(images, prompts)
    for score, image, prompt in zip(scores, images, prompts):
        cos, _ = _hand_cosine(model, image, prompt)
        assert float(score) == pytest.approx(max(100 * cos, 0.0), rel=2e-3, abs=2e-2)


def test_scores_do_not_depend_on_batching_and_are_deterministic(tiny_clip):
    path, _ = tiny_clip
    images, prompts = _images(5, seed=2), [f"a shape number {i}" for i in range(5)]
    one = create_scorer("pickscore", model=path, processor=path, batch_size=1)(images, prompts)
    many = create_scorer("pickscore", model=path, processor=path, batch_size=4)(images, prompts)
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(many, create_scorer("pickscore", model=path, processor=path)(images, prompts))


def test_toy_scorer_matches_the_judge():
    good = render(Scene("white", [Shape("red", "circle", 0.5, 0.5, 0.28)]))
    small = render(Scene("white", [Shape("red", "circle", 0.15, 0.85, 0.1)]))
    fidelity = create_scorer("toy")([good, small], ["a red circle on a white background"] * 2)
    assert fidelity.tolist() == [1.0, 1.0]
    bold = create_scorer("toy", score="bold")([good, small], ["a red circle"] * 2)
    assert bold[0] > bold[1]
    with pytest.raises(ValueError, match="unknown toy score 'nope'"):
        create_scorer("toy", score="nope")
    with pytest.raises(ValueError, match="unknown scorer 'hps3'"):
        create_scorer("hps3")


def test_toy_named_scores_give_each_attribute_where_stated():
    good = render(Scene("white", [Shape("red", "circle", 0.5, 0.5, 0.28)]))
    blue = render(Scene("white", [Shape("blue", "circle", 0.5, 0.5, 0.28)]))
    prompts = ["a large red circle on a white background", "a red circle"]
    named = create_scorer("toy").named_scores([good, blue], prompts)
    assert named["colour"].tolist() == [1.0, 0.0] and named["shape"].tolist() == [1.0, 1.0]
    assert named["size"][0] == 1.0 and named["size"][1].isnan()  # unstated in the second caption
    assert named["background"][0] == 1.0 and named["position"].isnan().all()
    assert named["fidelity"].tolist() == create_scorer("toy")([good, blue], prompts).tolist()
    assert named["bold"].tolist() == create_scorer("toy", score="bold")([good, blue], prompts).tolist()


def test_scores_carry_no_autograd_graph(tiny_clip):
    path, _ = tiny_clip
    assert not create_scorer("pickscore", model=path, processor=path)(_images(1), ["a"]).requires_grad


def test_aesthetic_is_the_mlp_on_the_normalised_image_embedding(tiny_clip, tmp_path):
    from diffalign.scorers.heads import LinearMLPHead

    path, model = tiny_clip
    torch.manual_seed(1)
    head = LinearMLPHead(16).eval()
    torch.save(head.state_dict(), tmp_path / "head.pth")  # the published head's file layout
    scorer = create_scorer("aesthetic", head=str(tmp_path / "head.pth"), clip=path)
    images = _images(2, seed=3)
    scores = scorer(images, ["ignored"] * 2)
    for score, image in zip(scores, images):
        inputs = CLIPProcessor.from_pretrained(path)(images=[Image.fromarray(image)], return_tensors="pt")
        with torch.no_grad():
            emb = model(input_ids=torch.tensor([[49406, 49407]]), pixel_values=inputs["pixel_values"]).image_embeds
            expected = head(emb)  # CLIPModel's image_embeds are already L2-normalised
        assert float(score) == pytest.approx(float(expected), abs=1e-4)


def test_dtype_option_accepts_command_line_names(tiny_clip):
    path, _ = tiny_clip
    scorer = create_scorer("pickscore", model=path, processor=path, dtype="bfloat16")
    assert scorer.model.dtype == torch.bfloat16
    assert scorer(_images(2), ["a", "b"]).dtype == torch.float32  # scores are returned in float32
    with pytest.raises(ValueError, match="unknown dtype 'float17'"):
        create_scorer("pickscore", model=path, processor=path, dtype="float17")


def test_denscore_is_the_decomposed_formula_and_omega_one_is_the_plain_cosine(tiny_clip):
    path, model = tiny_clip
    images = _images(4, seed=2)
    prompts = ["a red circle. a blue square.", "a cat", "a green triangle on a grey background; small.", "a dog"]
    scorer = create_scorer("denscore", backbone="clipscore", model=path, omega=0.3)
    scores = scorer(images, prompts)
    # By hand from the backbone's embeddings: sentence vectors, their mean t̄, v, η, then S.
    sim = scorer.similarity
    f = torch.nn.functional.normalize(sim.embed_images([Image.fromarray(i) for i in images]).float(), dim=-1)
    t = []
    for prompt, sentences in zip(prompts, [["a red circle.", "a blue square."], ["a cat"],
                                           ["a green triangle on a grey background;", "small."], ["a dog"]]):
        e = torch.nn.functional.normalize(sim.embed_texts(sentences).float(), dim=-1)
        t.append(e.mean(0))
    t = torch.stack(t)
    v = torch.nn.functional.normalize(t.mean(0), dim=0)
    expected = [float((t[b] - (t[b] @ v) * v) @ f[b] + 0.3 * (t[b] @ v) * (v @ f[b])) for b in range(4)]
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)
    # ω = 1 on one-sentence captions: ⟨t, f⟩, the plain cosine the CLIP scorers use.
    single = ["a red circle", "a cat", "a blue square", "a dog"]
    plain = create_scorer("denscore", backbone="clipscore", model=path, omega=1.0)(images, single)
    for score, image, prompt in zip(plain, images, single):
        cos, _ = _hand_cosine(model, image, prompt)
        assert float(score) == pytest.approx(cos, abs=2e-3)
    with pytest.raises(ValueError, match="denscore backbone"):
        create_scorer("denscore", backbone="aesthetic")


def test_denscore_caption_cache_is_bounded_and_evicts_the_least_recently_used(tiny_clip):
    path, _ = tiny_clip
    scorer = create_scorer("denscore", backbone="clipscore", model=path, max_cached_captions=2)
    embedded = []
    real = scorer.similarity.embed_texts
    scorer.similarity.embed_texts = lambda texts: embedded.extend(texts) or real(texts)  # counted, called through
    first = scorer.caption_vectors(["a cat", "a dog"])
    scorer.caption_vectors(["a cat"])  # a hit: "a cat" becomes the most recent
    both = scorer.caption_vectors(["a cow", "a cat"])  # "a dog" (least recent) is evicted, "a cat" kept
    assert embedded == ["a cat", "a dog", "a cow"] and list(scorer._caption_cache) == ["a cow", "a cat"]
    torch.testing.assert_close(both[1], first[0])
    scorer.caption_vectors(["a dog", "a bird", "a fish"])  # more captions in one call than the cache holds
    assert len(scorer._caption_cache) == 2 and embedded[-3:] == ["a dog", "a bird", "a fish"]
