"""`diffalign label`: pairs and feedback chosen from known judgements, the MLLM answer parser and position-bias
bookkeeping, a tiny random image-text-to-text model through the MLLM path, and a killed job continued without a
duplicate or a lost row."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

import diffalign.toy.plugin  # noqa: F401  (the toy judge and prompt sets, as the label command registers them)
from diffalign.config import ConfigError
from diffalign.labeling.annotators import _standardised
from diffalign.labeling.config import load_label_config
from diffalign.labeling.mllm import MLLMJudge, parse_choice
from diffalign.labeling.selection import (SelectionRule, pairwise_judgement, pointwise_judgement, select_feedback,
                                          select_pairs)
from diffalign.paths import REPO_ROOT

SCORES = np.array([0.2, 0.9, 0.5, 0.15])


def test_best_worst_pairs_the_top_and_bottom_candidate_with_the_first_drawn_as_jpg_0():
    gap, standing = pointwise_judgement(SCORES)
    assert select_pairs(gap, standing, SelectionRule()) == [(1, 3, 1.0)]  # 0.9 vs 0.15: candidate 1 is jpg_0
    assert select_pairs(*pointwise_judgement(SCORES[::-1]), SelectionRule()) == [(0, 2, 0.0)]  # jpg_1 preferred
    # gap 0.75: a tie under a threshold of 0.8, left out between threshold 0.5 and margin 0.8
    assert select_pairs(gap, standing, SelectionRule(margin=0.8, tie_threshold=0.8)) == [(1, 3, 0.5)]
    assert select_pairs(gap, standing, SelectionRule(margin=0.8, tie_threshold=0.5)) == []


def test_margin_pairs_every_pair_by_its_gap():
    gap, standing = pointwise_judgement(SCORES)
    rule = SelectionRule(pairs="margin", margin=0.3, tie_threshold=0.06)
    # gaps: (0,1) -0.7, (0,2) -0.3 (not > 0.3: left out), (0,3) 0.05 (tie), (1,2) 0.4, (1,3) 0.75, (2,3) 0.35
    assert select_pairs(gap, standing, rule) == [(0, 1, 0.0), (0, 3, 0.5), (1, 2, 1.0), (1, 3, 1.0), (2, 3, 1.0)]


def test_feedback_takes_the_top_and_bottom_fraction_per_prompt():
    assert select_feedback(SCORES, SelectionRule(feedback_fraction=0.25)) == [(1, 1), (3, 0)]
    assert select_feedback(SCORES, SelectionRule(feedback_fraction=0.5)) == [(1, 1), (2, 1), (0, 0), (3, 0)]
    assert select_feedback(np.array([1.0, 1.0, 1.0]), SelectionRule(feedback_fraction=0.3)) == [(0, 1), (2, 0)]
    with pytest.raises(ValueError, match="do not fit"):  # round(0.5 x 3) = 2 desirable + 2 undesirable > 3
        select_feedback(np.array([1.0, 2.0, 3.0]), SelectionRule(feedback_fraction=0.5))


def test_selection_settings_are_checked():
    with pytest.raises(ValueError, match="tie_threshold must be in"):
        SelectionRule(margin=0.1, tie_threshold=0.2)
    with pytest.raises(ValueError, match="pairs: expected one of"):
        SelectionRule(pairs="all")


def test_several_scorers_are_standardised_within_the_prompt_before_weighting():
    pickscore_like, aesthetic_like = np.array([21.0, 22.0, 21.5]), np.array([5.0, 4.0, 6.0])
    z1 = (pickscore_like - pickscore_like.mean()) / pickscore_like.std()
    np.testing.assert_allclose(_standardised(pickscore_like), z1)
    np.testing.assert_allclose(_standardised(np.array([3.0, 3.0])), [0.0, 0.0])  # all equal: no say
    total = 1.0 * _standardised(pickscore_like) + 0.5 * _standardised(aesthetic_like)
    np.testing.assert_allclose(total, z1 + 0.5 * np.array([0.0, -1.0, 1.0]) / np.sqrt(2 / 3))


@pytest.mark.parametrize("answer, choice", [("Image 1", 1), ("image 2.", 2), ('"Image 2"', 2), (" 1 ", 1),
                                            ("Tie", 0), ("tie.", 0), ("Image one", 1), ("**Image 2**", 2),
                                            ("Image 1 and Image 2", None), ("I prefer image 1", None), ("", None),
                                            ("3", None), ("Image 12", None), ("both", None)])
def test_the_answer_parser_accepts_one_choice_alone(answer, choice):
    assert parse_choice(answer) == choice


class ScriptedJudge(MLLMJudge):
    """The judge's bookkeeping with a model replaced by rules over (which image is first, retry)."""

    def __init__(self, rule, criteria=("prompt-following", "aesthetics")):
        self.rule, self.criteria, self.asked = rule, list(criteria), []
        self.stats = {"questions": 0, "retries": 0, "unparseable": 0, "both_orders_named_an_image": 0,
                      "disagreements": 0}

    def ask(self, prompt, first, second, criterion, reminder=False):
        self.asked.append((first, second, criterion, reminder))
        return self.rule(first, second, reminder)


