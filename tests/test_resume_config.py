"""Output folders and resume trust: --overwrite empties a run folder (saying what) or refuses; a resume continues
only the run its checkpoint belongs to, unless a change is accepted by name, and then the change really applies."""

import json

import pytest
import torch

from diffalign.checkpointing import complete_checkpoints
from diffalign.paths import REPO_ROOT
from diffalign.train import main

TINY = ["--config", str(REPO_ROOT / "configs/toy/dpo.yaml"), "--train.batch_size", "2", "--data.max_pairs", "8",
        "--train.warmup_steps", "0", "--eval.enabled", "false", "--train.report_to", "none"]


def _run(out, *extra):
    return main([*TINY, "--output_dir", str(out), *extra])


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A 2-step run at lr 1e-3 with a checkpoint after each step."""
    out = tmp_path_factory.mktemp("run")
    assert _run(out, "--train.max_steps", "2", "--train.checkpoint_every", "1", "--train.lr", "1e-3",
                "--train.checkpoints_total_limit", "0") == 0
    return out


def test_overwrite_empties_the_old_run_so_resume_cannot_continue_it(checkpointed, tmp_path, capsys):
    out = tmp_path / "reused"
    assert _run(out, "--train.max_steps", "1", "--train.checkpoint_every", "1") == 0
    capsys.readouterr()
    # A new run with other settings and --overwrite: the old checkpoints and LoRA go before it starts.
    assert _run(out, "--overwrite", "--train.max_steps", "1", "--train.lr", "5e-4") == 0
    err = capsys.readouterr().err
    assert "removing" in err and "checkpoints/" in err and "pytorch_lora_weights.safetensors" in err
    assert not complete_checkpoints(out)  # this run saved none: nothing of the old one is left to resume
    assert _run(out, "--resume", "latest", "--train.max_steps", "1", "--train.lr", "5e-4") == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 5e-4


def test_overwrite_refuses_a_folder_diffalign_did_not_write(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    assert _run(tmp_path, "--overwrite", "--train.max_steps", "1") == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "precious"
    from diffalign.paths import clear_run_folder

    with pytest.raises(FileExistsError, match="diffalign run folder"):
        clear_run_folder(tmp_path)


def test_resume_and_overwrite_together_are_refused(checkpointed, capsys):
    assert _run(checkpointed, "--resume", "latest", "--overwrite") == 2
    assert "pass one of them" in capsys.readouterr().err
    assert complete_checkpoints(checkpointed)  # nothing was removed


@pytest.mark.parametrize("change, key", [(["--train.lr", "2e-3"], "train.lr"),
                                         (["--objective.beta", "500"], "objective.beta"),
                                         (["--train.seed", "7"], "train.seed"),
                                         (["--data.max_pairs", "6"], "data.max_pairs")])
def test_a_changed_setting_is_refused_on_resume_naming_it(checkpointed, change, key, capsys):
    first = complete_checkpoints(checkpointed)[0]
    assert _run(checkpointed, "--resume", str(first), "--train.max_steps", "2", *change) == 2
    err = capsys.readouterr().err
    assert key in err and f"--resume-accept {key}" in err and "Traceback" not in err


def test_another_lora_rank_is_a_different_run_not_a_broken_checkpoint(checkpointed, capsys):
    first = complete_checkpoints(checkpointed)[0]
    assert _run(checkpointed, "--resume", str(first), "--lora.rank", "4", "--resume-accept", "lora.rank") == 2
    err = capsys.readouterr().err
    assert "different run" in err and "lora.rank" in err and "broken" not in err


def test_an_accepted_lr_really_applies_and_is_recorded(checkpointed, tmp_path, monkeypatch, capsys):
    seen = []
    original = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):  # the lr the real optimizer steps with
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    first = complete_checkpoints(checkpointed)[0]
    out = tmp_path / "continued"
    assert _run(out, "--resume", str(first), "--train.max_steps", "2", "--train.lr", "2e-3",
                "--resume-accept", "train.lr") == 0
    assert seen == [2e-3]  # one update left after step 1, at the new rate
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] == {"from_step": 1, "accepted_changes": {"train.lr": [1e-3, 2e-3]}}
    assert "`train.lr` 0.001 -> 0.002" in (out / "README.md").read_text()
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 2e-3


def test_a_default_written_out_or_another_working_folder_is_the_same_run(checkpointed, tmp_path, monkeypatch):
    """The checkpoint records the objective's resolved options and absolute local paths: writing a default out
    (as --print-config does) or resuming from another folder (assets/toy-sd then resolves elsewhere) is no change."""
    first = complete_checkpoints(checkpointed)[0]
    monkeypatch.chdir(tmp_path)  # the toy config's relative asset paths now resolve against the repository
    assert _run(tmp_path / "elsewhere", "--resume", str(first), "--train.max_steps", "2", "--train.lr", "1e-3",
                "--objective.epsilon", "0.0") == 0


@pytest.mark.parametrize("key, value", [("train.grad_accum", "2"), ("train.batch_size", "4")])
def test_the_micro_batch_bookkeeping_cannot_change_on_resume(checkpointed, key, value, capsys):
    first = complete_checkpoints(checkpointed)[0]
    assert _run(checkpointed, "--resume", str(first), "--train.lr", "1e-3", f"--{key}", value,
                "--resume-accept", key) == 2
    assert f"{key} cannot change on resume" in capsys.readouterr().err


def test_accepting_a_setting_that_did_not_change_is_an_error(checkpointed, capsys):
    first = complete_checkpoints(checkpointed)[0]
    assert _run(checkpointed, "--resume", str(first), "--train.max_steps", "2", "--train.lr", "1e-3",
                "--resume-accept", "train.lr") == 2
    assert "not a difference" in capsys.readouterr().err


def test_a_full_disk_fails_in_one_line_and_the_next_resume_works(tmp_path, monkeypatch, capsys):
    import errno

    from diffalign import checkpoint_state

    original, saves = checkpoint_state.save_parts, {"n": 0}

    def filling_disk(folder, parts):
        saves["n"] += 1
        if saves["n"] == 2:  # the second save hits a full disk halfway
            (folder / "unet_lora_adapter.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "unet_lora_adapter.safetensors"))
        return original(folder, parts)

    monkeypatch.setattr(checkpoint_state, "save_parts", filling_disk)
    out = tmp_path / "run"
    assert _run(out, "--train.max_steps", "3", "--train.checkpoint_every", "1") == 2
    err = capsys.readouterr().err
    assert "could not write checkpoint" in err and "No space left on device" in err and "Traceback" not in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint_0"]  # the partial save is gone
    monkeypatch.setattr(checkpoint_state, "save_parts", original)  # space freed
    assert _run(out, "--train.max_steps", "3", "--train.checkpoint_every", "1", "--resume", "latest") == 0
    assert json.loads((out / "summary.json").read_text())["resumed"]["from_step"] == 1


def test_a_read_only_output_folder_fails_in_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import pathlib

    original = pathlib.Path.mkdir
    out = tmp_path / "mounted-read-only"

    def read_only(self, *args, **kwargs):
        if self == out or out in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    assert _run(out, "--train.max_steps", "1") == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and str(out) in err and "Traceback" not in err


def test_a_field_added_since_the_checkpoint_at_its_default_is_no_change():
    """A checkpoint of an earlier version lacks fields added since (the flow models' train.timestep_sampling...):
    at their defaults they change nothing that run did; set otherwise they are a change like any other."""
    import dataclasses

    from diffalign.config import Config, ConfigError
    from diffalign.resume_check import check_resume_config

    now = dataclasses.asdict(Config())
    saved = {**now, "train": {k: v for k, v in now["train"].items() if k != "timestep_sampling"}}
    assert check_resume_config(saved, now, set(), "ckpt") == {}
    other = {**now, "train": {**now["train"], "timestep_sampling": "uniform"}}
    with pytest.raises(ConfigError, match="train.timestep_sampling: None in the checkpoint, 'uniform' now"):
        check_resume_config(saved, other, set(), "ckpt")


def test_an_objective_option_added_since_the_checkpoint_is_compared_as_what_that_run_used():
    """Checkpoints from before objective.inversion / reference_point_rule / segmenter ran diffalign's behaviour:
    KTO's new default is that, so it resumes; InPO's default is now the authors' grid, a change to accept."""
    from diffalign.config import ConfigError
    from diffalign.resume_check import check_resume_config

    kto_now = {"method": "kto", "objective": {"beta": 100.0, "reference_point_rule": "diffalign"}}
    assert check_resume_config({"method": "kto", "objective": {"beta": 100.0}}, kto_now, set(), "ckpt") == {}
    inpo_now = {"method": "inpo", "objective": {"beta": 1000.0, "inversion": "authors"}}
    with pytest.raises(ConfigError, match="objective.inversion: 'diffalign' in the checkpoint, 'authors' now"):
        check_resume_config({"method": "inpo", "objective": {"beta": 1000.0}}, inpo_now, set(), "ckpt")


def test_an_old_longalign_checkpoint_resumes_with_the_default_reward_processor():
    """Checkpoints from before objective.reward_processor loaded the backbone's default processor, which null still
    means; naming a folder is a change to accept (it may preprocess differently)."""
    import dataclasses

    from diffalign.config import ConfigError
    from diffalign.objectives import get_objective
    from diffalign.resume_check import check_resume_config

    now = {"method": "longalign", "objective": dataclasses.asdict(get_objective("longalign").options)}
    saved = {"method": "longalign", "objective": {k: v for k, v in now["objective"].items() if k != "reward_processor"}}
    assert check_resume_config(saved, now, set(), "ckpt") == {}
    local = {**now, "objective": {**now["objective"], "reward_processor": "/models/pickscore-processor"}}
    with pytest.raises(ConfigError, match="objective.reward_processor: None in the checkpoint, '/models/pickscore"):
        check_resume_config(saved, local, set(), "ckpt")


def test_an_old_softrepa_checkpoint_resumes_and_the_token_shape_cannot_change():
    """Checkpoints from before objective.transformer_blocks (SoftREPA's SD3 blocks) ran with its default; the
    options that shape the tokens ([K, m, J] and the bucket table) are another set of weights, accepted or not."""
    import dataclasses

    from diffalign.config import ConfigError
    from diffalign.objectives import get_objective
    from diffalign.resume_check import check_resume_config

    now = {"method": "softrepa", "objective": dataclasses.asdict(get_objective("softrepa").options)}
    saved = {"method": "softrepa", "objective": {k: v for k, v in now["objective"].items()
                                                 if k != "transformer_blocks"}}
    assert check_resume_config(saved, now, set(), "ckpt") == {}
    for key, value in (("num_tokens", 8), ("timestep_buckets", 100), ("transformer_blocks", 2)):
        changed = {**now, "objective": {**now["objective"], key: value}}
        with pytest.raises(ConfigError, match=f"objective.{key} cannot change on resume"):
            check_resume_config(now, changed, {f"objective.{key}"}, "ckpt")
