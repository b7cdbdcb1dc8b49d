"""``diffalign label``'s settings: YAML (configs/label/) plus dotted command-line overrides, as training's."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError, build_dataclass, read_tree, repository_path
from .annotators import ScorerTerm
from .mllm import RUBRIC
from .selection import SelectionRule


@dataclass
class AnnotatorConfig:
    kind: str = "scores"  # "scores": a weighted sum of scorers; "mllm": a multimodal LLM's pairwise choices
    # kind scores: [{name, weight (default 1), options {...}}], e.g. [{name: toy, options: {score: bold}}]
    scorers: list = field(default_factory=lambda: [{"name": "pickscore"}])
    model: str | None = None  # kind mllm: an image-text-to-text model, hub id or folder
    criteria: list[str] = field(default_factory=lambda: list(RUBRIC))  # kind mllm: the questions asked
    trust_remote_code: bool = False  # kind mllm: run the model repository's own code
    max_new_tokens: int = 8  # kind mllm: the answer's length limit

    def terms(self) -> list[ScorerTerm]:
        terms = []
        for i, term in enumerate(self.scorers):
            if not isinstance(term, dict) or "name" not in term:
                raise ConfigError(f"annotator.scorers[{i}]: expected {{name, weight, options}}, got {term!r}")
            unknown = set(term) - {"name", "weight", "options"}
            if unknown:
                raise ConfigError(f"annotator.scorers[{i}]: unknown key(s) {sorted(unknown)}; valid: name, weight, "
                                  "options")
            terms.append(ScorerTerm(str(term["name"]), float(term.get("weight", 1.0)), dict(term.get("options") or {})))
        return terms


@dataclass
class LabelConfig:
    model: str = "assets/toy-sd"  # the policy that draws the candidates: a diffusers folder or hub id
    adapter: str | None = None  # on top of it: a LoRA folder/file or a full fine-tune's folder
    prompts: str = "toy:persona"  # a prompt source: toy:<set>, a .txt or .jsonl file, a table (hub id, parquet)
    split: str = "train"  # the prompt source's split (toy sets: train = the training side)
    prompt_column: str | None = None  # a table's prompt column (null: prompt, else caption)
    max_prompts: int | None = None  # the first N prompts only
    prompt_repeats: int = 1  # each prompt labelled this many times, with new seeds (many pairs per prompt)
    candidates: int = 2  # K images per prompt
    first_seed: int = 0  # prompt g's candidate c is drawn with seed first_seed + g * K + c
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    resolution: int | None = None  # pixels (square); null: the pipeline's default
    dtype: str = "float32"  # the sampling pipeline's dtype (float16/bfloat16 on a GPU)
    device: str = "cpu"
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    selection: SelectionRule = field(default_factory=SelectionRule)  # which candidates become examples
    prompts_per_shard: int = 256  # prompts per output shard: the unit an interrupted run redoes
    out: str = "outputs/labels"  # pairs/ and feedback/ parquet folders, label.json


def load_label_config(path: str | None, overrides: list[tuple[str, str]] = ()) -> LabelConfig:
    tree = read_tree(repository_path(path), overrides)
    selection = tree.pop("selection", {}) or {}
    cfg = build_dataclass(LabelConfig, tree)
    try:
        cfg.selection = SelectionRule(**selection)
    except TypeError as err:
        raise ConfigError(f"selection: {err}; valid keys: pairs, margin, tie_threshold, feedback_fraction") from err
    except ValueError as err:
        raise ConfigError(f"selection.{err}") from err
    if cfg.annotator.kind not in ("scores", "mllm"):
        raise ConfigError(f"annotator.kind: expected 'scores' or 'mllm'; got {cfg.annotator.kind!r}")
    if cfg.annotator.kind == "mllm" and not cfg.annotator.model:
        raise ConfigError("annotator.model: kind mllm needs an image-text-to-text model (hub id or folder)")
    if cfg.candidates < 2:
        raise ConfigError(f"candidates: a pair needs at least 2 images per prompt; got {cfg.candidates}")
    if cfg.prompt_repeats < 1:
        raise ConfigError(f"prompt_repeats: expected at least 1; got {cfg.prompt_repeats}")
    if cfg.prompts_per_shard < 1:
        raise ConfigError(f"prompts_per_shard: expected at least 1; got {cfg.prompts_per_shard}")
    cfg.annotator.terms()  # malformed scorer entries fail here, before any model loads
    cfg.model, cfg.prompts = repository_path(cfg.model), repository_path(cfg.prompts)  # the toy assets, from anywhere
    return cfg
