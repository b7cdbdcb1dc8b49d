"""The `diffalign` command. Subcommands are thin: they parse arguments and call the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .paths import TOY_CLIP, TOY_DATA, TOY_FLOW, TOY_SD, refuse_overwrite


def _load_toy_pipeline(path: str):
    """The pipeline of a toy base, of whatever class it saved (the toy SD, or the SD3-shaped toy-flow)."""
    from diffusers import DiffusionPipeline

    if not Path(path).exists():
        raise SystemExit(f"no model at {path}: pass --model PATH (a diffusers folder) or rebuild the toy model "
                         "with `diffalign toy pretrain --out assets/toy-sd`")
    return DiffusionPipeline.from_pretrained(path)


def _toy_pretrain(args) -> None:
    from .toy.pretrain import PretrainConfig, pretrain

    out = args.out or str(TOY_FLOW if args.family == "sd3" else TOY_SD)
    refuse_overwrite(Path(out), args.overwrite)
    if args.family == "sd3":
        from .toy.pretrain_flow import FlowPretrainConfig, pretrain_flow

        if args.zero_terminal_snr or args.frozen_text_encoder or args.vae_steps is not None:
            raise SystemExit("--zero-terminal-snr, --frozen-text-encoder and --vae-steps are UNet recipe options; "
                             "--family sd3 reuses the VAE of --vae-from and trains its text encoders")
        flow = FlowPretrainConfig(seed=args.seed, vae_from=args.vae_from)
        if args.unet_steps is not None:
            flow.steps = args.unet_steps
        pretrain_flow(out, flow)
        return
    cfg = PretrainConfig(seed=args.seed, zero_terminal_snr=args.zero_terminal_snr,
                         frozen_text_encoder=args.frozen_text_encoder)
    if args.vae_steps is not None:
        cfg.vae_steps = args.vae_steps
    if args.unet_steps is not None:
        cfg.unet_steps = args.unet_steps
    pretrain(out, cfg)


def _toy_shrink_vocab(args) -> None:
    from .toy.shrink import shrink_vocabulary

    refuse_overwrite(Path(args.out), False)
    print(json.dumps(shrink_vocabulary(args.model, args.out), indent=2))


def _toy_data(args) -> None:
    from .toy.preferences import build_toy_data

    out = Path(args.out)
    for name in (f"pairs_{args.persona}.parquet", "pairs_multiuser.parquet", f"feedback_{args.persona}.parquet"):
        refuse_overwrite(out / name, args.overwrite)
    result = build_toy_data(_load_toy_pipeline(args.model), out, n_pairs=args.pairs, persona=args.persona,
                            n_feedback_pairs=min(args.feedback_pairs, args.pairs), seed=args.seed)
    print(json.dumps({k: str(v) for k, v in result.items()}, indent=2))


def _data_feedback(args) -> None:
    from .data.convert import pairs_to_feedback

    print(json.dumps(pairs_to_feedback(args.source, args.split, args.out, per_image=args.per_image), indent=2))


def _toy_clip(args) -> None:
    from .toy.clip import ToyClipConfig, train_toy_clip

    refuse_overwrite(Path(args.out), args.overwrite)
    cfg = ToyClipConfig(seed=args.seed, scene_sentences=args.scene_sentences,
                        adversarial_eps=args.adversarial_eps, init=args.init)
    for key in ("steps", "lr", "warmup_steps"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    print(json.dumps(train_toy_clip(args.out, cfg), indent=2))


def _toy_captioned(args) -> None:
    from .toy.captioned import build_captioned

    out = Path(args.out or TOY_DATA / ("captioned_long.parquet" if args.long else "captioned.parquet"))
    refuse_overwrite(out, args.overwrite)
    print(f"written: {build_captioned(out, args.n, args.seed, args.long)}")


def _toy_measure(args) -> None:
    from .toy.measure import measure, to_markdown, write_report

    chosen = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    result = measure(_load_toy_pipeline(args.model), seeds_per_prompt=args.seeds,
                     **{k: v for k, v in chosen.items() if v is not None})  # unset: the toy comparison's settings
    path = write_report(result, args.out)
    print(to_markdown(result))
    print(f"\nwritten: {path} and {path.with_suffix('.json')}")


def _toy_demo(args) -> None:
    from .toy.demo import run_demo

    scores = run_demo(_load_toy_pipeline(args.model), args.out)
    for row in scores["prompts"]:
        print(f"fidelity {row['fidelity']:.2f}  {row['prompt']}")
    print(f"mean fidelity {scores['mean_fidelity']:.3f}; grid: {scores['grid']}; "
          f"scores: {Path(args.out) / 'demo_scores.json'}")


def _eval(args) -> None:
    from .evaluation import SamplingSettings, evaluate
    from .evaluation.api import default_device, default_dtype
    from .evaluation.scoring import parse_scorer_options
    from .toy import plugin  # noqa: F401  (registers the scorer "toy" and the prompt source "toy:<set>")

    device = args.device or default_device()
    dtype = args.dtype or default_dtype(device)
    report = evaluate(
        args.model, adapters=args.lora, prompts=args.prompts, scorers=args.scorers.split(","),
        output_dir=args.out, seeds_per_prompt=args.seeds_per_prompt, first_seed=args.first_seed,
        prompt_column=args.prompt_column, split=args.split, limit=args.limit,
        settings=SamplingSettings(num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height,
                                  width=args.width, dtype=dtype, text_encoding=args.text_encoding,
                                  max_text_length=args.max_text_length, segmenter=args.segmenter,
                                  guidance_rescale=args.guidance_rescale,
                                  max_sequence_length=args.max_sequence_length),
        scorer_options=parse_scorer_options(args.scorer_option), device=device, batch_size=args.batch_size,
        cache=not args.no_cache)
    print(report.to_markdown())
    print("written: " + ", ".join(report.files.values()))


def _checked(rule: str):
    """An argparse type from the rule of that name in evaluation.ranges: out of range is argparse's own one-line
    error (exit 2, "argument --steps: expected an integer >= 1, got 0"), raised while parsing, so before any model
    loads."""

    def convert(text: str):
        from . import ranges

        try:
            return getattr(ranges, rule)(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None  # argparse shows a ValueError's type name instead

    convert.__name__ = rule
    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffalign", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # `diffalign train ...` is dispatched in main() before parsing; listed here for --help.
    sub.add_parser("train", help="train (same arguments as `accelerate launch diffalign/train.py`)")
    sub.add_parser("label", help="sample candidates per prompt, annotate them (scorers, toy judge, MLLM), write "
                                 "pairs and feedback (diffalign label --help)")
    sub.add_parser("iterate", help="online rounds: label with the current policy, train, evaluate "
                                   "(diffalign iterate --help)")
    sub.add_parser("cache", help="encode the training data with the frozen VAE/text encoders into the encoding "
                                 "cache (same arguments as train)")
    p = sub.add_parser("eval", help="generate with fixed seeds for a base model and its adapters, score, report")
    p.add_argument("--model", default=str(TOY_SD), help="base model: hub id or diffusers folder")
    p.add_argument("--lora", action="append", default=[], metavar="[NAME=]PATH[@SCALE]",
                   help="an adapter to compare with the base (LoRA folder/file, or a folder with unet/); repeatable")
    p.add_argument("--prompts", default="toy:attributes",
                   help="toy:attributes|toy:persona|toy:long, a .txt/.jsonl file, or a datasets source")
    p.add_argument("--prompt-column", default=None, help="JSONL key / dataset column (default: prompt or caption)")
    p.add_argument("--split", default="test", help="dataset split (e.g. test_unique for Pick-a-Pic v2)")
    p.add_argument("--limit", type=_checked("count"), default=None, help="use only the first N prompts")
    p.add_argument("--seeds-per-prompt", type=_checked("count"), default=4)
    p.add_argument("--first-seed", type=_checked("seed"), default=0)
    p.add_argument("--scorers", default="toy", help="comma-separated: toy,pickscore,hps,clipscore,aesthetic,imagereward")
    p.add_argument("--scorer-option", action="append", default=[], metavar="SCORER.OPTION=VALUE",
                   help="e.g. pickscore.model=/models/PickScore_v1 or hps.checkpoint=/ckpt/HPS_v2.1_compressed.pt")
    p.add_argument("--steps", type=_checked("count"), default=25, help="sampling steps")
    p.add_argument("--guidance", type=_checked("guidance"), default=5.0, help="classifier-free guidance scale")
    p.add_argument("--guidance-rescale", type=_checked("fraction"), default=0.0,
                   help="diffusers' guidance_rescale in [0, 1]: 0.7 for zero-terminal-SNR / v-prediction models "
                        "(Lin et al., 2024); 0 is plain CFG")
    p.add_argument("--height", type=_checked("image_side"), default=None, help="a multiple of 8")
    p.add_argument("--width", type=_checked("image_side"), default=None, help="a multiple of 8")
    p.add_argument("--batch-size", type=_checked("count"), default=16, help="images sampled per pipeline call")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="pipeline dtype (default: float16 on cuda, float32 on cpu)")
    p.add_argument("--text-encoding", default="clip", choices=["clip", "segments"],
                   help="clip: the pipeline's own (77 tokens); segments: LongAlign segment encoding (SD and SDXL)")
    p.add_argument("--max-text-length", type=_checked("count"), default=240,
                   help="segment encoding: rows of text states")
    p.add_argument("--segmenter", default="diffalign", choices=["diffalign", "authors"],
                   help="segment encoding: how prompts are cut into sentences and padded (authors: LongAlign's code)")
    p.add_argument("--max-sequence-length", type=_checked("count"), default=None,
                   help="SD3/Flux: T5 tokens per prompt (default: the length the adapters trained with, from their "
                        "run's config.json, else SD3 77 / Flux 512; SD3's pipeline alone uses 256)")
    p.add_argument("--out", default="outputs/eval", help="report folder; images are cached under OUT/images")
    p.add_argument("--no-cache", action="store_true", help="resample every image instead of reusing cached ones")
    p.set_defaults(func=_eval)

    data = sub.add_parser("data", help="prepare training tables")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("feedback", help="export Pick-a-Pic pairs as KTO binary feedback (caption, image, label); "
                                                  "training reads pairs as feedback without it")
    p.add_argument("--source", required=True, help="hub dataset id, parquet file or folder of pairs")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="new folder for the parquet shards")
    p.add_argument("--per-image", action="store_true",
                   help="one row per unique image (image_0_uid/image_1_uid), desirable if it won at least once, as "
                        "the Diffusion-KTO authors label Pick-a-Pic (default: one row per image of each pair)")
    p.set_defaults(func=_data_feedback)

    toy = sub.add_parser("toy", help="the toy shapes world: pretrain its base model, build data, measure, demo")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)

    p = toy_sub.add_parser("pretrain", help="pretrain the embedded toy Stable Diffusion (or, --family sd3, the toy "
                                            "SD3-shaped flow model) from scratch (CPU)")
    p.add_argument("--family", choices=("sd", "sd3"), default="sd",
                   help="sd: the UNet base (assets/toy-sd); sd3: an SD3-shaped rectified-flow transformer "
                        "(assets/toy-flow) on the VAE of --vae-from")
    p.add_argument("--vae-from", default=str(TOY_SD), help="--family sd3: the toy base whose VAE it reuses")
    p.add_argument("--out", default=None, help="output folder (diffusers format; default assets/toy-sd or "
                                               "assets/toy-flow)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=None, help="VAE steps (default: the recipe's)")
    p.add_argument("--unet-steps", type=int, default=None,
                   help="UNet or transformer (+ text encoder) steps (default: the recipe's)")
    p.add_argument("--zero-terminal-snr", action="store_true",
                   help="a zero-terminal-SNR schedule with v-prediction (the noise then carries no image colour)")
    p.add_argument("--frozen-text-encoder", default=None, metavar="CLIP_PATH",
                   help="condition on this CLIP's text tower, frozen, as SD1.5 does on OpenAI's CLIP (e.g. "
                        "assets/toy-clip); default: a text encoder trained from scratch with the UNet")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_toy_pretrain)

    p = toy_sub.add_parser("shrink-vocab", help="cut a toy model's CLIP vocabulary to the toy world's words "
                                                "(identical outputs on every toy caption)")
    p.add_argument("--model", required=True, help="a toy pipeline folder or a toy CLIP folder")
    p.add_argument("--out", required=True, help="a new folder for the result")
    p.set_defaults(func=_toy_shrink_vocab)

    p = toy_sub.add_parser("data", help="sample pairs from the base model and label them with personas")
    p.add_argument("--model", default=str(TOY_SD))
    p.add_argument("--out", default=str(TOY_DATA))
    p.add_argument("--pairs", type=int, default=2400, help="pairs to sample")
    p.add_argument("--feedback-pairs", type=int, default=1200, help="pairs turned into the binary-feedback view")
    p.add_argument("--persona", default="bold", help="rater of the single-persona set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_toy_data)

    p = toy_sub.add_parser("clip", help="train the toy world's tiny CLIP (PPD's user encoder on the toy; CPU)")
    p.add_argument("--out", default=str(TOY_CLIP))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--scene-sentences", type=float, default=0.0,
                   help="share of 5-6-object scenes captioned by one of their sentences (a reward for long captions)")
    p.add_argument("--adversarial-eps", type=float, default=0.0,
                   help="train on adversarial renders within this L-inf radius in [0, 1] pixel units (e.g. 0.03)")
    p.add_argument("--init", default=None, help="a toy CLIP folder to fine-tune instead of starting from scratch")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_toy_clip)

    p = toy_sub.add_parser("captioned", help="ground-truth renders with their captions (TPO training data)")
    p.add_argument("--out", default=None,
                   help="default: assets/toy-data/captioned.parquet (with --long: captioned_long.parquet)")
    p.add_argument("--n", type=int, default=3000, help="images")
    p.add_argument("--long", action="store_true",
                   help="5-6-object scenes with verbose captions (as toy:long) instead of single objects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_toy_captioned)

    p = toy_sub.add_parser("measure", help="the base-model table: fidelity per attribute, spread of unstated ones")
    p.add_argument("--model", default=str(TOY_SD))
    p.add_argument("--out", default="outputs/toy-measure")
    p.add_argument("--seeds", type=int, default=4, help="seeds per held-out prompt")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the toy comparison's, 25)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the toy comparison's, 5)")
    p.set_defaults(func=_toy_measure)

    p = toy_sub.add_parser("demo", help="sample a few held-out prompts, judge them, write a grid and scores")
    p.add_argument("--model", default=str(TOY_SD))
    p.add_argument("--out", default="outputs/toy-demo")
    p.set_defaults(func=_toy_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # everything after `train` belongs to the trainer's own parser
        from .train import main as train_main

        return train_main(argv[1:])
    if argv[:1] in (["label"], ["iterate"]):  # a config file and dotted overrides, as train
        from .labeling.cli import iterate_main, main as label_main
        from .toy import plugin  # noqa: F401  (registers the toy judge and prompt sets the toy configs name)

        return (label_main if argv[0] == "label" else iterate_main)(argv[1:])
    if argv[:1] == ["cache"]:  # the trainer's arguments too
        from .precompute import main as cache_main

        return cache_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"diffalign: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
