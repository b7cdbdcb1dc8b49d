"""Time to the first training step and peak memory on a large Pick-a-Pic-schema table: streamed vs map-style.

    python benchmarks/streaming_startup.py                       # 20k and 200k rows, streamed and map-style
    python benchmarks/streaming_startup.py --rows 20000 --modes stream

The table is generated once under --work (tiny 32x32 PNG pairs, 10,000 rows per parquet shard, ~12% ties) as a
hub-like folder: README.md and data/train-0000k-of-0000n.parquet, which ``datasets`` reads like a hub repo. Each
measurement is a fresh process running ``diffalign.train.train`` (toy DPO model, 1 optimizer step of 8 pairs, no
evaluation) with an empty ``HF_DATASETS_CACHE``; it reports

  first step      seconds from the process's start (imports included) to the end of the first optimizer step
  peak RSS        the process's high-water resident memory (``ru_maxrss``)
  Arrow copy      bytes ``datasets`` wrote into its cache (the map-style conversion; streaming should write none)

Writes a table (stdout, --markdown) and JSON (--out).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS_PER_SHARD = 10_000

CHILD = r"""
import json, sys, time
start = float(sys.argv[1])
from diffalign.config import load_config
from diffalign.train import train
overrides = [("data.source", sys.argv[2]), ("data.streaming", sys.argv[3]), ("train.max_steps", "1"),
             ("train.batch_size", "8"), ("train.warmup_steps", "0"), ("eval.enabled", "false"),
             ("train.report_to", "none"), ("output_dir", sys.argv[4]), ("data.shuffle_buffer", "1000")]
summary = train(load_config("configs/toy/dpo.yaml", overrides))
print("RESULT " + json.dumps({"first_step_s": time.time() - start, "steps": summary["steps"],
                              "ties_dropped": summary["ties_dropped"]}))
"""


def make_table(folder: Path, rows: int) -> Path:
    """A Pick-a-Pic v2-schema table of ``rows`` pairs (written once; reused when it exists)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image, ImageDraw

    done = folder / "README.md"
    if done.is_file():
        return folder
    (folder / "data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards = -(-rows // ROWS_PER_SHARD)

    def png(colour, corner) -> bytes:  # a disc of ``colour`` inset by ``corner`` px
        image = Image.new("RGB", (32, 32), (240, 240, 240))
        ImageDraw.Draw(image).ellipse((*corner, 30 - corner[0], 30 - corner[1]), fill=tuple(colour))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    for k in range(shards):
        n = min(ROWS_PER_SHARD, rows - k * ROWS_PER_SHARD)
        colours = rng.integers(0, 255, (n, 2, 3))
        corners = rng.integers(2, 14, (n, 2, 2))
        labels = rng.choice([0.0, 1.0, 0.5], size=n, p=[0.44, 0.44, 0.12])
        table = pa.table({
            "caption": [f"a shape, pair {k * ROWS_PER_SHARD + i}" for i in range(n)],
            "jpg_0": [png(colours[i, 0], corners[i, 0]) for i in range(n)],
            "jpg_1": [png(colours[i, 1], corners[i, 1]) for i in range(n)],
            "label_0": labels, "label_1": 1 - labels,
            "user_id": rng.integers(0, 5000, n), "ranking_id": np.arange(n) + k * ROWS_PER_SHARD})
        pq.write_table(table, folder / f"data/train-{k:05d}-of-{shards:05d}.parquet", row_group_size=1000)
    done.write_text("---\nlicense: mit\n---\nA generated Pick-a-Pic v2-schema table for benchmarks.\n")
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(table: Path, streaming: bool) -> dict:
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        start = time.time()
        process = subprocess.Popen([sys.executable, "-c", CHILD, str(start), str(table), str(streaming).lower(),
                                    out + "/run"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        stdout, stderr = process.communicate()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the largest child so far: one child per call below
        if process.returncode != 0:
            raise RuntimeError(f"child failed:\n{stderr[-3000:]}")
        result = json.loads(next(l for l in stdout.splitlines() if l.startswith("RESULT "))[7:])
        arrow = sum(p.stat().st_size for p in Path(cache).rglob("*.arrow"))
        return {**result, "peak_rss_mb": round(usage.ru_maxrss / 1024), "arrow_copy_mb": round(arrow / 2**20, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--modes", nargs="+", default=["stream", "map"], choices=["stream", "map"])
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "diffalign-streaming-bench"))
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--markdown", help="write the table as markdown here")
    args = parser.parse_args(argv)
    results = []
    for rows in args.rows:
        table = make_table(Path(args.work) / f"pickapic-schema-{rows}", rows)
        for mode in args.modes:
            # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: measure in a fresh interpreter each time
            row = json.loads(subprocess.run(
                [sys.executable, __file__, "--_one", str(table), mode], capture_output=True, text=True, check=True,
                cwd=REPO).stdout.splitlines()[-1])
            row.update(rows=rows, mode=mode, table_mb=round(folder_bytes(table) / 2**20, 1),
                       shards=len(list((table / "data").glob("*.parquet"))))
            results.append(row)
            print(json.dumps(row), flush=True)
    lines = ["| rows | shards | table | mode | first step | peak RSS | Arrow copy |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['shards']} | {r['table_mb']} MB | {r['mode']} | {r['first_step_s']:.1f} s "
                     f"| {r['peak_rss_mb']} MB | {r['arrow_copy_mb']} MB |")
    table_text = "\n".join(lines)
    print(table_text)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if args.markdown:
        Path(args.markdown).write_text(f"Machine: {machine}. Command: python benchmarks/streaming_startup.py\n\n"
                                       + table_text + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_one":
        print(json.dumps(measure(Path(sys.argv[2]), sys.argv[3] == "stream")))
        sys.exit(0)
    sys.exit(main())
