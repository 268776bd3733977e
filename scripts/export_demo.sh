#!/usr/bin/env bash
# Trains the embedded digits demo once per activation (unless its workdir has a checkpoint),
# exports each run to TFLite float32 and int8, and measures both models: the figures of
# docs/EXPORT.md. Results: one JSON line per model in ROOT/results.jsonl.
#   scripts/export_demo.sh [ROOT] [ACTIVATION ...]     (default /tmp/mnv3_export_demo, all three)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-/tmp/mnv3_export_demo}
shift || true
activations=${*:-hard_swish relu swish}
py=.venv/bin/python
mkdir -p "$root"
for act in $activations; do
  run=$root/$act
  [ -d "$run/best" ] || $py main.py --config=configs/demo.py:activation="$act" --workdir="$run"
  [ -f "$run.export/export.json" ] \
    || $py -m mnv3_jax.export --workdir="$run" --out="$run.export" --int8
  # The trainer's EMA top-1 on the same 300 test images, for comparison.
  flax_top1=$(cat "$run"/best/*/metrics/metrics \
    | $py -c 'import json, sys; print(json.load(sys.stdin)["ema_top1"])')
  $py -m mnv3_jax.export.benchmark --export_dir="$run.export" --runs=200 \
    | sed "s/^{/{\"activation\": \"$act\", \"flax_ema_top1\": $flax_top1, /" \
    | tee -a "$root/results.jsonl"
done
