"""Typed training configuration: YAML files plus dotted command-line overrides, validated before anything loads.

Every field is documented once, here, with its unit and whether it is per device or global.
    accelerate launch diffalign/train.py --config configs/sd15/dpo_pickapic.yaml --train.lr 1e-5 --lora.rank 16
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class ModelConfig:
    pretrained: str = "assets/toy-sd"  # hub id or local diffusers folder of the base pipeline
    revision: str | None = None  # hub revision (branch, tag or commit)
    variant: str | None = None  # weight variant on the hub, e.g. "fp16"
    vae: str | None = None  # another VAE (hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix (SDXL in fp16)
    trust_remote_code: bool = False  # run code shipped with a hub model (e.g. objective.perturber_model); off unless set
    # SD3/Flux: T5 tokens per caption (null: 77 for SD3, as diffusers' SD3 LoRA script; 512 for Flux, as Flux-dev)
    max_sequence_length: int | None = None
    # Flux with a guidance embedding (Flux-dev): the guidance value the transformer reads in training (diffusers'
    # Flux LoRA script: 3.5); ignored by transformers without one (Flux-schnell) and by other families
    guidance: float = 3.5


@dataclass
class DataConfig:
    # hub dataset id; parquet, CSV/TSV or JSONL file or folder; imagefolder (metadata.csv/.jsonl); webdataset .tar
    source: str = "assets/toy-data/pairs_bold.parquet"
    split: str = "train"  # split of a hub dataset / folder
    # the names a method reads -> the table's own columns, e.g. {caption: text, jpg_0: image_a} (checked at start)
    columns: dict = field(default_factory=dict)
    # read rows as they arrive (no download or conversion before step 1; exact resume); null: stream hub datasets
    # above 10 GB (the hub's file listing; unknown size streams), read local tables map-style
    streaming: bool | None = None
    shuffle_buffer: int = 1000  # streaming: examples per shuffle block, per reader (process x worker)
    resolution: int = 32  # pixels; images are resized (short side) and cropped to this square
    random_crop: bool = False  # same random crop for both images of a pair (else centre crop)
    random_flip: bool = False  # same horizontal flip for both images of a pair, with probability 1/2
    drop_ties: bool = True  # drop pairs labelled 0.5/0.5 (about 12% of Pick-a-Pic v2)
    caption_dropout: float = 0.0  # probability of training a pair on the empty caption
    max_pairs: int | None = None  # use only the first N pairs/examples (after dropping ties)
    num_workers: int = 0  # DataLoader worker processes per device
    on_bad_sample: str = "error"  # "error": stop naming row/column; "skip": leave it out of its batch, count it
    cache_encodings: bool = False  # keep VAE posteriors and text states on disk; encoders run once per view/caption
    cache_dir: str | None = None  # where (default: $DIFFALIGN_CACHE or ~/.cache/diffalign, + /encodings)
    alpha_background: list[int] = field(default_factory=lambda: [255, 255, 255])  # RGB under transparent pixels


@dataclass
class LoraSettings:
    enabled: bool = True  # False = full fine-tune of the UNet (reference = a frozen copy)
    rank: int = 8
    alpha: float = 8.0  # LoRA scale is alpha / rank
    # null: the model family's own, as diffusers' LoRA scripts (SD/SDXL: to_q, to_k, to_v, to_out.0; SD3/Flux: those
    # and the context stream's add_q_proj, add_k_proj, add_v_proj, to_add_out)
    target_modules: list[str] | None = None
    # Also a LoRA on the text encoder(s), as diffusers' --train_text_encoder (same rank and alpha). The
    # reference then runs with both adapters off, and the text states are computed with gradient every step.
    text_encoder: bool = False
    text_encoder_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj",
                                                                            "out_proj"])
    # start the LoRA from an exported one (its folder or pytorch_lora_weights.safetensors; same rank and targets),
    # e.g. the previous round of `diffalign iterate`; the reference stays the base model (adapters off)
    init_from: str | None = None


@dataclass
class TrainConfig:
    batch_size: int = 16  # pairs per device per micro-batch (2x images through the UNet)
    grad_accum: int = 1  # micro-batches per optimizer step; global batch = batch_size x grad_accum x processes
    max_steps: int = 300  # optimizer steps
    lr: float = 1e-3  # peak learning rate
    lr_scheduler: str = "constant_with_warmup"  # any diffusers.optimization scheduler name
    warmup_steps: int = 10  # optimizer steps of linear warmup
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_eps: float = 1e-8
    optimizer: str = "adamw"  # "adamw", "adamw_8bit" (bitsandbytes) or "adafactor" (fixed lr; SDXL full fine-tune)
    max_grad_norm: float = 1.0  # clip the global gradient norm to this (0 = no clipping)
    max_nonfinite_updates: int = 5  # a non-finite loss/gradient skips its update; this many in a row stops the run
    mixed_precision: str = "no"  # "no", "fp16" or "bf16" (errors are reduced in float32 regardless)
    gradient_checkpointing: bool = False
    # [low, high): draw training timesteps uniformly from this range only (diffusers' timestep_bias "range");
    # null = all of [0, num_train_timesteps). Composition (what is where, the background) is decided at high t.
    timestep_range: list[int] | None = None
    # SD3/Flux: how σ is drawn (diffusers' compute_density_for_timestep_sampling): "logit_normal" (SD3's default),
    # "mode" or "uniform"; logit_mean/logit_std for logit_normal, mode_scale for mode (diffusers' script defaults)
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    ema_reference_decay: float | None = None  # full fine-tune: the reference follows the policy as an EMA (else frozen)
    # Full fine-tune (lora.enabled: false): train every text-encoder weight too, as diffusers' DreamBooth
    # --train_text_encoder without LoRA; the reference reads a frozen copy of the starting encoder(s). Saved as
    # text_encoder/ (SDXL: and text_encoder_2/) beside unet/. The LoRA counterpart is lora.text_encoder.
    text_encoder: bool = False
    # With a trained text encoder (lora.text_encoder or train.text_encoder): add this weight x the mean squared
    # difference between the trained and the starting encoder's outputs for the empty prompt, which SD pipelines
    # feed classifier-free guidance's unconditional branch (SDXL base feeds zeros instead). The captions train the
    # encoder and, unless data.caption_dropout trains on empty captions, nothing else holds that branch. 0 = off.
    # (Not in the papers: a diffalign option.)
    empty_prompt_anchor: float = 0.0
    # The peak learning rate of a trained text encoder's weights (lora.text_encoder or train.text_encoder), as
    # diffusers' --text_encoder_lr; null = train.lr. The warmup and schedule apply to it alike.
    text_encoder_lr: float | None = None
    channels_last: bool = False  # UNet weights/activations in channels-last memory format (often faster on GPU)
    compile: bool = False  # torch.compile the policy UNet (accelerate's dynamo, inductor backend)
    # train.optimizer adamw as torch's fused kernel (one kernel for every parameter; CUDA and CPU): the same update
    # up to float rounding. Off by default so that the measured toy results reproduce bit for bit.
    fused_adamw: bool = False
    seed: int = 0
    checkpoint_every: int = 0  # optimizer steps between accelerate checkpoints (0 = none)
    checkpoints_total_limit: int = 3  # keep only the newest N complete checkpoints (0 = keep all)
    log_every: int = 10  # optimizer steps between metric logs
    validation_every: int = 0  # optimizer steps between validation grids (0 = none)
    report_to: str = "tensorboard"  # accelerate tracker name ("tensorboard", "wandb", ...) or "none"


@dataclass
class EvalConfig:
    enabled: bool = True  # the before/after comparison at the end (toy world only)
    persona: str = "bold"  # the persona whose win rate is reported
    prompt_set: str = "persona"  # held-out toy prompts of the comparison: persona, attributes or long
    seeds_per_prompt: int = 10  # held-out persona prompts x seeds = cases
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    # diffusers' guidance_rescale for the comparison and validation grids (0.7 for zero-terminal-SNR / v-prediction
    # bases such as `diffalign toy pretrain --zero-terminal-snr`); 0 is plain CFG
    guidance_rescale: float = 0.0
    validation_prompts: list[str] = field(default_factory=list)  # grid prompts (toy: held-out ones if empty)
    # validation grids' image side in pixels (null: data.resolution, the side the model trains at, not the base's
    # default size); a multiple of the model's pixel factor (8 for SD/SDXL's VAE, 16 for SD3/Flux's 2x2 patches)
    validation_resolution: int | None = None
    validation_steps: int | None = None  # sampler steps of the validation grids (null: eval.num_inference_steps)


@dataclass
class Config:
    method: str = "dpo"  # a registered objective (diffalign train --help lists them)
    objective: dict = field(default_factory=dict)  # the method's own options (its Options dataclass)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "outputs/run"  # where LoRA, checkpoints, logs and reports go
    overwrite: bool = False  # allow writing into a non-empty output_dir


class ConfigError(ValueError):
    pass


def _coerce(value, annotation, where: str):
    """Check/convert ``value`` to the field's declared type; raise ConfigError naming the key otherwise."""
    hint = annotation
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is str and isinstance(value, bool):
        return "yes" if value else "no"  # YAML 1.1 reads a bare no/yes (e.g. mixed_precision: no) as a boolean
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-5" as a string
        except ValueError:
            pass
    if origin is list and isinstance(value, list):
        return list(value)
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return dict(value)
    elif isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")


