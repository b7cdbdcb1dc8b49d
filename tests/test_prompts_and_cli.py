"""Prompt splits never overlap; the command line answers --help and refuses to overwrite user files."""

import subprocess
import sys

import pytest

from diffalign.paths import refuse_overwrite
from diffalign.toy.prompts import prompt_set


@pytest.mark.parametrize("name", ["persona", "attributes", "long"])
def test_train_and_heldout_prompts_are_disjoint(name):
    train, heldout = set(prompt_set(name, "train")), set(prompt_set(name, "heldout"))
    assert train and heldout and not train & heldout


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
