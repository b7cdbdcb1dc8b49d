"""Configs: every shipped YAML validates; bad keys, types and combinations fail before any model loads."""

from pathlib import Path

import pytest

from diffalign.config import ConfigError, load_config
from diffalign.paths import REPO_ROOT

SHIPPED = sorted(p for p in (REPO_ROOT / "configs").glob("*/*.yaml") if p.parent.name != "accelerate")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_shipped_configs_validate(path: Path):
    from diffalign.objectives import REGISTRY

    cfg = load_config(path)
    assert cfg.method in REGISTRY and path.stem.split("_")[0] == cfg.method  # named for the method it runs


def test_every_method_has_a_toy_default_and_an_sd15_config():
    from diffalign.objectives import REGISTRY

    for method in REGISTRY:
        assert (REPO_ROOT / "configs/toy" / f"{method}.yaml").is_file(), method
        assert list((REPO_ROOT / "configs/sd15").glob(f"{method}_*.yaml")), method


def test_new_data_options_are_validated():
    with pytest.raises(ConfigError, match="data.desirable_ratio must be in"):
        load_config(REPO_ROOT / "configs/toy/kto.yaml", [("data.desirable_ratio", "1.5")])
    with pytest.raises(ConfigError, match="data.perturb_axes: unknown"):
        load_config(REPO_ROOT / "configs/toy/tdpo.yaml", [("data.perturb_axes", "[colour]")])
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
    with pytest.raises(ConfigError, match="objective \\(mapo\\)"):
        load_config(overrides=[("method", "mapo"), ("objective.beta", "5000")])
    with pytest.raises(ConfigError, match="unknown 'nope'"):
        load_config(overrides=[("method", "nope")])


def test_embedded_asset_paths_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where assets/toy-sd does not exist
    cfg = load_config(REPO_ROOT / "configs/toy/dpo.yaml")
    assert Path(cfg.model.pretrained) == REPO_ROOT / "assets/toy-sd" and Path(cfg.data.source).is_file()
    (tmp_path / "assets" / "toy-sd").mkdir(parents=True)  # a folder of that name here wins
    assert load_config(REPO_ROOT / "configs/toy/dpo.yaml").model.pretrained == "assets/toy-sd"
