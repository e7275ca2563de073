#!/usr/bin/env bash
# Shows that `cepe serve --threads N` runs the model on N cores: one long greedy generation
# (256 tokens, no stop) on the 134M plain LLaMA of bench/run_engine_bench.sh, and the server
# process's CPU time (utime + stime from /proc) over the request's wall time, and the same for the
# busiest thread. Exits 1 when the ratio is above N + 0.25, 77 when the model or tokenizer is
# missing.
#   bench/serve_cpu_usage.sh [threads] [model_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-1}
model=${2:-/tmp/cepe-bench134m-plain}
build=${BUILD_DIR:-build}
tok=../shared/models/llama2-tokenizer/tokenizer.model
[[ -f $model/config.json ]] || { echo "skip: $model missing (bench/make_bench_model.py --plain --dec-layers 12 --out $model)"; exit 77; }
[[ -f $model/tokenizer.model ]] || { [[ -f $tok ]] && cp "$tok" "$model/tokenizer.model"; } || { echo "skip: no tokenizer"; exit 77; }
port=$((20000 + RANDOM % 20000))
"$build/cepe" serve --model "$model" --threads "$threads" --port "$port" --max-new-tokens 256 \
  > /tmp/serve_cpu_usage.$$.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
thread_ticks() { for t in /proc/$pid/task/*; do echo "$(basename "$t") $(awk '{print $14 + $15}' "$t/stat")"; done; }
hz=$(getconf CLK_TCK)
before=$(cpu_ticks $pid); tb=$(thread_ticks)
t0=$(date +%s.%N)
curl -sf -X POST "http://127.0.0.1:$port/ask" -H 'content-type: application/json' \
  -d '{"question": "Tell a long story.", "passages": [{"title": "t", "text": "Once upon a time"}], "max_new_tokens": 256, "stop": []}' \
  > /tmp/serve_cpu_usage.$$.json
t1=$(date +%s.%N)
after=$(cpu_ticks $pid); ta=$(thread_ticks)
tokens=$(/usr/bin/python3 -c "import json,sys; print(json.load(open('/tmp/serve_cpu_usage.$$.json')).get('usage', {}).get('completion_tokens', '?'))" 2>/dev/null || echo "?")
/usr/bin/python3 - "$before" "$after" "$t0" "$t1" "$hz" "$threads" "$tokens" "$tb" "$ta" <<'PY'
import sys
b, a, t0, t1, hz, n = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
tokens = sys.argv[7]
tb = dict(l.split() for l in sys.argv[8].splitlines()); ta = dict(l.split() for l in sys.argv[9].splitlines())
busiest = max((int(v) - int(tb.get(k, 0)) for k, v in ta.items()), default=0)
wall = t1 - t0; cpu = (a - b) / hz
ratio = cpu / wall
print(f"cepe serve --threads {n}: {tokens} tokens in {wall:.2f} s wall, process CPU {cpu:.2f} s, "
      f"CPU/wall = {ratio:.2f} cores (busiest thread {busiest / hz / wall:.2f})")
sys.exit(0 if ratio <= n + 0.25 else 1)
PY
