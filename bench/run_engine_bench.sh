#!/usr/bin/env bash
# Engine benchmark, side by side with the PyTorch reference on the same random ~150M-parameter
# CEPE model and the same thread count. Needs a build (scripts/build.sh) and, for the baseline,
# Debian's python3-torch (scripts/install-deps.sh --with-torch).
#   bench/run_engine_bench.sh [threads] [dtype]     (defaults: all cores, F32)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
dtype=${2:-F32}
build=${BUILD_DIR:-build}
model=${BENCH_MODEL_DIR:-/tmp/cepe-bench100m-$dtype}
if [[ ! -f "$model/config.json" ]]; then
  "$build/cepe" random-model --preset bench100m --dtype "$dtype" --out "$model"
fi
ours=$("$build/bench/bench_engine" --model "$model" --threads "$threads")
echo "cepe:    $ours"
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  echo "python3-torch not installed: no PyTorch baseline (scripts/install-deps.sh --with-torch)"
  exit 0
fi
theirs=$(/usr/bin/python3 bench/torch_bench.py --model "$model" --threads "$threads")
/usr/bin/python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rows = [("encode tokens/s", ours["encode"]["tokens_per_s"], theirs["encode"]["tokens_per_s"]),
        ("prefill tokens/s", ours["prefill"]["tokens_per_s"], theirs["prefill"]["tokens_per_s"]),
        ("decode tokens/s (vs official re-projection)", ours["decode"]["tokens_per_s"],
         theirs["decode_reproject"]["tokens_per_s"]),
        ("decode tokens/s (vs cached cross K/V)", ours["decode"]["tokens_per_s"],
         theirs["decode_cached_cross_kv"]["tokens_per_s"])]
print(f"\n{'figure':46} {'cepe':>10} {'pytorch':>10} {'ratio':>7}")
for name, a, b in rows:
    print(f"{name:46} {a:10.1f} {b:10.1f} {a / b:7.2f}x")
print(f"{'peak RSS MB (weights ' + str(ours['weights_mb']) + ' MB)':46} {ours['peak_rss_mb']:10.1f} "
      f"{theirs['peak_rss_mb']:10.1f} {ours['peak_rss_mb'] / theirs['peak_rss_mb']:7.2f}x")
PY