# Keys that moved into a method's own options: naming the old place fails with the new one.
MOVED = {"data.desirable_ratio": "objective.desirable_ratio", "data.perturb_axes": "objective.perturb_axes",
         "data.perturber_model": "objective.perturber_model", "eval.user_scale": "objective.comparison_user_scale"}


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    moved = [f"{where}{k}" for k in unknown if f"{where}{k}" in MOVED]
    if moved:
        raise ConfigError(f"{moved[0]} moved to {MOVED[moved[0]]} (the options of the methods that read it)")
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(repr(f'{where}{k}') for k in unknown)}; "
                          f"valid keys under {where or 'the top level'}: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}{name}")
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--{dotted}: {k} is not a section")
    node[keys[-1]] = _scalar(raw)


def _scalar(raw: str):
    """YAML's reading of a command-line value, plus numbers YAML 1.1 leaves as strings ("5e3", "1e-5")."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def dotted_overrides(rest: list[str]) -> list[tuple[str, str]]:
    """The command line's leftover ``--section.key value`` pairs -> [("section.key", "value")]."""
    rest, overrides = list(rest), []
    while rest:
        key = rest.pop(0)
        if not key.startswith("--") or not rest:
            raise ConfigError(f"expected '--section.key value' overrides; got {key!r}")
        overrides.append((key[2:], rest.pop(0)))
    return overrides


