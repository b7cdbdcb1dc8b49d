"""Data parallel on CPU: two gloo ranks with half the batch each end with the same weights as one process with
the whole batch (same global batch). KTO also checks that its reference point z0 is reduced across the ranks
(a per-rank z0 would differ from the global-batch one)."""

import json
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


@pytest.mark.parametrize("method, extra", [("dpo", []), ("kto", []),
                                           ("tdpo", ["--lora.text_encoder", "true"])],  # its adapter: outside DDP
                         ids=["dpo", "kto", "tdpo-text-encoder-lora"])
def test_two_ranks_train_the_same_weights_as_one_process(tmp_path, method, extra):
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffalign.train",
          "--method", method, "--train.batch_size", "2", *ARGS, *extra], tmp_path / "two")
    _run([sys.executable, "-m", "diffalign.train", "--method", method, "--train.batch_size", "4", *ARGS, *extra],
         tmp_path / "one")
    one, two = load_file(tmp_path / "one" / LORA_FILE), load_file(tmp_path / "two" / LORA_FILE)
    # The logged metrics are the mean over both ranks' micro-batches, i.e. the whole batch's (as one process's).
    logged = {run: json.loads((tmp_path / run / "summary.json").read_text())["final_metrics"] for run in ("one", "two")}
    for key in ("loss", "implicit_acc"):
        assert logged["two"][key] == pytest.approx(logged["one"][key], rel=1e-3), key
    assert one.keys() == two.keys() and any(v.abs().max() > 1e-3 for k, v in one.items() if "lora.up" in k or "lora_B" in k)
    for key in one:
        if extra:  # the text encoder's adapter is averaged by hand, as PPD's (see the tolerance note there), and
            # its float-order noise reaches the UNet's adapter through the text states. Without the averaging
            # the text encoder's entries differ by far more (checked: the first key fails).
            assert (two[key] - one[key]).abs().max() < 5e-4, key
            assert ((two[key] - one[key]).abs() > 1e-5).float().mean() < 0.01, key
        else:
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)


def test_two_ranks_fully_fine_tune_the_unet_and_text_encoder_as_one_process(tmp_path):
    """train.text_encoder: the UNet's gradients are averaged by DDP, the text encoder's by hand. Adam turns each
    gradient into a step of about lr per weight whatever its size, so the check is on the change each run made:
    the two-rank change equals the one-process change up to float-order noise (without the averaging, rank 0's
    text encoder follows its own half of the batch and the relative difference is far larger)."""
    full = ["--lora.enabled", "false", "--train.text_encoder", "true", "--train.lr", "1e-4"]
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffalign.train",
          "--method", "tdpo", "--train.batch_size", "2", *ARGS, *full], tmp_path / "two")
    _run([sys.executable, "-m", "diffalign.train", "--method", "tdpo", "--train.batch_size", "4", *ARGS, *full],
         tmp_path / "one")
    for part, file in (("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        start = load_file(REPO_ROOT / "assets/toy-sd" / part / file)
        one, two = (load_file(tmp_path / run / part / file) for run in ("one", "two"))
        change_one = torch.cat([(one[k] - start[k]).flatten() for k in start])
        change_two = torch.cat([(two[k] - start[k]).flatten() for k in start])
        assert change_one.norm() > 0, part
        assert (change_two - change_one).norm() / change_one.norm() < 0.05, part


@pytest.mark.parametrize("extra", [[], ["--lora.text_encoder", "true"],
                                   ["--lora.enabled", "false", "--train.text_encoder", "true",
                                    "--train.empty_prompt_anchor", "10"]],
                         ids=["unet-lora", "text-encoder-lora", "full-text-encoder-anchored"])
def test_a_rank_whose_micro_batch_is_all_bad_samples_does_not_hang_the_others(tmp_path, extra):
    """KTO reduces z0 across ranks inside its loss. Rank 1's first micro-batch is made all bad (skipped), so it
    has no loss to compute; it must still join that reduction (with weight 0) or rank 0 waits forever. With a
    trained text encoder (a LoRA, or full weights with the empty-prompt anchor) it must also join the by-hand
    averaging of the encoder's gradients."""
    from datasets import load_dataset

    from diffalign.data.sampler import EpochShuffle

    table = load_dataset("parquet", data_files=str(REPO_ROOT / "assets/toy-data/feedback_bold.parquet"),
                         split="train").select(range(16))
    # 2 ranks x 2 per micro-batch: accelerate gives rank r the sampler's batches r, r + 2, ...
    order = list(EpochShuffle(16, seed=0, multiple=4))
    bad = set(order[2:4])  # rank 1's first micro-batch
    table = table.map(lambda row, i: {"image": b"not an image" if i in bad else row["image"]}, with_indices=True)
    source = tmp_path / "feedback.parquet"
    table.to_parquet(str(source))
    env = dict(os.environ, ACCELERATE_USE_CPU="true", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffalign.train",
               "--method", "kto", "--train.batch_size", "2", "--data.source", str(source),
               "--data.on_bad_sample", "skip", "--objective.desirable_ratio", "null", *ARGS, *extra,
               "--output_dir", str(tmp_path / "out")]
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the ranks hung: the rank with an empty micro-batch did not join the cross-rank reductions")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 bad samples skipped" in done.stdout


def test_two_ranks_train_the_same_ppd_user_adapter_as_one_process(tmp_path):
    """PPD's adapter lives outside DDP: it starts from rank 0's weights and its gradients are averaged by hand."""
    args = [*ARGS, "--data.max_pairs", "64"]
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffalign.train",
          "--method", "ppd", "--train.batch_size", "2", *args], tmp_path / "two")
    _run([sys.executable, "-m", "diffalign.train", "--method", "ppd", "--train.batch_size", "4", *args],
         tmp_path / "one")
    one, two = (load_file(tmp_path / run / "user_adapter.safetensors") for run in ("one", "two"))
    assert one.keys() == two.keys() and any(v.abs().max() > 1e-4 for k, v in one.items() if "to_v" in k)
    # Adam divides by the gradients' scale, so on near-zero gradients float-order noise shows: about 1 entry in
    # 10^4 differs by up to 6e-5. Without the averaging a quarter of the entries differ, by up to 4.5e-3.
    for key in one:
        assert (two[key] - one[key]).abs().max() < 5e-4, key
        assert ((two[key] - one[key]).abs() > 1e-5).float().mean() < 0.01, key


