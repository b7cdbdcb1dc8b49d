"""Configs: every shipped YAML validates; bad keys, types and combinations fail before any model loads."""

from pathlib import Path

import pytest

from diffalign.config import ConfigError, load_config
from diffalign.paths import REPO_ROOT

SHIPPED = sorted((REPO_ROOT / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_shipped_configs_validate(path: Path):
    cfg = load_config(path)
    assert cfg.method in ("dpo", "mapo")


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
