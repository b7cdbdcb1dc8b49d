"""Training-step throughput and peak memory: diffalign's step against the reference scripts' step, lever by lever.

    python benchmarks/train_throughput.py                                   # toy + SD1.5 at 128 px, CPU
    python benchmarks/train_throughput.py --models toy --methods dpo,mapo,kto --steps 10
    python benchmarks/train_throughput.py --device cuda --models sd15,sdxl  # what benchmarks/gpu_check.sh runs

Rows (benchmarks/bench_steps.py says exactly what each does and which source it follows):
  reference script   the step of diffusers' DPO script / the MaPO and Diffusion-KTO authors' LoRA scripts (also
                     in the other precision, as a user would run the script with --mixed_precision)
  diffalign          the trainer's step doing the same work (encoders every step, no lever)
  floor              the bare denoiser forward/backward the objective needs, on ready-made inputs
  + lever            diffalign with one lever turned (cache, precision, attention, channels-last, fused AdamW,
                     gradient checkpointing, 2x micro-batch, torch.compile); for the --levers methods
  levers that paid   diffalign with every lever that beat it by > 2% alone (from the lever rows, timed again)
Every row times whole optimizer steps (forward, backward, clipping, AdamW) after warm-up steps, on the same
sequence of noise and timestep draws. Throughput is examples per second (pairs; images for kto) from the median
step; "× reference" compares with the reference script's row in the same precision, "× diffalign" with the plain
diffalign row. "first step" is the first warm-up step (what compilation costs; with --rounds the slowest over the
rounds, since a later one may find inductor's cache warm). Peak memory: the step's high-water mark with the models
resident: RSS on CPU (Linux VmHWM, reset after setup), ``torch.cuda.max_memory_allocated`` on CUDA (reset after
setup).

On CPU each row runs in its own process (RSS cannot be shared between rows); on CUDA one process per model and
method runs every row, each on a fresh copy of the models. ``--budget-seconds`` stops starting new work when the
time is spent (the rows left are listed as skipped). Writes a table (stdout, --markdown) and JSON (--out).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from bench_models import FLOW_MODELS, TOY_MODELS, build  # noqa: E402
from bench_steps import Variant, combined, lever_variants, make_step, one_batch  # noqa: E402

COMPILE_RESERVE_SECONDS = 100  # a compile row starts only with this much of --budget-seconds left


# --------------------------------------------------------------------------------------------------- memory
def _rss_high_water_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM restarts from the current RSS


def peak_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_high_water_mb()


# --------------------------------------------------------------------------------------------------- worker
def _place(parts, device: torch.device):
    from diffalign.families.flow import LazyEncoder

    for name in ("unet", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(parts, name)
        if module is not None and not isinstance(module, LazyEncoder):
            module.to(device)
    return parts


def _host(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    copy = tensor.detach().to("cpu", copy=True)
    return copy.pin_memory() if pin else copy


class FreshDenoiser:
    """A new copy of the denoiser for every job (the levers change it in place): its weights kept on the CPU,
    copied into a module skeleton on the device. The frozen encoders are shared: each job only recasts them."""

    def __init__(self, module: torch.nn.Module):
        self.cls, self.config = type(module), module.config
        pin = module.device.type == "cuda"  # page-locked: a 10 GB SDXL UNet crosses to the GPU in about a second
        self.state = {k: _host(v, pin) for k, v in module.state_dict().items()}
        self.buffers = {k: _host(v, pin) for k, v in module.named_buffers()}  # non-persistent ones too

    def on(self, device: torch.device) -> torch.nn.Module:
        with torch.device("meta"):
            twin = self.cls.from_config(self.config)
        twin.load_state_dict({k: v.to(device, copy=True) for k, v in self.state.items()}, assign=True)
        for name, value in self.buffers.items():
            if name not in self.state:
                owner, _, leaf = name.rpartition(".")
                twin.get_submodule(owner).register_buffer(leaf, value.to(device, copy=True), persistent=False)
        return twin


def measure(variant: Variant, method: str, parts, args, device: torch.device) -> dict:
    from diffalign.families import family_for

    family = family_for(parts)
    examples = args.pairs * variant.batch_scale
    resolution = None if args.model in TOY_MODELS else args.latent * 8
    batch = one_batch(method, parts.tokenizers, examples, resolution)
    started = time.perf_counter()
    step = make_step(variant, method, parts, family, batch, device)
    setup = time.perf_counter() - started
    reset_peak(device)
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    timed = times[args.warmup:]
    median = statistics.median(timed)
    return {"model": args.model, "method": method, "variant": variant.to_dict(), "examples": examples,
            "rows": len(batch["row_image"]), "setup_seconds": setup, "first_step_seconds": times[0],
            "step_seconds": timed, "median_seconds": median, "examples_per_second": examples / median,
            "peak_memory_mb": peak_mb(device), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}


def worker(args) -> list[dict]:
    """Every job of ``args.jobs`` ([{method, variant}]) for one model, in this process; jobs not started by
    ``args.deadline`` (epoch seconds) come back as skipped."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    jobs = json.loads(args.jobs)
    parts = _place(build(args.model, args.device), device)
    fresh = FreshDenoiser(parts.unet) if len(jobs) > 1 else None
    if fresh is not None:
        parts.unet = None  # freed; each job gets its own copy
    results = []
    for job in jobs:
        variant = Variant(**job["variant"])
        head = {"model": args.model, "method": job["method"], "variant": variant.to_dict()}
        left = args.deadline - time.time() if args.deadline else float("inf")
        if left <= 0 or (variant.compile and left < COMPILE_RESERVE_SECONDS):
            results.append(dict(head, skipped="time budget spent" if left <= 0 else
                                f"under {COMPILE_RESERVE_SECONDS} s of the time budget left to compile in"))
            continue
        job_parts = replace(parts, unet=fresh.on(device)) if fresh is not None else parts
        try:
            results.append(measure(variant, job["method"], job_parts, args, device))
        except torch.OutOfMemoryError as err:
            results.append(dict(head, error=f"out of memory: {str(err).splitlines()[0][:120]}"))
        del job_parts
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
        print(f"  {args.model} {job['method']} {variant.name}: done", file=sys.stderr, flush=True)
    return results


