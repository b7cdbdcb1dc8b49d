#!/usr/bin/env bash
# One GPU, no network, one command: diffalign's training step against the reference scripts' step, lever by lever,
# on models with the real architectures and random weights (nothing is downloaded):
#   SD1.5 at 512 px (dpo, mapo, kto; every lever for dpo, torch.compile and the full fine-tune included),
#   SDXL at 1024 px (dpo, mapo, kto; every lever for dpo but compile), SD3.5 Medium at 1024 px (dpo, mapo).
# Each part has a time budget (130 + 170 + 60 s in which to start new work; a compile row needs 100 s of it left),
# so the whole run is planned to end within 8 minutes on an H100 (the plan has not yet run on one); rows not started
# in time are listed as skipped, never silently dropped. Progress goes to stderr.
#
#   benchmarks/gpu_check.sh [OUT_DIR]            # default OUT_DIR: benchmarks/results/gpu-check
#   benchmarks/gpu_check.sh --dry-run [OUT_DIR]  # the same code paths on CPU with tiny models (tested in the suite)
#
# Writes OUT_DIR/{sd15,sdxl,flow}.json and .md (benchmarks/train_throughput.py), and OUT_DIR/gpu-check.md with all
# tables under the device's name.
set -euo pipefail
cd "$(dirname "$0")/.."
dry_run=0
out=benchmarks/results/gpu-check
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (expected --dry-run or an output folder)" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
started=$(date +%s)

bench() {  # part budget_seconds arguments...
  local part=$1 budget=$2
  shift 2
  echo "[$(( $(date +%s) - started ))s] $part: $*" >&2
  python benchmarks/train_throughput.py --out "$out/$part.json" --markdown "$out/$part.md" \
    --budget-seconds "$budget" "$@" >/dev/null
}

if [ "$dry_run" = 1 ]; then
  device="CPU dry run (tiny models)"
  common=(--device cpu --precision bf16 --isolate no --steps 1 --warmup 1 --compile off)
  bench sd15 0 --models tiny-sd15 --methods dpo,mapo,kto --full-fine-tune tiny-sd15 "${common[@]}"
  bench sdxl 0 --models tiny-sdxl --methods dpo,mapo,kto --levers none --full-fine-tune none "${common[@]}"
  bench flow 0 --models tiny-sd3 --methods dpo,mapo --levers none --full-fine-tune none "${common[@]}"
else
  if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device visible to torch (use --dry-run on a CPU machine)" >&2
    exit 1
  fi
  device=$(python -c "import torch; print(torch.cuda.get_device_name())")
  common=(--device cuda --precision bf16 --steps 3 --warmup 2)
  bench sd15 130 --models sd15 --latent 64 --pairs 4 --methods dpo,mapo,kto --compile on --full-fine-tune sd15 \
    "${common[@]}"
  bench sdxl 170 --models sdxl --latent 128 --pairs 2 --methods dpo,mapo,kto --compile off --full-fine-tune none \
    "${common[@]}"
  bench flow 60 --models sd35m --latent 128 --pairs 2 --methods dpo,mapo --levers none --compile off \
    --full-fine-tune none "${common[@]}"
fi

report="$out/gpu-check.md"
{
  echo "# benchmarks/gpu_check.sh on $device"
  echo
  echo "torch $(python -c 'import torch; print(torch.__version__)'), $(( $(date +%s) - started )) s in all."
  for part in sd15 sdxl flow; do
    echo
    cat "$out/$part.md"
  done
} > "$report"
echo "written: $report ($(( $(date +%s) - started )) s)" >&2
