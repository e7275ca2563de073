#!/usr/bin/env bash
# Cross-attention modes side by side on the same random ~150M-parameter CEPE model: "cached"
# (per-layer W_k·E / W_v·E kept per request) against "absorbed" (only the encoder states E kept;
# W_k folded into the query, W_v applied after the softmax), for several context sizes.
#   bench/run_cross_attention_bench.sh [threads] [chunks...]     (defaults: all cores; 16 32 64)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
shift || true
chunk_counts=("$@")
((${#chunk_counts[@]})) || chunk_counts=(16 32 64)
build=${BUILD_DIR:-build}
model=${BENCH_MODEL_DIR:-/tmp/cepe-bench100m-F32}
if [[ ! -f "$model/config.json" ]]; then
  "$build/cepe" random-model --preset bench100m --dtype F32 --out "$model"
fi
results=()
for chunks in "${chunk_counts[@]}"; do
  for mode in cached absorbed; do
    r=$("$build/bench/bench_engine" --model "$model" --threads "$threads" --chunks "$chunks" \
      --prefill 512 --decode 32 --cross-attention "$mode")
    echo "$mode $chunks: $r" >&2
    results+=("$chunks $mode $r")
  done
done
printf '%s\n' "${results[@]}" | python3 bench/cross_attention_table.py
