"""Images as training data: every Pillow mode decodes to the 8-bit RGB it shows (16-bit scaled, not clipped;
transparency composited on data.alpha_background, not dropped), and the two images of a pair with different sizes
are each resized and cropped on their own (nothing stretched), the SDXL meta rows naming each image's own box."""

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from diffalign.config import Config, ConfigError, DataConfig, _reject_ignored_settings, load_config
from diffalign.data.examples import decode_image, paired_transform
from diffalign.data.pairs import PreferencePairs
from diffalign.data.user_pairs import TableUserExample, UserPreferencePairs

# The 8-bit original: 8 colours in 8x8 blocks (aligned with JPEG's DCT blocks), [16, 32, 3].
PALETTE = np.array([[0, 0, 0], [255, 255, 255], [200, 30, 40], [20, 180, 60], [30, 60, 220], [250, 210, 20],
                    [120, 120, 120], [90, 200, 230]], dtype=np.uint8)
_Y, _X = np.mgrid[0:16, 0:32]
REF = PALETTE[_X // 8 + 4 * (_Y // 8)]
GRAY = np.asarray(Image.fromarray(REF).convert("L"))  # [16, 32], the original of the one-channel modes
# Alpha of the transparency tests [16, 32]: opaque, transparent, half in vertical stripes.
ALPHA = np.array([255, 0, 128, 255])[_X % 4].astype(np.uint8)
BLUE = (0, 0, 255)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _decoded(data, **options) -> np.ndarray:
    return np.asarray(decode_image(data, "test row 0 column image", **options)).astype(int)


def _composited(rgb: np.ndarray, alpha: np.ndarray, background=(255, 255, 255)) -> np.ndarray:
    """Straight-alpha "over": rgb [H, W, 3] on ``background``, as float [H, W, 3]."""
    a = alpha[..., None] / 255.0
    return rgb * a + np.array(background) * (1 - a)


# Modes Pillow's convert("RGB") already got right: the one decoder must keep them exact.
EXACT = {
    "RGB PNG": lambda: (_encode(Image.fromarray(REF), "PNG"), REF),
    "L PNG": lambda: (_encode(Image.fromarray(GRAY), "PNG"), _rgb(GRAY)),
    "1 PNG": lambda: (_encode(Image.fromarray(GRAY >= 128), "PNG"), _rgb(np.where(GRAY >= 128, 255, 0))),
    "P PNG": lambda: (_encode(Image.fromarray(REF).convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG"),
                      REF),
    "CMYK TIFF": lambda: (_encode(Image.fromarray(REF).convert("CMYK"), "TIFF"), REF),
    "F TIFF 0..255": lambda: (_encode(Image.fromarray(GRAY).convert("F"), "TIFF"), _rgb(GRAY)),
}


@pytest.mark.parametrize("case", EXACT)
def test_modes_pillow_already_converted_still_decode_exactly(case):
    data, expected = EXACT[case]()
    assert np.array_equal(_decoded(data), expected)


# Lossy codings, each within its own tolerance (max abs error, 8-bit levels): JPEG at quality 95 without chroma
# subsampling on 8x8-aligned blocks (measured 1); Pillow's integer YCbCr matrices (2); its fixed-point L*a*b*
# (9); HSV's hue quantisation (3).
LOSSY = {
    "RGB JPEG": (lambda: _encode(Image.fromarray(REF), "JPEG", quality=95, subsampling=0), 2),
    "CMYK JPEG": (lambda: _encode(Image.fromarray(REF).convert("CMYK"), "JPEG", quality=95, subsampling=0), 2),
    "YCbCr TIFF": (lambda: _encode(Image.fromarray(REF).convert("YCbCr"), "TIFF"), 3),
    "LAB TIFF": (lambda: _encode(Image.fromarray(REF).convert("LAB"), "TIFF"), 12),
    "HSV image": (lambda: Image.fromarray(REF).convert("HSV"), 4),
}


@pytest.mark.parametrize("case", LOSSY)
def test_lossy_modes_decode_within_tolerance(case):
    make, tolerance = LOSSY[case]
    assert np.abs(_decoded(make()) - REF).max() <= tolerance


# 16/32-bit and float images: the value range of the depth maps to 0..255 (16-bit: v / 257, rounded).
HIGH_DEPTH = {
    "I;16 PNG": lambda: _encode(Image.fromarray(GRAY.astype(np.uint16) * 257), "PNG"),
    "I;16B TIFF": lambda: _encode(Image.frombytes("I;16B", (32, 16), (GRAY.astype(">u2") * 257).tobytes()), "TIFF"),
    "I TIFF 16-bit values": lambda: _encode(Image.fromarray(GRAY.astype(np.int32) * 257), "TIFF"),
    "I TIFF 32-bit values": lambda: _encode(Image.fromarray(GRAY.astype(np.int32) * 8421504), "TIFF"),  # 255 ~ 2^31
    "F TIFF 0..1": lambda: _encode(Image.fromarray(GRAY.astype(np.float32) / 255), "TIFF"),
    "F TIFF 16-bit values": lambda: _encode(Image.fromarray(GRAY.astype(np.float32) * 257), "TIFF"),
}


@pytest.mark.parametrize("case", HIGH_DEPTH)
def test_high_bit_depth_scales_to_8bit(case):
    assert np.array_equal(_decoded(HIGH_DEPTH[case]()), _rgb(GRAY))


def test_16bit_mid_gray_ramp_is_not_white():
    ramp = np.tile(np.linspace(16384, 49151, 32).round().astype(np.uint16), (8, 1))  # [8, 32], 25%..75% gray
    decoded = _decoded(_encode(Image.fromarray(ramp), "PNG"))
    assert np.array_equal(decoded, _rgb(np.rint(ramp / 257).astype(int)))
    assert decoded.min() == 64 and decoded.max() == 191


# Transparent images -> (the colours [16, 32, 3], the alpha [16, 32]) they show.
_GRAY_ALPHA = np.where(ALPHA == 0, 0, 255).astype(np.uint8)  # colour-key transparency is all or nothing
TRANSPARENT = {
    "RGBA PNG": lambda: (_encode(Image.fromarray(np.dstack([REF, ALPHA])), "PNG"), REF, ALPHA),
    "LA PNG": lambda: (_encode(Image.fromarray(np.dstack([GRAY, ALPHA])), "PNG"), _rgb(GRAY), ALPHA),
    "PA TIFF": lambda: (_encode(Image.merge("PA", (Image.fromarray(REF).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=8), Image.fromarray(ALPHA))), "TIFF"), REF, ALPHA),
    "RGBa image": lambda: (Image.fromarray(np.dstack([REF, ALPHA])).convert("RGBa"), REF, ALPHA),
    "La image": lambda: (Image.fromarray(np.dstack([GRAY, ALPHA])).convert("La"), _rgb(GRAY), ALPHA),
}
# Palette and colour-key transparency (PNG tRNS): the pixels of one value are transparent. Black (palette index /
# gray 0 / colour (0, 0, 0), 16-bit 0) is in the first block only.
_KEYED = np.where((_X < 8) & (_Y < 8), 0, 255).astype(np.uint8)


def _palette_png_black_transparent() -> bytes:
    image = Image.fromarray(REF).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    black = [tuple(c) for c in np.reshape(image.getpalette(), (-1, 3))].index((0, 0, 0))
    return _encode(image, "PNG", transparency=black)


KEYED = {
    "P PNG transparency": lambda: (_palette_png_black_transparent(), REF),
    "L PNG transparency": lambda: (_encode(Image.fromarray(GRAY), "PNG", transparency=0), _rgb(GRAY)),
    "RGB PNG transparency": lambda: (_encode(Image.fromarray(REF), "PNG", transparency=(0, 0, 0)), REF),
    "I;16 PNG transparency": lambda: (_encode(Image.fromarray(GRAY.astype(np.uint16) * 257), "PNG", transparency=0),
                                      _rgb(GRAY)),
}


@pytest.mark.parametrize("background", [None, BLUE], ids=["white", "blue"])
@pytest.mark.parametrize("case", TRANSPARENT)
def test_alpha_is_composited_on_the_background(case, background):
    data, rgb, alpha = TRANSPARENT[case]()
    options = {} if background is None else {"background": background}
    decoded = _decoded(data, **options)
    expected = _composited(rgb, alpha, background or (255, 255, 255))
    assert np.array_equal(decoded[alpha == 0], expected[alpha == 0])  # the background itself
    assert np.array_equal(decoded[alpha == 255], rgb[alpha == 255])
    assert np.abs(decoded - expected).max() <= 2  # half alpha: rounding (RGBa's premultiplied colours lose a bit)


@pytest.mark.parametrize("background", [None, BLUE], ids=["white", "blue"])
@pytest.mark.parametrize("case", KEYED)
def test_palette_and_colour_key_transparency_show_the_background(case, background):
    data, rgb = KEYED[case]()
    options = {} if background is None else {"background": background}
    assert np.array_equal(_decoded(data, **options), _composited(rgb, _KEYED, background or (255, 255, 255)))


def test_datasets_composite_on_data_alpha_background(tmp_path):
    clear = _encode(Image.fromarray(np.zeros((16, 16, 4), dtype=np.uint8)), "PNG")  # fully transparent
    rows = [{"caption": "a red circle", "jpg_0": clear, "jpg_1": clear, "label_0": 1.0, "user_id": 7}] * 2
    Dataset.from_list(rows).to_parquet(str(tmp_path / "pairs.parquet"))
    cfg = DataConfig(source=str(tmp_path / "pairs.parquet"), resolution=16, alpha_background=list(BLUE))
    pairs = PreferencePairs(cfg, tokenizer=None)  # the tokenizer is not read by image decoding
    profile = TableUserExample(UserPreferencePairs(cfg, tokenizer=None, examples_per_user=1), 0)
    for image in (pairs.image(pairs.table[0], "jpg_0", "row 0"), profile.chosen, profile.rejected):
        assert np.array_equal(_decoded(image), np.broadcast_to(BLUE, (16, 16, 3)))


def test_alpha_background_config_default_and_override():
    assert DataConfig().alpha_background == [255, 255, 255]
    assert load_config(overrides=[("data.alpha_background", "[0, 0, 255]")]).data.alpha_background == [0, 0, 255]


@pytest.mark.parametrize("value", ["[256, 0, 0]", "[-1, 0, 0]", "[0, 0]", "[0.5, 0, 0]", "[true, 0, 0]", "white"])
def test_alpha_background_must_be_an_rgb_colour(value):
    with pytest.raises(ConfigError, match=r"data.alpha_background: expected (three integers in 0..255|list)"):
        load_config(overrides=[("data.alpha_background", value)])


def test_alpha_background_is_rejected_where_no_images_are_read():
    given = {"data": {"alpha_background": [0, 0, 0]}}
    reward_fine_tuning = SimpleNamespace(pair_axis="prompts")  # longalign's objective, without loading its reward
    with pytest.raises(ConfigError, match="data.alpha_background is set but method longalign does not use it"):
        _reject_ignored_settings(Config(method="longalign"), reward_fine_tuning, given, set())
    _reject_ignored_settings(Config(method="dpo"), SimpleNamespace(pair_axis="images"), given, set())


def _scene(height: int, width: int) -> np.ndarray:
    """A smooth scene [height, width, 3] over the unit square: any view of it, at any size, is the same picture."""
    y, x = np.mgrid[0:height, 0:width]
    u, v = (x + 0.5) / width, (y + 0.5) / height
    channels = [np.sin(2 * np.pi * u) * 0.5 + 0.5, v, np.cos(3 * np.pi * u * v) * 0.5 + 0.5]
    return np.rint(np.stack(channels, -1) * 255).astype(np.uint8)


def test_pair_of_different_sizes_is_cropped_not_stretched():
    wide = _scene(32, 64)  # [32, 64, 3]
    small = np.asarray(Image.fromarray(wide).resize((32, 16), Image.BICUBIC))  # the same scene at half size
    square = np.asarray(Image.fromarray(wide[:, 16:48]).resize((16, 16), Image.BICUBIC))  # its centre square
    images = [Image.fromarray(a) for a in (wide, small, square)]
    pixels, meta = paired_transform(images, 16, False, False, np.random.default_rng(0))  # centre crop
    # Each image's own original size and crop in its own resized pixels (wide: 32x16 resized, 8 px each side).
    assert meta.tolist() == [[32, 64, 0, 8, 16, 16], [16, 32, 0, 8, 16, 16], [16, 16, 0, 0, 16, 16]]
    # The same centre view of the scene, up to resampling: within 6 8-bit levels (measured 1; stretching the
    # square to the wide one's shape, as before, is 103 levels off).
    assert (pixels[1] - pixels[0]).abs().max() < 6 / 127.5
    assert (pixels[2] - pixels[0]).abs().max() < 6 / 127.5


@pytest.mark.parametrize("seed", range(6))
def test_random_crop_and_flip_take_the_same_relative_box(seed):
    wide, narrow = _scene(32, 80), _scene(32, 48)  # resolution 32: 48 and 16 pixels of horizontal slack
    pixels, meta = paired_transform([Image.fromarray(wide), Image.fromarray(narrow)], 32, True, True,
                                    np.random.default_rng(seed))
    rng = np.random.default_rng(seed)  # the draws as documented: left, top (no slack: 0), flip
    left, _, flip = int(rng.integers(0, 49)), int(rng.integers(0, 1)), rng.random() < 0.5
    for k, (array, x) in enumerate([(wide, left), (narrow, round(left / 48 * 16))]):
        crop = array[:, x:x + 32][:, ::-1] if flip else array[:, x:x + 32]  # short side is 32: no resize
        assert torch.equal(pixels[k], torch.from_numpy(crop.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1.0)
        width = array.shape[1]
        assert meta[k].tolist() == [32, width, 0, width - x - 32 if flip else x, 32, 32]
