"""Configs: every shipped YAML validates; bad keys, types and combinations fail before any model loads."""

from pathlib import Path

import pytest

from diffalign.config import ConfigError, load_config
from diffalign.paths import REPO_ROOT

# training configs: not accelerate's launchers, nor diffalign label / iterate's (tests/test_labeling.py loads those)
SHIPPED = sorted(p for p in (REPO_ROOT / "configs").glob("*/*.yaml")
                 if p.parent.name not in ("accelerate", "label", "iterate"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_shipped_configs_validate(path: Path):
    from diffalign.objectives import REGISTRY

    cfg = load_config(path)
    # named for the method it runs (the toy flow base's defaults: flow_<method>)
    assert cfg.method in REGISTRY and path.stem.removeprefix("flow_").split("_")[0] == cfg.method


def test_every_method_has_a_toy_default_and_an_sd15_config():
    from diffalign.objectives import REGISTRY

    for method in REGISTRY:
        assert (REPO_ROOT / "configs/toy" / f"{method}.yaml").is_file(), method
        assert list((REPO_ROOT / "configs/sd15").glob(f"{method}_*.yaml")), method


def test_method_options_are_validated_by_their_owner():
    with pytest.raises(ConfigError, match=r"objective \(kto\): desirable_ratio must be in"):
        load_config(REPO_ROOT / "configs/toy/kto.yaml", [("objective.desirable_ratio", "1.5")])
    with pytest.raises(ConfigError, match=r"objective \(tdpo\): perturb_axes: unknown"):
        load_config(REPO_ROOT / "configs/toy/tdpo.yaml", [("objective.perturb_axes", "[colour]")])
    with pytest.raises(ConfigError, match="unknown KTO utility"):
        load_config(REPO_ROOT / "configs/toy/kto.yaml", [("objective.utility", "convex")])


def test_accelerate_examples_are_accelerate_configs():
    import yaml

    for path in (REPO_ROOT / "configs/accelerate").glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text())
        assert cfg["distributed_type"] in ("MULTI_GPU", "DEEPSPEED", "FSDP") and cfg["num_processes"] >= 1, path


def test_dotted_overrides_are_typed():
    cfg = load_config(REPO_ROOT / "configs/toy/dpo.yaml", [("train.lr", "1e-5"), ("lora.rank", "16"),
                                                           ("objective.link", "hinge")])
    assert cfg.train.lr == 1e-5 and cfg.lora.rank == 16 and cfg.objective["link"] == "hinge"


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'train.learning_rate'.*valid keys under train\..*lr"):
        load_config(overrides=[("train.learning_rate", "1e-4")])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"train.batch_size: expected int, got str 'eight'"):
        load_config(overrides=[("train.batch_size", "eight")])


def test_impossible_objective_options_are_rejected():
    # mapo is reference-free: beta (a reference-margin scale) is not its option; the error lists its own.
    with pytest.raises(ConfigError, match=r"method mapo has no option\(s\) beta \(objective.beta belongs to "
                                          r"dpo, inpo, kto, ppd, tdpo, tkto\); its options: lam, gamma, temperature"):
        load_config(overrides=[("method", "mapo"), ("objective.beta", "5000")])
    with pytest.raises(ConfigError, match="objective.inversion_model belongs to inpo"):
        load_config(overrides=[("method", "dpo"), ("objective.inversion_model", "reference")])
    with pytest.raises(ConfigError, match="unknown 'nope'"):
        load_config(overrides=[("method", "nope")])
    with pytest.raises(ConfigError, match="objective \\(dpo\\): .*link"):
        load_config(overrides=[("objective.link", "tanh")])
    assert load_config(overrides=[("method", "tdpo"), ("objective.link", "ipo")]).objective["link"] == "ipo"


@pytest.mark.parametrize("overrides, message", [
    ([("lora.enabled", "false"), ("lora.rank", "16")], "lora.rank is set but full fine-tuning"),
    ([("lora.enabled", "false"), ("lora.target_modules", "[to_q]")], "lora.target_modules is set but full"),
    ([("method", "kto"), ("data.drop_ties", "false")], "data.drop_ties is set but method kto does not use it: it "
                                                       r"applies only to image-pair methods \(dpo, inpo, mapo, ppd\)"),
    ([("train.checkpoints_total_limit", "-1")], r"train.checkpoints_total_limit: expected an integer >= 0"),
    ([("train.optimizer", "adafactor"), ("train.fused_adamw", "true")],
     "train.fused_adamw applies to train.optimizer adamw only; got 'adafactor'"),
])
def test_settings_the_method_or_mode_would_ignore_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_fused_adamw_builds_torchs_fused_kernel_and_the_default_does_not():
    import torch

    from diffalign.training.optim import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    assert make_optimizer(load_config(overrides=[("train.fused_adamw", "true")]), params).defaults["fused"] is True
    assert not make_optimizer(load_config(), params).defaults["fused"]