def test_both_orders_cancel_position_bias_and_unparseable_answers_become_counted_ties():
    consistent = ScriptedJudge(lambda first, second, reminder: "Image 1" if first == "A" else "Image 2")
    assert consistent.preference("p", "A", "B") == 1.0 and consistent.disagreement_rate() == 0.0
    assert [(f, s) for f, s, _, _ in consistent.asked] == [("A", "B"), ("B", "A")] * 2  # both orders, per criterion
    biased = ScriptedJudge(lambda first, second, reminder: "Image 1")  # always the first position
    assert biased.preference("p", "A", "B") == 0.0 and biased.disagreement_rate() == 1.0
    rambling = ScriptedJudge(lambda first, second, reminder: "Image 1" if reminder else "Well, hard to say")
    assert rambling.preference("p", "A", "B") == 0.0  # answered on the retry: A first then B first, cancels
    assert rambling.stats["retries"] == 4 and rambling.stats["unparseable"] == 0
    mute = ScriptedJudge(lambda first, second, reminder: "???")
    assert mute.preference("p", "A", "B") == 0.0
    assert mute.stats["unparseable"] == 4 and mute.stats["questions"] == 4 and mute.disagreement_rate() is None
    gap, standing = pairwise_judgement({(0, 1): 1.0, (0, 2): 0.5, (1, 2): -0.5}, 3)
    assert gap[1, 0] == -1.0 and standing.tolist() == [0.75, -0.75, 0.0]


def _label_config(tmp_path, **extra):
    overrides = [("max_prompts", "6"), ("prompt_repeats", "1"), ("num_inference_steps", "3"),
                 ("prompts_per_shard", "2"), ("out", str(tmp_path / "labels"))] + list(extra.items())
    return load_label_config(str(REPO_ROOT / "configs/label/toy_bold.yaml"), overrides)


def test_a_tiny_random_mllm_labels_pairs_end_to_end(tmp_path, tiny_vlm):
    from diffalign.labeling.run import label

    cfg = _label_config(tmp_path, **{"annotator.kind": "mllm", "annotator.model": tiny_vlm, "max_prompts": "2",
                                     "annotator.criteria": "[aesthetics]"})
    summary = label(cfg, progress=False)
    stats = summary["mllm"]
    assert stats["questions"] == 2 * 2  # 2 prompts x 1 pair x 1 criterion x 2 orders
    # a random model rarely says "Image 1": its answers are retried, then ties, all counted
    assert stats["retries"] >= stats["unparseable"] and summary["pairs"] == 2
    table = pq.read_table(tmp_path / "labels/pairs/train-00000-of-00001.parquet").to_pylist()
    assert table[0]["annotator"].startswith(f"mllm:{tiny_vlm}") and json.loads(table[0]["annotation"])["preference"]


def test_label_configs_are_checked_before_any_model_loads(tmp_path):
    with pytest.raises(ConfigError, match="annotator.kind: expected"):
        _label_config(tmp_path, **{"annotator.kind": "humans"})
    with pytest.raises(ConfigError, match="kind mllm needs an image-text-to-text model"):
        _label_config(tmp_path, **{"annotator.kind": "mllm"})
    with pytest.raises(ConfigError, match=r"selection.tie_threshold must be in \[0, margin\]"):
        _label_config(tmp_path, **{"selection.tie_threshold": "0.5"})
    with pytest.raises(ConfigError, match=r"annotator.scorers\[0\]: unknown key"):
        _label_config(tmp_path, **{"annotator.scorers": "[{name: toy, wieght: 2}]"})


