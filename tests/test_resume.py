"""Exact resume: a run stopped at any optimizer step (killed, or by a crash while saving) and resumed ends with
the same trainable weights as one that never stopped.

The setting puts checkpoints mid-epoch, on epoch boundaries and inside gradient accumulation's bookkeeping:
24 pairs, 4 per micro-batch x 2 micro-batches per update = 3 updates per epoch, 7 updates.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from diffalign import checkpoint_state
from diffalign.checkpointing import complete_checkpoints, incomplete_checkpoints
from diffalign.config import load_config
from diffalign.models.lora import LORA_FILE
from diffalign.paths import REPO_ROOT
from diffalign.train import train

SETTING = [("train.batch_size", "4"), ("train.grad_accum", "2"), ("data.max_pairs", "24"), ("train.max_steps", "7"),
           ("train.warmup_steps", "2"), ("train.lr_scheduler", "cosine"), ("eval.enabled", "false"),
           ("train.report_to", "none")]


def _cfg(out, extra=()):
    return load_config(REPO_ROOT / "configs/toy/dpo.yaml", SETTING + [("output_dir", str(out))] + list(extra))


def _assert_same_weights(a, b):
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    for k in wa:  # bit for bit: a resume restores every state exactly
        assert torch.equal(wb[k], wa[k]), k


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run, checkpointing after every update and keeping all of them."""
    out = tmp_path_factory.mktemp("straight")
    train(_cfg(out, [("train.checkpoint_every", "1"), ("train.checkpoints_total_limit", "0")]))
    return out


def test_resuming_from_the_checkpoint_of_any_step_reaches_the_same_weights(straight, tmp_path):
    checkpoints = complete_checkpoints(straight)
    assert len(checkpoints) == 7  # 0 = keep all
    assert (checkpoints[0] / "unet_lora_adapter.safetensors").is_file()
    assert not list(checkpoints[0].glob("model*.safetensors"))  # the adapter, not the frozen base UNet
    # After updates 1 (mid-epoch), 3 (epoch boundary), 5 (mid-epoch of the second epoch) and 6 (boundary).
    for step in (1, 3, 5, 6):
        summary = train(_cfg(tmp_path / f"from_{step}"), resume=str(checkpoints[step - 1]))
        assert summary["steps"] == 7
        _assert_same_weights(straight / LORA_FILE, tmp_path / f"from_{step}" / LORA_FILE)


def test_a_crash_while_saving_leaves_the_previous_checkpoint_as_latest(straight, tmp_path, monkeypatch):
    """The third save dies half-written (in the optimizer file, before the scheduler and the marker)."""
    original, saves = checkpoint_state.save_optimizer, {"n": 0}

    def dying_save_optimizer(path, optimizer):
        saves["n"] += 1
        if saves["n"] == 3:
            open(path, "wb").write(b"half")
            raise KeyboardInterrupt("killed while saving")
        return original(path, optimizer)

    monkeypatch.setattr(checkpoint_state, "save_optimizer", dying_save_optimizer)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        # total_limit 1: the only complete checkpoint must survive a save that never finished.
        train(_cfg(out, [("train.checkpoint_every", "2"), ("train.checkpoints_total_limit", "1")]))
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint_1"]  # saved at step 4
    assert [p.name for p in incomplete_checkpoints(out)] == [".incomplete-checkpoint_2"]
    monkeypatch.setattr(checkpoint_state, "save_optimizer", original)
    summary = train(_cfg(out, [("train.checkpoint_every", "2"), ("train.checkpoints_total_limit", "1")]),
                    resume="latest")
    assert summary["steps"] == 7
    assert not incomplete_checkpoints(out)  # cleaned up by the next complete save
    _assert_same_weights(straight / LORA_FILE, out / LORA_FILE)


def test_a_process_killed_mid_run_resumes_to_the_same_weights(straight, tmp_path):
    """A real SIGKILL of the training process wherever it is, then --resume latest."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "diffalign.train", "--config", str(REPO_ROOT / "configs/toy/dpo.yaml"),
               "--output_dir", str(out), "--train.checkpoint_every", "1",
               *[x for k, v in SETTING for x in (f"--{k}", v)]]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and len(complete_checkpoints(out)) < 3:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert not (out / LORA_FILE).exists() and len(complete_checkpoints(out)) >= 3
    summary = train(_cfg(out, [("train.checkpoint_every", "1")]), resume="latest")
    assert summary["steps"] == 7
    _assert_same_weights(straight / LORA_FILE, out / LORA_FILE)