def test_a_shipped_config_switched_to_another_mode_on_the_command_line_only_warns(tmp_path):
    with pytest.warns(UserWarning, match="lora.rank is set but full fine-tuning .* ignored"):
        cfg = load_config(REPO_ROOT / "configs/toy/dpo.yaml", [("lora.enabled", "false")])
    assert cfg.lora.enabled is False
    written = tmp_path / "full.yaml"
    written.write_text("lora:\n  enabled: false\n  rank: 16\n")  # one file asking for both: an error
    with pytest.raises(ConfigError, match="lora.rank is set but full fine-tuning"):
        load_config(written)


def test_settings_are_accepted_where_they_apply():
    assert load_config(overrides=[("lora.enabled", "false")]).lora.enabled is False
    kto = load_config(overrides=[("method", "kto"), ("objective.desirable_ratio", "0.5")])
    assert kto.objective["desirable_ratio"] == 0.5
    tkto = load_config(overrides=[("method", "tkto"), ("objective.perturb_axes", "[spatial]")])
    assert tkto.objective["perturb_axes"] == ["spatial"]


@pytest.mark.parametrize("old, new, method", [("data.desirable_ratio", "objective.desirable_ratio", "kto"),
                                              ("data.perturb_axes", "objective.perturb_axes", "tdpo"),
                                              ("data.perturber_model", "objective.perturber_model", "tkto"),
                                              ("eval.user_scale", "objective.comparison_user_scale", "ppd")])
def test_a_key_that_moved_into_a_methods_options_fails_naming_its_new_place(old, new, method):
    with pytest.raises(ConfigError, match=f"{old} moved to {new}"):
        load_config(REPO_ROOT / f"configs/toy/{method}.yaml", [(old, "0.5")])


def test_a_method_only_option_is_unknown_to_other_methods():
    with pytest.raises(ConfigError, match=r"method dpo has no option\(s\) desirable_ratio \(objective.desirable_ratio "
                                          r"belongs to kto\)"):
        load_config(REPO_ROOT / "configs/toy/dpo.yaml", [("objective.desirable_ratio", "0.5")])


def test_every_objective_documents_every_option():
    import dataclasses

    from diffalign.config_docs import field_comments
    from diffalign.objectives import REGISTRY

    for name, cls in REGISTRY.items():
        documented = {}
        for klass in cls.Options.__mro__:
            if dataclasses.is_dataclass(klass):
                documented.update({k: v for k, v in field_comments(klass).items() if v})
        missing = [f.name for f in dataclasses.fields(cls.Options) if f.name not in documented]
        assert not missing, f"{name}: undocumented options {missing}"
        assert cls.summary, name


