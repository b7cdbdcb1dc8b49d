"""Prompt splits never overlap; the command line answers --help and refuses to overwrite user files."""

import hashlib
import subprocess
import sys

import pytest

from diffalign.paths import refuse_overwrite
from diffalign.toy.prompts import prompt_set


@pytest.mark.parametrize("name", ["persona", "attributes", "long"])
def test_train_and_heldout_prompts_are_disjoint(name):
    train, heldout = set(prompt_set(name, "train")), set(prompt_set(name, "heldout"))
    assert train and heldout and not train & heldout


# sha256 of the held-out captions joined by newlines: every measured figure in the README is on these prompts, so a
# change to how they are drawn (the rng order of toy/prompts.py, the grammar) must be deliberate.
HELDOUT_DIGESTS = {"persona": "287e6a8a7af3d398", "attributes": "3283e4c93ef392a5", "long": "6d7393b5c7602f3e"}


@pytest.mark.parametrize("name", sorted(HELDOUT_DIGESTS))
def test_the_heldout_prompts_are_the_ones_measured(name):
    digest = hashlib.sha256("\n".join(prompt_set(name, "heldout")).encode()).hexdigest()[:16]
    assert digest == HELDOUT_DIGESTS[name]


def test_unknown_prompt_set_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown toy prompt set 'nope'"):
        prompt_set("nope")


@pytest.mark.parametrize("args", [["--help"], ["toy", "--help"], ["toy", "measure", "--help"]])
def test_cli_help(args):
    out = subprocess.run([sys.executable, "-m", "diffalign.cli", *args], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: diffalign" in out.stdout


def test_refuse_overwrite(tmp_path):
    refuse_overwrite(tmp_path / "absent", overwrite=False)
    (tmp_path / "f.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="--overwrite"):
        refuse_overwrite(tmp_path, overwrite=False)
    refuse_overwrite(tmp_path, overwrite=True)


def test_cli_train_passes_its_arguments_to_the_trainer():
    out = subprocess.run([sys.executable, "-m", "diffalign.cli", "train", "--method", "nope"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "no embedded default for method 'nope'" in out.stderr


def test_cli_toy_measure_samples_with_the_chosen_steps_and_guidance(tmp_path):
    import json

    import diffalign.cli as cli

    assert cli.main(["toy", "measure", "--seeds", "1", "--steps", "2", "--guidance", "1.5",
                     "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "measure.json").read_text())
    assert result["settings"] == {"num_inference_steps": 2, "guidance_scale": 1.5, "seeds_per_prompt": 1}
    assert result["cases"] == 65