def read_tree(path: str | Path | None = None, overrides: list[tuple[str, str]] = (), base: dict | None = None) -> dict:
    """The mapping of a YAML file (or ``base``) with dotted overrides applied: what ``build_dataclass`` reads."""
    tree: dict = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        tree.update(loaded)
    for dotted, raw in overrides:
        _set_dotted(tree, dotted, raw)
    return tree


def build_dataclass(cls, tree: dict, where: str = ""):
    """A (nested) config dataclass from a mapping: unknown keys and wrong types are ConfigErrors naming the key."""
    return _build(cls, tree, where)


def load_config(path: str | Path | None = None, overrides: list[tuple[str, str]] = (),
                base: dict | None = None) -> Config:
    """Config from an optional YAML file (or ``base`` mapping), then dotted overrides [("train.lr", "1e-5")]."""
    tree = read_tree(path, overrides, base)
    cfg = _build(Config, tree, "")
    _resolve_embedded_paths(cfg)
    validate(cfg, given=tree, overridden={dotted for dotted, _ in overrides})
    return cfg


def repository_path(value):
    """A relative path that does not exist here but does in the repository (the embedded assets and configs,
    named relative to it) -> its absolute path there; anything else unchanged (paths that exist here win)."""
    from .paths import REPO_ROOT

    if isinstance(value, str) and value and not Path(value).is_absolute() and not Path(value).exists() \
            and (REPO_ROOT / value).exists():
        return str(REPO_ROOT / value)
    return value


def _resolve_embedded_paths(cfg: Config) -> None:
    """The toy configs name the embedded assets relative to the repository ("assets/toy-sd"). Run from another
    folder, such a path would be taken for a hub id (and time out offline): resolve it against the repository
    when it does not exist here but does there. Paths that exist where the user runs win."""
    resolved = repository_path
    for section, key in ((cfg.model, "pretrained"), (cfg.data, "source")):
        setattr(section, key, resolved(getattr(section, key)))
    # objective options that may name an embedded asset (a toy CLIP)
    for key in ("user_encoder_model", "reward_model", "reward_processor"):
        if key in cfg.objective:
            cfg.objective[key] = resolved(cfg.objective[key])


def objective_options(cls) -> list[str]:
    """The options an objective takes: the fields of its Options dataclass."""
    return cls.option_names()