# --------------------------------------------------------------------------------------------- orchestration
class Runner:
    """Starts worker processes, keeps the time budget, collects the results."""

    def __init__(self, args):
        self.args, self.started, self.results = args, time.time(), []

    def elapsed(self) -> float:
        return time.time() - self.started

    def run(self, model: str, jobs: list[tuple[str, Variant]]) -> list[dict]:
        """``jobs``: (method, variant) pairs, each in its own process with --isolate, else all in one; --rounds
        passes over them, keeping each row's fastest median (a shared machine is noisy: the best of several runs
        is the least disturbed one)."""
        best: dict[tuple, dict] = {}
        first_steps: dict[tuple, float] = {}
        for _ in range(self.args.rounds):
            for row in self._one_round(model, jobs):
                key = (row["method"], row["variant"]["name"])
                if "first_step_seconds" in row:  # the slowest: a later round may find inductor's cache warm
                    first_steps[key] = max(first_steps.get(key, 0.0), row["first_step_seconds"])
                if key not in best or row.get("median_seconds", float("inf")) < best[key].get("median_seconds",
                                                                                              float("inf")):
                    best[key] = row
        out = [dict(row, first_step_seconds=first_steps[key]) if key in first_steps else row
               for key, row in best.items()]
        self.results += out
        return out

    def _one_round(self, model: str, jobs: list[tuple[str, Variant]]) -> list[dict]:
        args = self.args
        deadline = self.started + args.budget_seconds if args.budget_seconds else 0
        out = []
        for group in [[job] for job in jobs] if args.isolate else [jobs]:
            if deadline and time.time() > deadline:
                out += [{"model": model, "method": m, "variant": v.to_dict(), "skipped": "time budget spent"}
                        for m, v in group]
                continue
            command = [sys.executable, __file__, "--worker", "--model", model,
                       "--jobs", json.dumps([{"method": m, "variant": v.to_dict()} for m, v in group]),
                       "--pairs", str(args.pairs or default_pairs(model)), "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--device", args.device, "--latent", str(args.latent),
                       "--threads", str(args.threads), "--deadline", str(deadline)]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            if done.returncode:
                raise SystemExit(f"{model}/{[(m, v.name) for m, v in group]} failed (its stderr is above)")
            rows = json.loads(done.stdout.strip().splitlines()[-1])
            for row in rows:
                status = row.get("error") or row.get("skipped") or \
                    f"{row['examples_per_second']:8.2f} ex/s {row['peak_memory_mb']:8.0f} MB"
                print(f"[{self.elapsed():6.0f}s] {model} {row['method']} {row['variant']['name']}: {status}",
                      file=sys.stderr, flush=True)
            out += rows
        return out


