"""HPS on a tiny open_clip model: longest-side resize + black padding, cosine score, safe checkpoint loading."""

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffalign.scorers import create_scorer
from diffalign.scorers.hps import CLIP_MEAN, CLIP_STD

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    root = tmp_path_factory.mktemp("hps")
    (root / "tiny-hps-test.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(root / "tiny-hps-test.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-hps-test", pretrained=None).eval()
    torch.save({"state_dict": model.state_dict()}, root / "HPS_tiny.pt")  # the HPS checkpoint layout
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "HPS_tiny.safetensors")
    return str(root / "HPS_tiny.pt"), model


def _hand_score(model, image: np.ndarray, prompt: str) -> float:
    im = Image.fromarray(image)  # 20 wide x 40 high: longest side -> 32, width -> 16, pad 8 px black each side
    im = im.resize((16, 32), Image.BICUBIC)
    canvas = Image.new("RGB", (32, 32), (0, 0, 0))
    canvas.paste(im, (8, 0))
    arr = (np.asarray(canvas, dtype=np.float64) / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    pixels = torch.tensor(arr, dtype=torch.float32).permute(2, 0, 1)[None]
    with torch.no_grad():
        img = model.encode_image(pixels, normalize=True)
        txt = model.encode_text(open_clip.tokenize([prompt]), normalize=True)
    return float((img * txt).sum())


def test_hps_is_the_cosine_after_longest_side_resize_and_padding(tiny_hps):
    path, model = tiny_hps
    scorer = create_scorer("hps", checkpoint=path, model_name="tiny-hps-test")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 20, 3), dtype=np.uint8) for _ in range(3)]
    prompts = ["a red circle", "a dog on a beach", "a blue square"]
    scores = scorer(images, prompts)
    assert scores.shape == (3,) and (scores.abs() <= 1).all()
    for score, image, prompt in zip(scores, images, prompts):
        assert float(score) == pytest.approx(_hand_score(model, image, prompt), abs=2e-3)
    torch.testing.assert_close(scores, create_scorer("hps", checkpoint=path, model_name="tiny-hps-test",
                                                     batch_size=1)(images, prompts), rtol=1e-4, atol=1e-5)


def test_clipscore_on_an_open_clip_model_uses_its_own_preprocessing(tiny_hps):
    path, model = tiny_hps
    scorer = create_scorer("clipscore", model="open_clip:tiny-hps-test", pretrained=path.replace(".pt", ".safetensors"))
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)  # square at the model's size: no resize, no crop
    prompts = ["a red circle", "a blue square", "a dog on a beach", "a green triangle"]
    arr = (image.astype(np.float64) / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    with torch.no_grad():
        img = model.encode_image(torch.tensor(arr, dtype=torch.float32).permute(2, 0, 1)[None], normalize=True)
        expected = (img * model.encode_text(open_clip.tokenize(prompts), normalize=True)).sum(-1)
    cosine = scorer.clip.cosine([image] * 4, prompts)
    torch.testing.assert_close(cosine, expected, atol=2e-3, rtol=0)
    torch.testing.assert_close(scorer([image] * 4, prompts), torch.clamp(100 * cosine, min=0))