def objective_annotations(cls) -> dict:
    """Each option's declared type."""
    return typing.get_type_hints(cls.Options)


def validate(cfg: Config, given: dict | None = None, overridden: set[str] = frozenset()) -> None:
    """Reject impossible combinations before any model loads.

    ``given``: the mapping the user wrote (file + overrides), to tell a setting they chose from a default: a
    setting that the chosen method or mode ignores is an error when given, never silently unused.
    ``overridden``: the dotted keys set on the command line (see _reject_ignored_settings).
    """
    from .objectives import REGISTRY

    if cfg.method not in REGISTRY:
        raise ConfigError(f"method: unknown {cfg.method!r}; expected one of {sorted(REGISTRY)}")
    for key, value in cfg.objective.items():
        if isinstance(value, str):  # numbers written as "5e3" in YAML 1.1 arrive as strings
            try:
                cfg.objective[key] = float(value)
            except ValueError:
                pass
    objective_cls = REGISTRY[cfg.method]
    options = objective_options(objective_cls)
    unknown = sorted(set(cfg.objective) - set(options))
    if unknown:
        owners = {k: sorted(m for m, c in REGISTRY.items() if k in objective_options(c)) for k in unknown}
        where = "; ".join(f"objective.{k} belongs to {', '.join(v) or 'no method'}" for k, v in owners.items())
        raise ConfigError(f"method {cfg.method} has no option(s) {', '.join(unknown)} ({where}); "
                          f"its options: {', '.join(options) or 'none'}")
    hints = objective_annotations(objective_cls)
    for key, value in cfg.objective.items():  # "beta: high" must fail here, not as a TypeError at step 1
        if key in hints:
            cfg.objective[key] = _coerce(value, hints[key], f"objective.{key}")
    try:
        objective = objective_cls(**cfg.objective)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"objective ({cfg.method}): {err}") from err
    _reject_ignored_settings(cfg, objective, given or {}, overridden)
    t, d = cfg.train, cfg.data
    _check_numbers(cfg)
    if t.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"train.mixed_precision: expected 'no', 'fp16' or 'bf16'; got {t.mixed_precision!r}")
    from diffusers.optimization import SchedulerType

    schedulers = [s.value for s in SchedulerType if s.value != "piecewise_constant"]
    if t.lr_scheduler not in schedulers:
        raise ConfigError(f"train.lr_scheduler: unknown {t.lr_scheduler!r}; expected one of {schedulers}")
    if not 0 <= d.caption_dropout < 1:
        raise ConfigError(f"data.caption_dropout must be in [0, 1); got {d.caption_dropout}")
    if d.on_bad_sample not in ("error", "skip"):
        raise ConfigError(f"data.on_bad_sample: expected 'error' or 'skip'; got {d.on_bad_sample!r}")
    bad_column = next((k for k, v in d.columns.items() if not isinstance(v, str) or not v), None)
    if bad_column is not None:
        raise ConfigError(f"data.columns.{bad_column}: expected the table's column name, got "
                          f"{d.columns[bad_column]!r}")
    bg = d.alpha_background
    if not isinstance(bg, list) or len(bg) != 3 or not all(type(v) is int and 0 <= v <= 255 for v in bg):
        raise ConfigError(f"data.alpha_background: expected three integers in 0..255 (an RGB colour); got {bg!r}")
    if cfg.eval.prompt_set not in ("persona", "attributes", "long"):
        raise ConfigError(f"eval.prompt_set: expected persona, attributes or long; got {cfg.eval.prompt_set!r}")
    if not 0 <= cfg.eval.guidance_rescale <= 1:
        raise ConfigError(f"eval.guidance_rescale must lie in [0, 1] (0: plain CFG); got {cfg.eval.guidance_rescale}")
    for key, lora_wanted, trains_text in (("lora.text_encoder", True, cfg.lora.text_encoder),
                                          ("train.text_encoder", False, t.text_encoder)):
        if not trains_text:
            continue
        denoising = objective.step_kind == "denoising"
        if cfg.lora.enabled != lora_wanted or objective.trains != "unet" or not denoising:
            unet = "a UNet LoRA (lora.enabled: true)" if lora_wanted else "a full UNet fine-tune (lora.enabled: false)"
            denoisers = _methods(lambda c: c.trains == "unet" and c.step_kind == "denoising")
            raise ConfigError(f"{key} needs {unet} and a method that trains the UNet on denoising errors "
                              f"({denoisers}); not {cfg.method} with lora.enabled: "
                              f"{str(cfg.lora.enabled).lower()}. A LoRA's text-encoder counterpart is "
                              "lora.text_encoder, a full fine-tune's train.text_encoder")
        if d.cache_encodings:
            raise ConfigError(f"data.cache_encodings with {key}: the text states change as the text encoder "
                              "trains, so they cannot be cached; turn one of them off")
    segments = objective.text_encoding == "segments"
    if segments and objective.step_kind == "denoising" and \
            (d.cache_encodings or cfg.lora.text_encoder or t.text_encoder):
        raise ConfigError("objective.text_encoding: segments encodes each caption's sentences with the frozen text "
                          "encoder at every step; it works neither with data.cache_encodings nor with a trained text "
                          "encoder (lora.text_encoder / train.text_encoder)")
    if t.empty_prompt_anchor and not (cfg.lora.text_encoder or t.text_encoder):
        raise ConfigError("train.empty_prompt_anchor keeps a trained text encoder's empty-prompt states; no text "
                          "encoder trains here (set lora.text_encoder or train.text_encoder)")
    if t.text_encoder_lr is not None and not (cfg.lora.text_encoder or t.text_encoder):
        raise ConfigError("train.text_encoder_lr is a trained text encoder's learning rate; no text encoder trains "
                          "here (set lora.text_encoder or train.text_encoder)")
    if t.text_encoder_lr is not None and not 0 < t.text_encoder_lr < math.inf:
        raise ConfigError(f"train.text_encoder_lr must be a finite number > 0 (or null: train.lr); "
                          f"got {t.text_encoder_lr}")
    if t.text_encoder and t.ema_reference_decay is not None:
        raise ConfigError("train.text_encoder with train.ema_reference_decay: the EMA reference follows the UNet "
                          "only, while the reference text encoder stays the starting one; use one of them")
    r = t.timestep_range
    if r is not None and (len(r) != 2 or not all(type(v) is int for v in r) or not 0 <= r[0] < r[1]):
        raise ConfigError(f"train.timestep_range: expected [low, high) with 0 <= low < high; got {t.timestep_range}")
    if t.timestep_sampling not in ("logit_normal", "mode", "uniform"):
        raise ConfigError(f"train.timestep_sampling: expected logit_normal, mode or uniform; got {t.timestep_sampling!r}")
    if t.optimizer not in ("adamw", "adamw_8bit", "adafactor"):
        raise ConfigError(f"train.optimizer: expected adamw, adamw_8bit or adafactor; got {t.optimizer!r}")
    if t.fused_adamw and t.optimizer != "adamw":
        raise ConfigError(f"train.fused_adamw applies to train.optimizer adamw only; got {t.optimizer!r}")
    if t.ema_reference_decay is not None:
        if cfg.lora.enabled or not objective.needs_reference or objective.trains != "unet":
            raise ConfigError("train.ema_reference_decay needs full fine-tuning (lora.enabled: false) and a method "
                              f"with a reference (not {cfg.method}); a LoRA reference is the adapter-free UNet")
        if not 0 < t.ema_reference_decay < 1:
            raise ConfigError(f"train.ema_reference_decay must be in (0, 1); got {t.ema_reference_decay}")
    if t.validation_every and objective.trains == "user_adapter":
        raise ConfigError(f"train.validation_every: {cfg.method}'s images depend on a user, which a validation grid "
                          "has none of; measure with experiments/ppd_personas.py or diffalign.pipelines.personalized_sd")


