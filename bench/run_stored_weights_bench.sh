#!/usr/bin/env bash
# --stored-weights auto (matrices copied out of the file mapping while memory allows) against
# mapped (all read in place), on the 134M plain LLaMA of issue 14 with its F32 weights:
#   1. speed: bench_engine with each, alternating, ROUNDS times (decode reads every weight once a
#      step, so where they live shows there);
#   2. memory: two `cepe serve` processes on the one checkpoint, each having answered one /ask,
#      and their /proc/PID/smaps_rollup (Pss shares a page among the processes that map it).
#   bench/run_stored_weights_bench.sh [threads]
# Needs a build (cepe, bench_engine), curl, and the LLaMA-2 tokenizer in
# ${CEPE_SHARED_DIR:-../shared}/models/llama2-tokenizer for the servers (part 2 skips without it).
# Environment: ROUNDS (default 3), BUILD_DIR, BENCH_MODEL_DIR, CEPE_SHARED_DIR as elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
rounds=${ROUNDS:-3}
build=${BUILD_DIR:-build}
model=${BENCH_MODEL_DIR:-/tmp/cepe-bench134m-plain}
tokenizer=${CEPE_SHARED_DIR:-../shared}/models/llama2-tokenizer/tokenizer.model
if [[ ! -f "$model/config.json" ]]; then
  /usr/bin/python3 bench/make_bench_model.py --out "$model" --plain --dec-layers 12 >&2
fi

echo "== speed: bench_engine --stored-weights auto | mapped, $rounds rounds"
runs=()
for ((r = 1; r <= rounds; ++r)); do
  for mode in auto mapped; do
    line=$("$build/bench/bench_engine" --model "$model" --threads "$threads" --prompt-tokens 512 \
           --decode-tokens 128 --stored-weights "$mode" --json)
    echo "$mode: $line"
    runs+=("$mode" "$line")
  done
done
/usr/bin/python3 - "${runs[@]}" <<'PY'
import json, statistics, sys
a = sys.argv[1:]
by = {}
for i in range(0, len(a), 2):
    by.setdefault(a[i], []).append(json.loads(a[i + 1]))
figures = [("prefill tokens/s", lambda r: r["prefill"]["tokens_per_s"]),
           ("decode tokens/s after BOS", lambda r: r["decode_short"]["tokens_per_s"]),
           ("decode tokens/s after 512", lambda r: r["decode"]["tokens_per_s"])]
print("\n| figure (median, min-max) | auto | mapped | mapped / auto |\n|---|---|---|---|")
for name, get in figures:
    cells, med = [], []
    for mode in ("auto", "mapped"):
        v = [get(r) for r in by[mode]]
        med.append(statistics.median(v))
        cells.append(f"{med[-1]:.1f} ({min(v):.1f}-{max(v):.1f})")
    print(f"| {name} | {cells[0]} | {cells[1]} | {med[1] / med[0]:.2f}x |")
PY

echo
echo "== memory: two servers on one checkpoint"
if [[ ! -f $tokenizer ]]; then
  echo "skip: no tokenizer at $tokenizer (set CEPE_SHARED_DIR)"
  exit 0
fi
command -v curl >/dev/null || { echo "skip: curl not found"; exit 0; }
# The servers need tokenizer.model beside the weights: a directory of links.
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
ln -s "$(realpath "$model")"/* "$dir"/
cp "$tokenizer" "$dir/tokenizer.model"
body='{"question":"Where is Paris?","passages":[{"text":"Paris is the capital of France."}],"max_new_tokens":4}'
for mode in auto mapped; do
  pids=()
  ports=()
  for i in 1 2; do
    log=$dir/serve-$mode-$i.log
    "$build/cepe" serve --model "$dir" --port 0 --threads 1 --stored-weights "$mode" >"$log" 2>&1 &
    pids+=($!)
    port=
    for _ in $(seq 1 300); do
      port=$(grep -o '"port":[0-9]*' "$log" | head -1 | cut -d: -f2 || true)
      [[ -n $port ]] && curl -sf "localhost:$port/readyz" >/dev/null && break
      sleep 0.1
    done
    [[ -n $port ]] || { echo "cepe serve did not start:"; cat "$log"; exit 1; }
    ports+=("$port")
  done
  for port in "${ports[@]}"; do
    curl -sf -X POST "localhost:$port/ask" -H 'content-type: application/json' -d "$body" \
      >/dev/null || { echo "/ask failed on port $port"; exit 1; }
  done
  total=0
  for p in "${pids[@]}"; do
    read -r pss private shared < <(awk '/^Pss:/ {p = $2} /^Private_(Clean|Dirty):/ {v += $2}
      /^Shared_(Clean|Dirty):/ {s += $2} END {print int(p / 1024), int(v / 1024), int(s / 1024)}' \
      "/proc/$p/smaps_rollup")
    echo "$mode: pid $p Pss $pss MB (private $private MB, shared $shared MB)"
    total=$((total + pss))
  done
  echo "$mode: both servers together, Pss $total MB"
  kill "${pids[@]}"
  wait "${pids[@]}" 2>/dev/null || true
done
