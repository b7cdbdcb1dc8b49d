"""Data parallel on CPU: two gloo ranks with half the batch each end with the same weights as one process with
the whole batch (same global batch). KTO also checks that its reference point z0 is reduced across the ranks
(a per-rank z0 would differ from the global-batch one)."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from diffalign.models.lora import LORA_FILE
from diffalign.paths import REPO_ROOT

ARGS = ["--train.max_steps", "2", "--data.max_pairs", "16", "--eval.enabled", "false", "--train.report_to", "none",
        "--train.warmup_steps", "0"]


def _run(command: list[str], out) -> None:
    env = dict(os.environ, ACCELERATE_USE_CPU="true", HF_HUB_OFFLINE="1")
    done = subprocess.run(command + ["--output_dir", str(out)], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_two_ranks_train_the_same_weights_as_one_process(tmp_path, method):
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffalign.train",
          "--method", method, "--train.batch_size", "2", *ARGS], tmp_path / "two")
    _run([sys.executable, "-m", "diffalign.train", "--method", method, "--train.batch_size", "4", *ARGS],
         tmp_path / "one")
    one, two = load_file(tmp_path / "one" / LORA_FILE), load_file(tmp_path / "two" / LORA_FILE)
    assert one.keys() == two.keys() and any(v.abs().max() > 1e-3 for k, v in one.items() if "lora.up" in k or "lora_B" in k)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