def test_two_ranks_train_the_same_soft_tokens_as_one_process_accumulating_their_micro_batches(tmp_path):
    """SoftREPA's tokens live outside DDP. Each rank contrasts its own micro-batch (its images x its captions, at
    its own shared t and noise), as the authors' DDP script; their gradients are averaged. That is one process
    accumulating the same micro-batches (accelerate gives rank r the sampler's batches r, r + 2, ...)."""
    args = [*ARGS, "--objective.token_init", "normal"]  # distinct tokens, so every row of the result is informative
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffalign.train",
          "--method", "softrepa", "--train.batch_size", "2", *args], tmp_path / "two")
    _run([sys.executable, "-m", "diffalign.train", "--method", "softrepa", "--train.batch_size", "2",
          "--train.grad_accum", "2", *args], tmp_path / "one")
    one, two = (load_file(tmp_path / run / "soft_tokens.safetensors") for run in ("one", "two"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    logged = {run: json.loads((tmp_path / run / "summary.json").read_text())["final_metrics"] for run in ("one", "two")}
    assert logged["two"]["loss"] == pytest.approx(logged["one"]["loss"], rel=1e-3)
    assert logged["one"]["grad_norm"] > 0  # the tokens did get a gradient


def test_two_ranks_stream_their_own_rows_and_resume_to_the_same_weights(tmp_path):
    """data.streaming with 2 ranks: each rank saves its reader's cursor (data_0.json, data_1.json); resumed from
    the checkpoint after update 1, both ranks continue where they stopped and reach the uninterrupted weights."""
    from diffalign.checkpointing import complete_checkpoints

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffalign.train",
              "--method", "dpo", "--train.batch_size", "2", "--train.max_steps", "3", "--eval.enabled", "false",
              "--train.report_to", "none", "--train.warmup_steps", "0", "--data.streaming", "true",
              "--data.shuffle_buffer", "5"]
    _run(launch + ["--train.checkpoint_every", "1", "--train.checkpoints_total_limit", "0"], tmp_path / "straight")
    first = complete_checkpoints(tmp_path / "straight")[0]
    assert (first / "data_0.json").is_file() and (first / "data_1.json").is_file()
    cursors = [json.loads((first / f"data_{r}.json").read_text())["cursors"] for r in range(2)]
    assert list(cursors[0]) == ["0"] and list(cursors[1]) == ["1"]  # rank r reads stream r
    _run(launch + ["--resume", str(first)], tmp_path / "resumed")
    a, b = load_file(tmp_path / "straight" / LORA_FILE), load_file(tmp_path / "resumed" / LORA_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
