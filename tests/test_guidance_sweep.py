"""experiments/guidance_sweep.py on a few toy cases: one row per scale, each the evaluation's own fidelity, and the
win rates paired against the reference scale."""

import json
import sys

import numpy as np
import pytest

import diffalign
from diffalign.evaluation import SamplingSettings
from diffalign.paths import REPO_ROOT, TOY_SD
from diffalign.stats import win_rate

sys.path.insert(0, str(REPO_ROOT / "experiments"))
from guidance_sweep import sweep, to_markdown  # noqa: E402

pytestmark = pytest.mark.experiments  # a study (experiments/), out of the default suite: pytest -m experiments


def test_the_sweep_reports_each_scale_against_the_reference(tmp_path):
    result = sweep(str(TOY_SD), "toy:attributes", seeds=2, scales=[1.0, 5.0], reference=5.0, rescale=0.0,
                   out=tmp_path, steps=3, limit=3)
    assert result["cases"] == 6 and [r["guidance"] for r in result["rows"]] == [1.0, 5.0]
    unguided, reference = result["rows"]
    assert reference["win_rate_vs_reference"]["ties"] == 6  # the reference against itself
    direct = diffalign.evaluate(str(TOY_SD), prompts="toy:attributes", limit=3, seeds_per_prompt=2, progress=False,
                                settings=SamplingSettings(num_inference_steps=3, guidance_scale=1.0),
                                output_dir=tmp_path / "direct")
    fidelity = direct.scores["base"]["toy/fidelity"]
    assert unguided["fidelity"]["mean"] == pytest.approx(float(np.mean(fidelity)))
    assert unguided["attributes"]["colour"] == pytest.approx(float(np.nanmean(direct.scores["base"]["toy/colour"])))
    reference_fidelity = json.loads((tmp_path / "cfg5" / "report.json").read_text())["cases"]
    paired = win_rate(fidelity, np.array([case["base/toy/fidelity"] for case in reference_fidelity]))
    assert unguided["win_rate_vs_reference"]["wins"] == paired.wins
    assert unguided["win_rate_vs_reference"]["rate"] == pytest.approx(paired.rate)
    assert result["model"] == "assets/toy-sd" and "| 1 |" in to_markdown(result)
    with pytest.raises(ValueError, match="must be one of the swept scales"):
        sweep(str(TOY_SD), "toy:attributes", 1, [1.0], 5.0, 0.0, tmp_path)
    with pytest.raises(ValueError, match="each guidance scale once"):
        sweep(str(TOY_SD), "toy:attributes", 1, [5.0, 5.0], 5.0, 0.0, tmp_path)


def test_the_sweep_samples_with_the_guidance_rescale(tmp_path):
    result = sweep(str(TOY_SD), "toy:attributes", seeds=2, scales=[5.0], reference=5.0, rescale=0.7,
                   out=tmp_path, steps=3, limit=1)
    assert result["guidance_rescale"] == 0.7
    assert json.loads((tmp_path / "cfg5" / "report.json").read_text())["settings"]["sampling"]["guidance_rescale"] == 0.7
