"""Caption perturbers for TPO: every axis changes what it says, determinism, never the input; the LLM perturber's
validation and fallback on a tiny local model."""

import numpy as np
import pytest

from diffalign.data.perturb import AXES, RulePerturber, applicable_axes
from diffalign.toy.captions import parse
from diffalign.toy.prompts import prompt_set

CHANGED = {  # which toy attribute each axis must change
    "content": lambda a, b: [o.shape for o in a.objects] != [o.shape for o in b.objects],
    "attribute": lambda a, b: [(o.colour, o.size) for o in a.objects] != [(o.colour, o.size) for o in b.objects],
    "spatial": lambda a, b: [o.position for o in a.objects] != [o.position for o in b.objects],
    "context": lambda a, b: a.background != b.background,
}
KEPT = {  # ... and leave the others as they were
    "content": lambda a, b: [(o.colour, o.size, o.position) for o in a.objects] == [(o.colour, o.size, o.position)
                                                                                    for o in b.objects],
    "attribute": lambda a, b: [(o.shape, o.position) for o in a.objects] == [(o.shape, o.position) for o in b.objects],
    "spatial": lambda a, b: [(o.colour, o.shape) for o in a.objects] == [(o.colour, o.shape) for o in b.objects],
    "context": lambda a, b: a.objects == b.objects,
}


@pytest.mark.parametrize("axis", AXES)
def test_each_axis_changes_its_attribute_on_toy_captions(axis):
    captions = prompt_set("attributes", "train")[:60] + prompt_set("persona", "train")[:30] + \
        prompt_set("long", "train")[:10]
    perturber, rng, used = RulePerturber(), np.random.default_rng(0), 0
    for caption in captions:
        if axis not in applicable_axes(caption):
            continue
        out, got_axis = perturber.perturb(caption, rng, axis)
        before, after = parse(caption), parse(out)  # still in the grammar
        assert got_axis == axis and out != caption
        assert CHANGED[axis](before, after), (caption, out)
        assert KEPT[axis](before, after), (caption, out)
        used += 1
    assert used >= 30


def test_free_text_axes_change_the_right_words():
    p, rng = RulePerturber(), np.random.default_rng(0)
    caption = "a photo of two dogs next to a wooden chair on a beach"
    allowed = {"content": {"two", "chair"}, "attribute": {"photo", "wooden"}, "spatial": {"next", "to"},
               "context": {"on", "a", "beach"}}
    for axis in AXES:
        for seed in range(5):
            out, _ = p.perturb(caption, np.random.default_rng(seed), axis)
            removed = set(caption.split()) - set(out.split())
            assert removed and removed <= allowed[axis], (axis, out)
    assert p.perturb("a cat", rng, "context")[0].startswith("a cat ")  # context appended when there is none


def test_perturbation_is_deterministic_and_never_the_input():
    p = RulePerturber()
    captions = prompt_set("attributes", "train")[:50] + ["a dog", "An astronaut riding a horse at night",
                                                          "a bowl of soup", "sunset over the ocean"]
    for seed in range(3):
        first = [p.perturb(c, np.random.default_rng(seed)) for c in captions]
        again = [p.perturb(c, np.random.default_rng(seed)) for c in captions]
        assert first == again
        assert all(out != c for (out, _), c in zip(first, captions))


def test_spatial_edits_contradict_the_image():
    from diffalign.toy.render import render
    from diffalign.toy.judge import attribute_checks, read_image
    from diffalign.toy.world import realise

    p, rng = RulePerturber(), np.random.default_rng(0)
    for caption in [c for c in prompt_set("attributes", "train") if "spatial" in applicable_axes(c)][:40]:
        spec = parse(caption)
        reading = read_image(render(realise(spec, rng)))
        if not all(attribute_checks(spec, reading)["position"]) or spec.objects[0].position == "center":
            continue  # the render must satisfy the true caption; a centred shape may sit inside the judge's
            # tolerance band of a corner (centre range 0.42-0.58 vs side lines 0.44/0.56), so centre is left out
        wrong = parse(p.perturb(caption, rng, "spatial")[0])
        assert not any(attribute_checks(wrong, reading)["position"]), (caption, wrong)