def test_print_config_documents_every_field_and_loads_back(tmp_path, capsys):
    from diffalign.train import main

    assert main(["--method", "kto", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "  desirable_ratio: 0.8  # the sampler's share of desirable draws" in printed
    assert "  lambda_desirable: 1.0  # λ_D: weight of the desirable rows' loss (default)" in printed
    assert "  # drop_ties: true" in printed  # KTO does not read it: commented out, so the file loads back
    (tmp_path / "kto.yaml").write_text(printed)
    reloaded, shipped = load_config(tmp_path / "kto.yaml"), load_config(REPO_ROOT / "configs/toy/kto.yaml")
    assert reloaded.train == shipped.train and reloaded.data == shipped.data


def test_help_lists_every_method_with_one_line(capsys):
    from diffalign.objectives import REGISTRY
    from diffalign.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = capsys.readouterr().out
    for name, cls in REGISTRY.items():
        assert f"  {name} " in shown and cls.summary in shown.replace("\n", " ")


@pytest.mark.parametrize("value", ["[500]", "[800, 200]", "[-1, 10]", "[0.5, 900]"])
def test_a_timestep_range_must_be_an_increasing_pair_of_integers(value):
    with pytest.raises(ConfigError, match="train.timestep_range: expected \\[low, high\\)"):
        load_config(overrides=[("train.timestep_range", value)])
    assert load_config(overrides=[("train.timestep_range", "[500, 1000]")]).train.timestep_range == [500, 1000]
    with pytest.raises(ConfigError, match="train.timestep_range is set but method longalign does not use it"):
        load_config(REPO_ROOT / "configs/toy/longalign.yaml", [("train.timestep_range", "[500, 1000]")])


def test_embedded_asset_paths_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where assets/toy-sd does not exist
    cfg = load_config(REPO_ROOT / "configs/toy/dpo.yaml")
    assert Path(cfg.model.pretrained) == REPO_ROOT / "assets/toy-sd" and Path(cfg.data.source).is_file()
    (tmp_path / "assets" / "toy-sd").mkdir(parents=True)  # a folder of that name here wins
    assert load_config(REPO_ROOT / "configs/toy/dpo.yaml").model.pretrained == "assets/toy-sd"


# Every numeric option is checked with its range in the message, before any model loads (issue: `--train.lr inf`
# saved an all-NaN LoRA, `--objective.beta -1000` trained towards the rejected images, `beta high` died at step 1).
BAD_NUMBERS = [
    ("train.lr", "inf", "train.lr: expected a finite number > 0, got inf"),
    ("train.lr", "-1e-4", "train.lr: expected a finite number > 0"),
    ("train.lr", "nan", "train.lr: expected a finite number > 0"),
    ("train.adam_beta2", "1", "train.adam_beta2: expected a number in [0, 1)"),
    ("train.adam_eps", "0", "train.adam_eps: expected a finite number > 0"),
    ("train.weight_decay", "-0.1", "train.weight_decay: expected a finite number >= 0"),
    ("train.max_grad_norm", "inf", "train.max_grad_norm: expected a finite number >= 0"),
    ("train.warmup_steps", "-1", "train.warmup_steps: expected an integer >= 0"),
    ("train.log_every", "0", "train.log_every: expected an integer >= 1"),
    ("data.resolution", "-32", "data.resolution: expected a positive multiple of 8, got -32"),
    ("data.resolution", "30", "data.resolution: expected a positive multiple of 8"),
    ("data.max_pairs", "0", "data.max_pairs: expected an integer >= 1"),
    ("lora.alpha", "0", "lora.alpha: expected a finite number > 0"),
    ("eval.seeds_per_prompt", "0", "eval.seeds_per_prompt: expected an integer >= 1"),
    ("eval.num_inference_steps", "0", "eval.num_inference_steps: expected an integer >= 1"),
    ("eval.validation_resolution", "36", "eval.validation_resolution: expected a positive multiple of 8, got 36"),
    ("eval.validation_resolution", "0", "eval.validation_resolution: expected a positive multiple of 8"),
    ("eval.validation_steps", "0", "eval.validation_steps: expected an integer >= 1"),
    ("objective.beta", "-1000", "beta must be a finite number > 0"),
    ("objective.beta", "0", "beta must be a finite number > 0 (0 only with sft_weight > 0)"),
    ("objective.beta", "high", "objective.beta: expected float, got str 'high'"),
    ("objective.beta", "inf", "beta must be a finite number > 0"),
]


@pytest.mark.parametrize("key, value, message", BAD_NUMBERS, ids=[f"{k}={v}" for k, v, _ in BAD_NUMBERS])
def test_numeric_options_out_of_range_fail_naming_the_range(key, value, message, monkeypatch, capsys):
    import diffalign.train as train_module

    with pytest.raises(ConfigError) as err:
        load_config(REPO_ROOT / "configs/toy/dpo.yaml", [(key, value)])
    assert message in str(err.value)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(train_module, "load_tokenizer", no_model)
    monkeypatch.setattr(train_module, "load_sd_components", no_model)
    assert train_module.main(["--method", "dpo", f"--{key}", value]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("method, key, value", [("kto", "objective.beta", "-5"), ("mapo", "objective.lam", "nan"),
                                                ("mapo", "objective.temperature", "-1")])
def test_other_objectives_refuse_signs_that_invert_them(method, key, value):
    with pytest.raises(ConfigError, match="finite"):
        load_config(REPO_ROOT / f"configs/toy/{method}.yaml", [(key, value)])


def test_beta_zero_stays_the_documented_sft_control():
    cfg = load_config(REPO_ROOT / "configs/toy/dpo.yaml", [("objective.beta", "0"), ("objective.sft_weight", "1")])
    assert cfg.objective["beta"] == 0.0
