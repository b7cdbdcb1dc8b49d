"""The toy effects in docs/results.md's measured tables, as tests (slow: 3-7 min each on 2 cores; `pytest -m slow`).

Each trains the embedded default of a method and checks its end-of-run comparison (diffalign eval on held-out
prompts, ≥ 200 prompt×seed cases): the 95% CI lower bound of the win rate over the base must exceed 50%.
"""

import pytest

from diffalign.config import load_config
from diffalign.paths import REPO_ROOT
from diffalign.train import train

# strict: an unexpected pass fails the run, so the mark is dropped as soon as TPO shows its effect.
NO_EFFECT_YET = pytest.mark.xfail(reason="no toy fidelity effect yet: see docs/results.md (TPO table)",
                                  strict=True)


def _run(tmp_path, method, extra=()):
    cfg = load_config(REPO_ROOT / f"configs/toy/{method}.yaml",
                      [("output_dir", str(tmp_path / method)), ("train.report_to", "none")] + list(extra))
    return train(cfg)["comparison"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "mapo", "kto", "inpo"])
def test_preference_methods_beat_the_base_on_their_persona(tmp_path, method):
    result = _run(tmp_path, method)
    assert result["cases"] >= 200 and result["win_rate_ci"][0] > 0.5, result["text"]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["flow_dpo", "flow_mapo"])
def test_flow_methods_beat_the_flow_base_on_the_persona(tmp_path, config):
    """The SD3-shaped toy base (assets/toy-flow): Flow-DPO and MaPO beat it (sampled with the T5 length it trained
    with)."""
    result = _run(tmp_path, config)
    assert result["cases"] >= 200 and result["win_rate_ci"][0] > 0.5, result["text"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "mapo"])
def test_full_finetuning_beats_the_base_on_the_persona(tmp_path, method):
    """docs/results.md's full fine-tune rows (lr 1e-4, the rest of the toy default; the reference a frozen copy)."""
    result = _run(tmp_path, method, [("lora.enabled", "false"), ("train.lr", "1e-4")])
    assert result["cases"] >= 200 and result["win_rate_ci"][0] > 0.5, result["text"]


@pytest.mark.slow
@pytest.mark.parametrize("method", [pytest.param("tdpo", marks=NO_EFFECT_YET), pytest.param("tkto", marks=NO_EFFECT_YET),
                                    "softrepa", "longalign"])
def test_caption_methods_raise_fidelity(tmp_path, method):
    """Fidelity on each method's comparison set: toy:attributes for TPO, the long captions for SoftREPA and
    LongAlign (configs/toy/*.yaml)."""
    result = _run(tmp_path, method)
    assert result["cases"] >= 200 and result["fidelity_win_rate_ci"][0] > 0.5, result["text"]


@pytest.mark.slow
def test_sft_adapts_the_base_to_segment_encoded_long_captions(tmp_path):
    """LongAlign's first stage: both models sampled with segment encoding, the adapted one follows it better. (Against
    the base model's 77-token truncation: experiments/long_prompt_fidelity.py --lora, docs/results.md.)"""
    result = _run(tmp_path, "sft")
    assert result["cases"] >= 200 and result["fidelity_win_rate_ci"][0] > 0.5, result["text"]


@pytest.fixture(scope="module")
def ppd_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppd")
    return out / "ppd", _run(out, "ppd")


@pytest.fixture(scope="module")
def ppd_comparison(ppd_run):
    return ppd_run[1]


@pytest.mark.slow
def test_ppd_personalises_for_two_opposite_personas_and_mixes_monotonically(ppd_comparison):
    """docs/results.md's PPD rows from the trainer's own comparison (200 cases, 4 examples per user): bold and subtle
    (opposite tastes) each beat the base; mixing bold into subtle moves both scores monotonically. (The comparison
    with pooled DPO is experiments/ppd_personas.py.)"""
    for persona in ("bold", "subtle"):
        row = ppd_comparison["personas"][persona]
        assert ppd_comparison["cases"] >= 200 and row["vs_base"]["ci"][0] > 0.5, ppd_comparison["text"]
    assert ppd_comparison["interpolation_monotonic"], ppd_comparison["text"]


@pytest.mark.slow
@pytest.mark.xfail(reason="unseen persona at the trained user scale: 56.5% [49.7%, 63.3%], the lower bound just "
                          "under 50% (at user scale 3 it holds: the next test)", strict=True)
def test_ppd_personalises_for_the_unseen_persona(ppd_comparison):
    assert ppd_comparison["personas"]["cosy"]["vs_base"]["ci"][0] > 0.5, ppd_comparison["text"]


@pytest.mark.slow
def test_ppd_at_user_scale_3_personalises_the_opposite_and_the_unseen_personas(ppd_run):
    """docs/results.md's user-scale-3 rows (the scale chosen on training-side prompts): on the 200 held-out cases, bold,
    subtle and the unseen cosy each beat the base, and the bold/subtle mix is monotonic. (Against the pooled DPO
    model: experiments/ppd_personas.py --user-scale 3.)"""
    from diffalign.paths import TOY_SD
    from diffalign.toy.personalization import measure_personalization

    result = measure_personalization(str(TOY_SD), ppd_run[0], personas=("bold", "subtle", "cosy"), user_scale=3.0)
    for persona in ("bold", "subtle", "cosy"):
        assert result["cases"] >= 200 and result["personas"][persona]["vs_base"]["ci"][0] > 0.5, result["text"]
    assert result["interpolation_monotonic"], result["text"]