def test_axes_are_validated():
    with pytest.raises(ValueError, match="unknown perturbation axes"):
        RulePerturber(("colour",))
    with pytest.raises(ValueError, match="nothing to change along 'spatial'"):
        RulePerturber().perturb("a red circle", np.random.default_rng(0), "spatial")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from diffalign.models.tokenizer import build_clip_tokenizer
    from diffalign.objectives import get_objective

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-lm")
    tokenizer = build_clip_tokenizer()
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                               eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
                    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_llm_perturber_output_is_validated_and_falls_back_to_rules(tiny_lm):
    from diffalign.data.perturb_llm import LLMPerturber

    caption = "a large red circle at the top left"
    llm = LLMPerturber(tiny_lm, max_new_tokens=8)
    out, axis = llm.perturb(caption, np.random.default_rng(0), "attribute")
    assert axis == "attribute" and LLMPerturber.valid(caption, out)
    assert not LLMPerturber.valid(caption, "A large red circle at the top left.")  # same caption
    assert not LLMPerturber.valid(caption, "  ")
    no_tries = LLMPerturber(tiny_lm, retries=0)
    out, axis = no_tries.perturb(caption, np.random.default_rng(0), "spatial")
    assert no_tries.fallbacks == 1 and parse(out).objects[0].position != "top left"
    out, _ = no_tries.perturb("a red circle", np.random.default_rng(0), "spatial")  # rules can't: another axis
    assert out != "a red circle" and no_tries.fallbacks == 2


CUSTOM_CODE = """from transformers import GPT2Config, GPT2LMHeadModel


class MarkedConfig(GPT2Config):
    model_type = "marked-gpt2"


class MarkedLM(GPT2LMHeadModel):
    config_class = MarkedConfig
    ran_remote_code = True
"""


def test_a_model_that_ships_code_loads_only_with_trust_remote_code(tiny_lm, tmp_path):
    """model.trust_remote_code (off by default) is what lets the perturber run a hub model's own code."""
    import json
    import shutil

    from diffalign.config import load_config
    from diffalign.data.factory import build_training_data
    from diffalign.models.tokenizer import build_clip_tokenizer
    from diffalign.objectives import get_objective

    remote = tmp_path / "lm-with-code"
    shutil.copytree(tiny_lm, remote)
    (remote / "marked.py").write_text(CUSTOM_CODE)
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="marked-gpt2", auto_map={"AutoConfig": "marked.MarkedConfig",
                                                      "AutoModelForCausalLM": "marked.MarkedLM"})
    (remote / "config.json").write_text(json.dumps(config))
    cfg = load_config(overrides=[("method", "tdpo"), ("data.source", "assets/toy-data/captioned.parquet"),
                                 ("objective.perturber_model", str(remote)), ("data.max_pairs", "8")])
    assert cfg.model.trust_remote_code is False
    with pytest.raises(ValueError, match="trust_remote_code"):
        build_training_data(cfg.data, get_objective("tdpo", **cfg.objective), build_clip_tokenizer(), 0, 4,
                            cfg.model.trust_remote_code)
    trusted = load_config(overrides=[("method", "tdpo"), ("data.source", "assets/toy-data/captioned.parquet"),
                                     ("objective.perturber_model", str(remote)), ("data.max_pairs", "8"),
                                     ("model.trust_remote_code", "true")])  # the user's opt-in
    dataset, _, _ = build_training_data(trusted.data, get_objective("tdpo", **trusted.objective),
                                        build_clip_tokenizer(), 0, 4, trusted.model.trust_remote_code)
    assert getattr(dataset.perturber.generate.model, "ran_remote_code", False)