def default_pairs(model: str) -> int:
    return 16 if model in ("toy", "toy-flow") else 4 if model.startswith("tiny") else 2


def run_all(args) -> Runner:
    """Per model: the reference, diffalign, floor and cache rows of every method, then every lever of the --levers
    methods (compile last), then the levers that paid, for every method, timed again."""
    runner = Runner(args)
    methods, lever_methods = args.methods.split(","), [m for m in args.levers.split(",") if m in args.methods]
    for model in args.models.split(","):
        flow = model in FLOW_MODELS
        rows = lever_variants(args.precision, full_fine_tune=model in args.full_fine_tune.split(","),
                              compile_=args.compile == "on" or (args.compile == "toy" and model in TOY_MODELS),
                              attention_lever=not flow)  # SD3's joint attention has no classic processor
        plain = rows[1]
        basic = [v for v in rows if v.step in ("reference", "floor") or v == plain or v.cache]
        jobs = [(m, v) for m in methods for v in basic] + [(m, v) for m in lever_methods for v in rows
                                                           if v not in basic]
        if args.row:  # a re-measurement of some rows only: no combined row
            runner.run(model, [(m, v) for m, v in jobs if v.name in args.row])
            continue
        measured = runner.run(model, jobs)
        speed = {(r["method"], r["variant"]["name"]): r["examples_per_second"] for r in measured
                 if "examples_per_second" in r}
        gains = {}
        for method in lever_methods:  # each lever's gain over the plain row, averaged over the --levers methods
            if (method, plain.name) in speed:
                for v in rows:
                    if (method, v.name) in speed:
                        gains.setdefault(v.name, []).append(speed[(method, v.name)] / speed[(method, plain.name)])
        if gains:
            best = combined(plain, [v for v in rows if v.step == "diffalign" and v != plain],
                            {name: statistics.mean(g) for name, g in gains.items()})
            runner.run(model, [(m, v) for m in methods
                               for v in (best, replace(best, name=best.name + ", 2x micro-batch", batch_scale=2))])
    return runner


