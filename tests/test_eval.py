"""`diffalign eval` / `diffalign.evaluate` on the embedded toy model: the four files, paired seeds, win rates,
the generation cache, and the prompt sources."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

import diffalign
from diffalign.cli import main
from diffalign.evaluation import SamplingSettings
from diffalign.evaluation.prompt_sources import load_prompts
from diffalign.evaluation.sampling import cases, generate
from diffalign.models.lora import attach_lora, save_lora
from diffalign.paths import TOY_SD
from diffalign.toy import plugin  # noqa: F401  (registers the scorer "toy" and the prompt source "toy:<set>")
from diffalign.toy.prompts import prompt_set
from diffalign.toy.scoring import attribute_rates, judge

FAST = SamplingSettings(num_inference_steps=8)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A LoRA with random (non-zero) B, so the adapted model draws different images from the base."""
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    attach_lora(pipe.unet, rank=4, alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    out = tmp_path_factory.mktemp("lora")
    save_lora(pipe.unet, out)
    return out


def test_evaluate_writes_the_four_files_and_reuses_cached_images(tmp_path, lora_dir):
    kwargs = dict(prompts="toy:attributes", limit=4, seeds_per_prompt=2, scorers=["toy"], settings=FAST,
                  output_dir=tmp_path, progress=False)
    report = diffalign.evaluate(str(TOY_SD), adapters=[f"noisy={lora_dir}"], **kwargs)
    for name in ("report.json", "report.md", "grid.png", "distributions.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert report.models == ["base", "noisy"] and report.seeds == [0, 1] * 4
    assert report.cached == {"base": 0, "noisy": 0}
    base, noisy = report.scores["base"]["toy/bold"], report.scores["noisy"]["toy/bold"]
    assert base.shape == (8,) and not np.allclose(base, noisy)  # the LoRA changes the images
    wr = report.win_rates()["noisy"]["toy/bold"]
    assert wr.n == 8 and wr.wins == int((noisy > base).sum()) and wr.losses == int((noisy < base).sum())
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["cases"][3]["noisy/toy/bold"] == pytest.approx(float(noisy[3]))
    assert saved["win_rates_vs_base"]["noisy"]["toy/bold"]["rate"] == pytest.approx(wr.rate)
    assert "| toy/bold |" in (tmp_path / "report.md").read_text()

    again = diffalign.evaluate(str(TOY_SD), adapters=[f"noisy={lora_dir}"], **kwargs)
    assert again.cached == {"base": 8, "noisy": 8}
    for model in ("base", "noisy"):
        for score, values in report.scores[model].items():
            np.testing.assert_array_equal(again.scores[model][score], values)


def test_eval_matches_the_judge_on_freshly_sampled_images(tmp_path):
    """The toy/<attribute> means are the base-model table's rates, computed here directly from the judge."""
    prompts, seeds = cases(prompt_set("attributes")[:5], 2)
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    images = generate(pipe, prompts, seeds, FAST.num_inference_steps, FAST.guidance_scale, progress=False)
    expected = attribute_rates([judge(im, p) for im, p in zip(images, prompts)])
    report = diffalign.evaluate(str(TOY_SD), prompts=prompt_set("attributes")[:5], seeds_per_prompt=2,
                                settings=FAST, output_dir=tmp_path, progress=False)
    summary = report.summary()["base"]
    for kind in ("colour", "shape", "size", "position"):
        assert summary[f"toy/{kind}"].mean == pytest.approx(expected[kind])


def test_cli_eval_prints_the_report(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square on a white background\n")
    code = main(["eval", "--model", str(TOY_SD), "--prompts", str(prompts), "--seeds-per-prompt", "2",
                 "--steps", "4", "--out", str(tmp_path / "out"), "--scorers", "toy"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "4 cases (2 prompts" in printed and "toy/fidelity" in printed
    assert main(["eval", "--model", str(TOY_SD), "--lora", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "out2")]) == 2
    assert main(["eval", "--model", str(TOY_SD), "--out", str(tmp_path)]) == 2  # holds prompts.txt: refused
    assert prompts.read_text().startswith("a red circle")


def test_prompt_sources(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"caption": "a red circle"}\n\n{"prompt": "a dog"}\n')
    assert load_prompts(str(tmp_path / "p.jsonl")) == ["a red circle", "a dog"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"text": "no key"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: expected a string under 'prompt' or 'caption'"):
        load_prompts(str(tmp_path / "bad.jsonl"))
    import pandas as pd

    pd.DataFrame({"caption": ["x", "y", "z"]}).to_parquet(tmp_path / "t.parquet")
    assert load_prompts(str(tmp_path / "t.parquet"), limit=2) == ["x", "y"]
    with pytest.raises(ValueError, match="no prompt column 'text'"):
        load_prompts(str(tmp_path / "t.parquet"), column="text")
    assert load_prompts("toy:persona") == prompt_set("persona")
    with pytest.raises(ValueError, match="unknown toy prompt set"):
        load_prompts("toy:nope")


def test_scorer_options_are_parsed_and_checked():
    from diffalign.evaluation.scoring import build_scorers, parse_scorer_options

    assert parse_scorer_options(["hps.version=v2", "toy.score=\"bold\"", "x.n=3"]) == \
        {"hps": {"version": "v2"}, "toy": {"score": "bold"}, "x": {"n": 3}}
    with pytest.raises(ValueError, match="expected SCORER.OPTION=VALUE"):
        parse_scorer_options(["pickscore=/x"])
    with pytest.raises(ValueError, match="not in use"):
        build_scorers(["toy"], {"hps": {"version": "v2"}}, "cpu")


def test_full_finetune_folders_are_compared_too(tmp_path):
    """An output folder with unet/ (a full fine-tune) replaces the base UNet; its fingerprint covers unet/ only."""
    from diffalign.evaluation.models import ModelSpec

    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.mul_(1.05)
    pipe.unet.save_pretrained(tmp_path / "ft" / "unet")
    spec = ModelSpec("ft", str(TOY_SD), str(tmp_path / "ft"))
    before = spec.fingerprint()
    (tmp_path / "ft" / "checkpoints").mkdir()
    (tmp_path / "ft" / "checkpoints" / "x.safetensors").write_bytes(b"not part of the model")
    assert spec.fingerprint() == before  # checkpoints beside the model do not invalidate the cache
    report = diffalign.evaluate(str(TOY_SD), adapters=[f"ft={tmp_path / 'ft'}"], prompts=["a red circle"],
                                seeds_per_prompt=2, settings=FAST, output_dir=tmp_path / "eval", progress=False)
    assert report.models == ["base", "ft"] and report.cached == {"base": 0, "ft": 0}
    base_png = sorted((tmp_path / "eval" / "images").glob("base-*/*.png"))
    ft_png = sorted((tmp_path / "eval" / "images").glob("ft-*/*.png"))
    assert len(base_png) == len(ft_png) == 2
    assert any(a.read_bytes() != b.read_bytes() for a, b in zip(sorted(base_png, key=lambda p: p.name),
                                                                 sorted(ft_png, key=lambda p: p.name)))


def test_segment_encoding_conditions_the_evaluation_images(tmp_path):
    """--text-encoding segments samples from segment-encoded states (and caches them apart from clip's)."""
    from PIL import Image

    from diffalign.evaluation.api import evaluate
    from diffalign.evaluation.generation import SamplingSettings
    from diffalign.toy.prompts import prompt_set

    prompts = prompt_set("long")[:2]
    reports = {e: evaluate(str(TOY_SD), prompts=prompts, scorers=["toy"], seeds_per_prompt=1, progress=False,
                           output_dir=tmp_path / e, settings=SamplingSettings(num_inference_steps=3, text_encoding=e))
               for e in ("clip", "segments")}
    assert reports["clip"].settings != reports["segments"].settings
    grids = [np.asarray(Image.open(reports[e].files["grid"])) for e in ("clip", "segments")]
    assert grids[0].shape == grids[1].shape and np.abs(grids[0].astype(int) - grids[1].astype(int)).max() > 0


def test_guidance_rescale_reaches_the_pipeline_and_keeps_plain_cfg_caches(tmp_path, capsys):
    """--guidance-rescale samples what the diffusers pipeline samples with guidance_rescale; 0 (plain CFG) keeps
    the cache key the settings had before the option existed, so cached evaluations stay valid."""
    prompts, seeds = cases(prompt_set("attributes")[:2], 1)
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    rescaled = SamplingSettings(num_inference_steps=4, guidance_scale=9.0, guidance_rescale=0.7)
    expected = generate(pipe, prompts, seeds, 4, 9.0, progress=False, guidance_rescale=0.7)
    plain = generate(pipe, prompts, seeds, 4, 9.0, progress=False)
    assert np.abs(expected.astype(int) - plain.astype(int)).max() > 0  # the option matters at these settings
    from diffalign.evaluation.generation import images_for
    from diffalign.evaluation.models import ModelSpec

    spec = ModelSpec("base", str(TOY_SD))
    images, _ = images_for(spec, prompts, seeds, rescaled, tmp_path, progress=False)
    np.testing.assert_array_equal(images, expected)

    assert SamplingSettings().key() == "6e7d2deb261a"  # the default settings' key before the option existed
    assert rescaled.key() != SamplingSettings(num_inference_steps=4, guidance_scale=9.0).key()
    # no CFG at scale 1, so nothing to rescale: the images, and the cache, are plain CFG's
    assert SamplingSettings(guidance_scale=1.0, guidance_rescale=0.7).key() == SamplingSettings(guidance_scale=1.0).key()

    with pytest.raises(SystemExit) as exit_:  # argparse's own error, before any model loads
        main(["eval", "--guidance-rescale", "1.5", "--out", str(tmp_path / "bad")])
    assert exit_.value.code == 2
    assert "argument --guidance-rescale: expected a number in [0, 1]" in capsys.readouterr().err


def test_eval_guidance_rescale_reaches_the_comparison_and_the_validation_grid(tmp_path):
    """eval.guidance_rescale: the trainer's end-of-run comparison and its validation grids sample with it."""
    from PIL import Image

    from diffalign.config import ConfigError, load_config
    from diffalign.models.loading import load_sd_components
    from diffalign.paths import REPO_ROOT
    from diffalign.toy.compare import comparison_settings
    from diffalign.validation import validation_grid

    cfg = load_config(REPO_ROOT / "configs/toy/dpo.yaml", [("eval.guidance_rescale", "0.7")])
    assert comparison_settings(cfg).guidance_rescale == 0.7
    plain = comparison_settings(load_config(REPO_ROOT / "configs/toy/dpo.yaml"))
    assert plain == SamplingSettings()  # the settings every comparison so far sampled with
    segments = comparison_settings(load_config(REPO_ROOT / "configs/toy/longalign.yaml", [
        ("objective.text_encoding", "segments"), ("eval.guidance_rescale", "0.5")]))
    assert segments.text_encoding == "segments" and segments.guidance_rescale == 0.5
    # a LongAlign config that leaves text_encoding out trains with its default, segments, and samples so too
    default = load_config(REPO_ROOT / "configs/toy/longalign.yaml")
    default.objective.pop("text_encoding")
    assert comparison_settings(default).text_encoding == "segments"
    sft = comparison_settings(load_config(REPO_ROOT / "configs/toy/sft.yaml", [("objective.max_text_length", "100")]))
    assert sft.text_encoding == "segments" and sft.max_text_length == 100  # sampled as it trained
    with pytest.raises(ConfigError, match=r"eval.guidance_rescale must lie in \[0, 1\]"):
        load_config(REPO_ROOT / "configs/toy/dpo.yaml", [("eval.guidance_rescale", "1.5")])

    parts = load_sd_components(str(TOY_SD))
    grids = [np.asarray(Image.open(validation_grid(parts, parts.unet, prompt_set("persona")[:2], tmp_path / f"{r}.png",
                                                   str(TOY_SD), 32, seeds=(0,), num_inference_steps=3,
                                                   guidance_scale=9.0, guidance_rescale=r)))
             for r in (0.0, 0.7)]
    assert grids[0].shape == grids[1].shape and np.abs(grids[0].astype(int) - grids[1].astype(int)).max() > 0


# (K images per row, their side, max_scale) -> the row's size: the largest whole enlargement <= max_scale within
# 2048 px, or shrunk to 2048 px wide when even 1x is wider.
GRID_ROWS = [((4, 32, 4), (512, 128)),      # toy validation grid: 4x, as asked
             ((2, 32, 256), (2048, 1024)),  # evaluation's max_scale 256 // h: 32x, the most within 2048
             ((3, 200, 4), (1800, 600)),    # 4x would be 2400 px: 3x
             ((4, 512, 4), (2048, 512)),    # SD1.5: 1x (the old fixed 4x: an 8192-px-wide sheet)
             ((4, 1024, 1), (2048, 512))]   # SDXL: 4096 px at 1x, shrunk by half


@pytest.mark.parametrize("shape, row", GRID_ROWS, ids=[str(s) for s, _ in GRID_ROWS])
def test_grids_enlarge_small_images_and_are_never_wider_than_2048_px(tmp_path, shape, row):
    from PIL import Image

    from diffalign.evaluation.grid import MAX_WIDTH, TITLE_HEIGHT, save_grid

    k, side, max_scale = shape
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 256, (k, side, side, 3), dtype=np.uint8) for _ in range(2)]
    sheet = np.asarray(Image.open(save_grid(rows, ["a", "b"], tmp_path / "grid.png", max_scale=max_scale)))
    assert sheet.shape == (2 * (row[1] + TITLE_HEIGHT), row[0], 3) and row[0] <= MAX_WIDTH
    scale = row[0] // (k * side)
    if scale:  # enlarged by whole pixels: each source pixel a scale x scale block
        first = sheet[TITLE_HEIGHT:TITLE_HEIGHT + row[1], :side * scale]
        np.testing.assert_array_equal(first, rows[0][0].repeat(scale, axis=0).repeat(scale, axis=1))


def test_the_report_gives_each_seeds_win_rate():
    """Cases that share a seed share the initial noise: an adapter that wins on one seed's cases and loses on the
    other's has a case-level win rate of 50%, and the per-seed rates show the spread (100% and 0%)."""
    from diffalign.evaluation.report import Report

    prompts = [f"prompt {i // 2}" for i in range(8)]  # prompt-major, as evaluation.sampling.cases orders them
    seeds = [0, 1] * 4
    base = np.zeros(8)
    tuned = np.array([1.0, -1.0] * 4)
    partly = np.array([1.0, 1.0, 0.0, 1.0, np.nan, 1.0, -1.0, np.nan])  # NaN: not applicable, left out
    report = Report(["base", "tuned", "partly"], prompts, seeds,
                    {"base": {"s": base}, "tuned": {"s": tuned}, "partly": {"s": partly}}, {})
    assert report.win_rates()["tuned"]["s"].rate == 0.5
    by_seed = report.win_rates_by_seed()
    assert by_seed["tuned"]["s"] == {0: 1.0, 1: 0.0}
    assert by_seed["partly"]["s"] == {0: 0.5, 1: 1.0}  # seed 0: win, tie, loss; seed 1: three wins
    saved = json.loads(json.dumps(report.to_dict()))["win_rates_vs_base_by_seed"]  # as report.json holds it
    assert saved == {"tuned": {"s": {"0": 1.0, "1": 0.0}}, "partly": {"s": {"0": 0.5, "1": 1.0}}}
    assert "| s | 0.0% – 100.0% (2 seeds) | 50.0% – 100.0% (2 seeds) |" in report.to_markdown()


def test_the_comparisons_seed_line():
    from diffalign.toy.compare import seed_range

    assert seed_range({4: 0.36, 5: 0.61, 6: 0.5}) == "36%-61%"
    assert seed_range({0: 0.5}) == "one seed" and seed_range({}) == "no seed with 2 cases"