def _numeric_rules() -> dict:
    """Each numeric field's valid range (diffalign/ranges.py); a value of None (an unset optional) is not checked."""
    from .ranges import below_one, count, guidance, image_side, non_negative, non_negative_int, positive

    return {"train.batch_size": count, "train.grad_accum": count, "train.max_steps": count,
            "train.max_nonfinite_updates": count, "train.log_every": count, "train.lr": positive,
            "train.warmup_steps": non_negative_int, "train.adam_beta1": below_one, "train.adam_beta2": below_one,
            "train.weight_decay": non_negative, "train.adam_eps": positive, "train.max_grad_norm": non_negative,
            "train.empty_prompt_anchor": non_negative, "train.seed": non_negative_int,
            "train.checkpoint_every": non_negative_int, "train.checkpoints_total_limit": non_negative_int,
            "train.validation_every": non_negative_int, "data.resolution": image_side, "data.max_pairs": count,
            "data.num_workers": non_negative_int, "data.shuffle_buffer": count, "lora.rank": count,
            "train.logit_std": positive,
            "model.max_sequence_length": count, "model.guidance": non_negative, "lora.alpha": positive,
            "eval.seeds_per_prompt": count, "eval.num_inference_steps": count, "eval.guidance_scale": guidance,
            "eval.validation_resolution": image_side, "eval.validation_steps": count}