def table(results: list[dict]) -> str:
    """One markdown table per model and method. "× reference" and "peak vs reference": against the reference
    script's row in the same precision; "× diffalign": against diffalign's plain row (a lever's own effect)."""
    lines, by_case = [], {}
    for r in results:
        by_case.setdefault((r["model"], r["method"]), []).append(r)
    for (model, method), rows in by_case.items():
        rows = sorted(rows, key=lambda r: r["variant"]["step"] != "reference")  # reference rows first (stable)
        timed = [r for r in rows if "examples_per_second" in r]
        references = {r["variant"]["precision"]: r for r in timed if r["variant"]["step"] == "reference"}
        plain = next((r for r in timed if r["variant"]["name"] == "diffalign"), None)
        first = timed[0] if timed else rows[0]
        lines += [f"\n**{model} {method}** ({first.get('examples', '?')} examples per micro-batch, "
                  f"precision {first['variant']['precision']} unless the row says otherwise)\n",
                  "| row | ex/s | × reference | × diffalign | first step s | peak MB | peak vs reference |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            if "examples_per_second" not in r:
                lines.append(f"| {r['variant']['name']} | {r.get('error') or 'skipped: ' + r['skipped']} "
                             f"| | | | | |")
                continue
            reference = references.get(r["variant"]["precision"])
            speed = r["examples_per_second"]
            ratio = f"{speed / reference['examples_per_second']:.2f}×" if reference else "—"
            own_effect = plain is not None and not r["variant"]["step"].startswith("reference")
            lever = f"{speed / plain['examples_per_second']:.2f}×" if own_effect else "—"
            memory = f"{r['peak_memory_mb'] - reference['peak_memory_mb']:+.0f} MB" if reference else "—"
            lines.append(f"| {r['variant']['name']} | {speed:.3g} | {ratio} | {lever} | "
                         f"{r['first_step_seconds']:.2f} | {r['peak_memory_mb']:.0f} | {memory} |")
    return "\n".join(lines).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="toy,sd15",
                        help="toy, sd15, sdxl, toy-flow, sd35m, tiny-sd15, tiny-sdxl, tiny-sd3 (comma-separated)")
    parser.add_argument("--methods", default="dpo,mapo,kto", help="objectives (toy config names)")
    parser.add_argument("--levers", default="dpo", help="methods that get every lever row (others: reference, "
                        "diffalign, floor, + cache, and the combined levers)")
    parser.add_argument("--pairs", type=int, default=0, help="examples per micro-batch (default: toy 16, others 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="passes over every row; each row keeps its best")
    parser.add_argument("--row", action="append", default=[],
                        help="measure only the row of this name (repeatable), e.g. --row 'reference script'")
    parser.add_argument("--update", action="store_true",
                        help="add the rows measured to --out's earlier results, replacing rows of the same model, "
                             "method and name (each row records when it was measured)")
    parser.add_argument("--latent", type=int, default=16, help="latent side of the full-size models (image: 8x)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None, choices=["no", "fp16", "bf16"],
                        help="train.mixed_precision of every row (default: no on CPU, bf16 on CUDA)")
    parser.add_argument("--compile", default="toy", choices=["on", "off", "toy"],
                        help="a torch.compile row: for every model, none, or the toy models only (CPU default)")
    parser.add_argument("--full-fine-tune", default="toy", help="models that also get the full fine-tune rows")
    parser.add_argument("--isolate", default=None, choices=["yes", "no"],
                        help="one process per row (default: yes on CPU, no on CUDA)")
    parser.add_argument("--budget-seconds", type=float, default=0, help="start no new work after this (0: none)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/throughput-<device>.json)")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    args.precision = args.precision or ("bf16" if args.device.startswith("cuda") else "no")
    args.isolate = (args.isolate or ("no" if args.device.startswith("cuda") else "yes")) == "yes"
    if args.device == "cpu" and args.precision == "fp16":
        parser.error("--precision fp16 needs a GPU (no fp16 autocast on CPU in accelerate); use bf16")
    runner = run_all(args)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"throughput-{args.device}.json")
    record = {}
    if args.update and out.is_file():
        record = json.loads(out.read_text())

        def key(row):
            return row["model"], row["method"], row["variant"]["name"]

        measured = {key(r) for r in runner.results if "examples_per_second" in r}  # a skipped row replaces nothing
        earlier = [r for r in record["results"] if key(r) not in measured]
        runner.results = earlier + [r for r in runner.results if key(r) in measured
                                    or key(r) not in {key(e) for e in earlier}]
    text = table(runner.results)
    print(text)
    machine = {"device": args.device, "cpu_count": os.cpu_count(), "platform": platform.platform(),
               "torch": torch.__version__, "load_average": os.getloadavg(),
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
               "wall_seconds": runner.elapsed()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if record:  # the first run's settings stay; this one is listed as an update
        record["updates"] = record.get("updates", []) + [{"machine": machine, "args": vars(args)}]
    else:
        record = {"machine": machine, "args": vars(args)}
    out.write_text(json.dumps(dict(record, results=runner.results), indent=2))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    print(f"written: {out} ({runner.elapsed():.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