def test_a_killed_job_continues_without_duplicating_or_losing_a_row(tmp_path):
    """Killed after its first shard, run again: one pair per prompt, each exactly as an uninterrupted run's."""
    args = [sys.executable, "-m", "diffalign.cli", "label", "--config", str(REPO_ROOT / "configs/label/toy_bold.yaml"),
            "--max_prompts", "8", "--prompt_repeats", "1", "--num_inference_steps", "3", "--prompts_per_shard", "2"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    killed = tmp_path / "killed"
    job = subprocess.Popen(args + ["--out", str(killed)], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    first = killed / "feedback/train-00000-of-00004.parquet"
    deadline = time.time() + 300
    while not first.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    job.send_signal(signal.SIGKILL)
    job.wait()
    done_before = sorted(p.name for p in (killed / "feedback").glob("*.parquet"))
    assert "train-00000-of-00004.parquet" in done_before and len(done_before) < 4  # stopped part way
    again = subprocess.run(args + ["--out", str(killed)], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["shards_resumed"] == len(done_before)
    straight = subprocess.run(args + ["--out", str(tmp_path / "straight")], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    for view in ("pairs", "feedback"):
        a = [pq.read_table(p).to_pylist() for p in sorted((killed / view).glob("*.parquet"))]
        b = [pq.read_table(p).to_pylist() for p in sorted((tmp_path / "straight" / view).glob("*.parquet"))]
        assert a == b, view
    pairs = [r["prompt_index"] for p in sorted((killed / "pairs").glob("*.parquet"))
             for r in pq.read_table(p).to_pylist()]
    assert pairs == list(range(8))  # best-worst: one pair per prompt, none twice, none lost
    assert not list((killed / "samples").rglob("*.png"))  # each shard's candidates went once it was written
    again_other = subprocess.run(args + ["--out", str(killed), "--candidates", "3"], cwd=REPO_ROOT, env=env,
                                 capture_output=True, text=True)
    assert again_other.returncode == 2 and "other settings (differing: candidates)" in again_other.stderr


def test_a_lora_can_start_from_an_exported_one_and_a_mismatch_is_named(tmp_path):
    """lora.init_from (online rounds continue the previous round's LoRA): the adapter starts with the exported
    weights, read back through diffusers' key names."""
    from diffusers import UNet2DConditionModel
    from peft.utils import get_peft_model_state_dict

    from diffalign.models.lora import attach_lora, load_lora_into, save_lora

    def toy_unet():
        return UNet2DConditionModel.from_pretrained(REPO_ROOT / "assets/toy-sd", subfolder="unet")

    trained = toy_unet()
    attach_lora(trained, 4, 4.0, ["to_q", "to_v"])
    torch_state = get_peft_model_state_dict(trained)
    for value in torch_state.values():
        value.data.normal_()  # as if trained: B no longer zero
    exported = save_lora(trained, tmp_path / "round0")
    fresh = toy_unet()
    attach_lora(fresh, 4, 4.0, ["to_q", "to_v"])
    load_lora_into(fresh, tmp_path / "round0")
    loaded = get_peft_model_state_dict(fresh)
    assert loaded.keys() == torch_state.keys()
    assert all(np.array_equal(loaded[k].numpy(), torch_state[k].numpy()) for k in loaded)
    other_rank = toy_unet()
    attach_lora(other_rank, 2, 2.0, ["to_q", "to_v"])
    with pytest.raises(ValueError, match=rf"lora.init_from {exported}: .*lora.rank differs"):
        load_lora_into(other_rank, exported)


def test_online_rounds_sample_with_the_previous_policy_continue_its_lora_and_resume(tmp_path):
    """Two tiny rounds: round 1 labels candidates of round 0's LoRA with new seeds and trains from that LoRA;
    run again, the finished rounds are kept, not redone."""
    from safetensors.torch import load_file

    args = [sys.executable, "-m", "diffalign.cli", "iterate", "--config",
            str(REPO_ROOT / "configs/iterate/toy_bold.yaml"), "--rounds", "2", "--label.max_prompts", "4",
            "--label.prompt_repeats", "1", "--label.num_inference_steps", "3", "--train.train.max_steps", "2",
            "--train.train.batch_size", "2", "--eval.seeds_per_prompt", "1", "--eval.num_inference_steps", "3",
            "--out", str(tmp_path / "rounds")]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)["rounds"]
    assert [r["round"] for r in rows] == [0, 1] and all(set(r["win_rate_vs_base"]) == {"toy/bold", "toy/fidelity"}
                                                        for r in rows)
    first, second = (json.loads((tmp_path / f"rounds/round_{r}/labels/config.json").read_text()) for r in (0, 1))
    round0_lora = tmp_path / "rounds/round_0/train/pytorch_lora_weights.safetensors"
    assert first["adapter"] is None and second["adapter"] == str(round0_lora)
    assert second["first_seed"] - first["first_seed"] == 100_000_000  # new candidates every round
    trained = json.loads((tmp_path / "rounds/round_1/train/config.json").read_text())
    assert trained["lora"]["init_from"] == str(round0_lora)
    assert trained["data"]["source"] == str(tmp_path / "rounds/round_1/labels/pairs")
    assert (tmp_path / "rounds/rounds.png").is_file()
    before = load_file(tmp_path / "rounds/round_1/train/pytorch_lora_weights.safetensors")
    again = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and json.loads(again.stdout)["rounds"] == rows
    after = load_file(tmp_path / "rounds/round_1/train/pytorch_lora_weights.safetensors")
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)  # kept, not retrained


def test_every_shipped_label_and_iterate_config_loads():
    from diffalign.labeling.iterate import load_iterate_config

    for path in sorted((REPO_ROOT / "configs/label").glob("*.yaml")):
        cfg = load_label_config(str(path))
        assert cfg.annotator.terms() or cfg.annotator.kind == "mllm", path
    for path in sorted((REPO_ROOT / "configs/iterate").glob("*.yaml")):
        cfg = load_iterate_config(str(path))
        load_label_config(str(REPO_ROOT / cfg.label_config))