def _check_numbers(cfg: Config) -> None:
    """ConfigError naming the first numeric field out of its range, with the range (before any model loads)."""
    for dotted, rule in _numeric_rules().items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value is None:
            continue
        try:
            rule(value)
        except ValueError as err:
            raise ConfigError(f"{dotted}: {err}") from None


def _methods(has) -> str:
    """The registered methods whose objective class ``has(cls)``, for messages (this file names none itself)."""
    from .objectives import REGISTRY

    return ", ".join(sorted(name for name, cls in REGISTRY.items() if has(cls)))


def _lora_in_use(cfg, objective) -> bool:
    return cfg.lora.enabled and objective.trains in ("unet", "user_adapter")


# Settings that only some methods or modes read: (section, key, who reads it, the key that picks the mode,
# whether the setting is in use for (cfg, objective)).
_SETTINGS_IN_USE = [
    ("data", "drop_ties", "image-pair methods", "method", lambda cfg, o: o.pair_axis == "images"),
    # TPO perturbs the true caption and SoftREPA contrasts every caption: neither trains on empty ones.
    ("data", "caption_dropout", "methods trained on images under their own caption", "method",
     lambda cfg, o: o.pair_axis in ("images", "single", "captioned")),
    ("data", "cache_encodings", "methods trained on images (not reward fine-tuning)", "method",
     lambda cfg, o: o.pair_axis != "prompts"),
    ("data", "random_crop", "methods trained on images (not reward fine-tuning)", "method",
     lambda cfg, o: o.pair_axis != "prompts"),
    ("data", "random_flip", "methods trained on images (not reward fine-tuning)", "method",
     lambda cfg, o: o.pair_axis != "prompts"),
    ("data", "alpha_background", "methods trained on images (not reward fine-tuning)", "method",
     lambda cfg, o: o.pair_axis != "prompts"),
    ("lora", "rank", "LoRA training (lora.enabled: true)", "lora.enabled", _lora_in_use),
    ("lora", "alpha", "LoRA training (lora.enabled: true)", "lora.enabled", _lora_in_use),
    ("lora", "target_modules", "LoRA training (lora.enabled: true)", "lora.enabled", _lora_in_use),
    ("train", "timestep_range", "methods trained on denoising errors (not reward fine-tuning)", "method",
     lambda cfg, o: o.step_kind == "denoising"),
    ("lora", "text_encoder_target_modules", "a text-encoder LoRA (lora.text_encoder: true)", "lora.text_encoder",
     lambda cfg, o: cfg.lora.text_encoder),
]


def _reject_ignored_settings(cfg: Config, objective, given: dict, overridden: set[str]) -> None:
    """A setting the user wrote that this method/mode would ignore is a mistake worth stopping for.

    One exception: a config file written for one mode (``lora: {rank: 8}``) run in another chosen on the command
    line (``--lora.enabled false``). The file's settings for the old mode are then reported as unused, not fatal:
    switching a shipped config's mode from the command line is a normal thing to do.
    """
    import warnings

    for section, key, reader, mode_key, in_use in _SETTINGS_IN_USE:
        if key not in (given.get(section) or {}) or in_use(cfg, objective):
            continue
        mode = f"method {cfg.method}" if section != "lora" or objective.trains not in ("unet", "user_adapter") \
            else "full fine-tuning (lora.enabled: false)"
        users = _methods(lambda c: in_use(cfg, c)) if mode_key == "method" else ""
        message = (f"{section}.{key} is set but {mode} does not use it: it applies only to {reader}"
                   + (f" ({users})" if users else ""))
        if f"{section}.{key}" not in overridden and mode_key in overridden:
            warnings.warn(f"{message}; ignored (--{mode_key} on the command line changed the config file's mode)",
                          stacklevel=3)
            continue
        raise ConfigError(f"{message}. Remove it, or choose a method/mode that uses it.")
