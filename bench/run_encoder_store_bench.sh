#!/usr/bin/env bash
# Encoder-state store (states layout, and the cross K/V layout) vs server-style cache vs live
# encoding, `cepe qa` on the bench100m shapes (random weights: answers are noise, the work per
# token is real), k = 10 and k = 20: time to first token, questions/s, peak RSS; store sizes and
# build times. Live encoding runs the CPU default (absorbed cross-attention); a live run in the
# cached form at k = 20 is the K/V store's exactness check (identical answers). Questions run one at a
# time by default, so a question's time to first token is its own work (retrieval, states,
# prefill), not a share of other sequences' decode steps.
#   [CONCURRENCY=1] bench/run_encoder_store_bench.sh [questions=200] [passages=400] [threads=0]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/squad_slice.sh
n=${1:-200}
np=${2:-400}
threads=${3:-0}
cepe=${CEPE:-build/cepe}
work=${STORE_BENCH_DIR:-/tmp/cepe-store-bench}
mkdir -p "$work"
if [[ ! -f "$work/index/manifest.json" ]]; then
  squad_slice ../shared/data/squad-train "$work" "$np" 3 0 4000
  "$cepe" random-model --preset bench100m --tokenizer "$work/spm.model" --out "$work/model" >/dev/null
  "$cepe" index build --input "$work/passages.jsonl" --out "$work/index" >/dev/null 2>&1
fi
# KEEP_STORE=1 re-uses the stores (and the build figures) of an earlier run.
if [[ -z ${KEEP_STORE:-} || ! -f "$work/encode-kv.txt" ]]; then
  rm -rf "$work/index/encoder_states"
  for layout in states kv; do
    { /usr/bin/time -f "%e" "$cepe" index encode --index "$work/index" --model "$work/model" \
      --threads "$threads" --layout "$layout" 2>&1 >"$work/encode-$layout.txt"; } |
      tail -n 1 >"$work/encode-$layout.wall"
  done
fi
for layout in states kv; do
  echo "store build ($layout): $(cat "$work/encode-$layout.txt") (wall $(cat "$work/encode-$layout.wall") s)"
done
store_file() { sed -n 's/.* into \(.*\.ces\): .*/\1/p' "$work/encode-$1.txt"; }
states_store=$(store_file states)
kv_store=$(store_file kv)
run() {  # k label extra-flags...
  local k=$1 label=$2
  shift 2
  "$cepe" qa --questions "$work/questions.jsonl" --index "$work/index" --model "$work/model" \
    --limit "$n" --k "$k" --decoder-passages 0 --max-new-tokens 8 --stop "@@never@@" \
    --threads "$threads" --concurrency "${CONCURRENCY:-1}" --out "$work/answers-$label-$k.jsonl" "$@" \
    >"$work/run-$label-$k.txt" 2>/dev/null
  local line
  line=$(grep "^pass" "$work/run-$label-$k.txt" | tail -n 1)
  local rss
  rss=$(grep "^peak RSS" "$work/run-$label-$k.txt" | awk '{print $3}')
  python3 - "$k" "$label" "$rss" "$line" <<'PY'
import re, sys
k, label, rss, line = sys.argv[1:5]
qps = float(re.search(r"\(([\d.]+) questions/s\)", line).group(1))
ttft = float(re.search(r"first token mean ([\d.]+) ms", line).group(1))
src = re.search(r"encoder states: (.*)$", line).group(1)
print(f"k={k:<3} {label:<14} ttft {ttft:9.1f} ms  {qps:7.3f} questions/s  peak RSS {float(rss):7.1f} MiB  [{src}]")
open(f"/tmp/cepe-store-bench-{label}-{k}.ttft", "w").write(f"{ttft}\n")
PY
}
for k in 10 20; do
  run "$k" live --encoder-store off
  run "$k" store --encoder-store "$states_store"
  run "$k" kv-store --encoder-store "$kv_store"
  run "$k" cache-pass2 --encoder-store off --encoder-cache-mb 1024 --passes 2
  python3 - "$k" <<'PY'
import sys
k = sys.argv[1]
t = {l: float(open(f"/tmp/cepe-store-bench-{l}-{k}.ttft").read())
     for l in ("live", "store", "kv-store", "cache-pass2")}
print(f"k={k}: time to first token live / store = {t['live'] / t['store']:.1f}x, "
      f"live / K/V store = {t['live'] / t['kv-store']:.1f}x, "
      f"live / cache (2nd pass) = {t['live'] / t['cache-pass2']:.1f}x")
PY
done
run 20 live-cached --encoder-store off --cross-attention cached
answers() { sort "$1" | python3 -c "import json,sys; [print(json.loads(l)['id'], json.loads(l)['answer']) for l in sys.stdin]"; }
cmp <(answers "$work/answers-live-20.jsonl") <(answers "$work/answers-store-20.jsonl") \
  && echo "k=20 answers identical with the f32 states store and live"
cmp <(answers "$work/answers-live-cached-20.jsonl") <(answers "$work/answers-kv-store-20.jsonl") \
  && echo "k=20 answers identical with the f32 K/V store and live (cached form)"
python3 - "$work/answers-live-20.jsonl" "$work/answers-kv-store-20.jsonl" <<'PY'
import json, sys
a, b = ({json.loads(l)["id"]: json.loads(l)["answer"] for l in open(f)} for f in sys.argv[1:3])
same = sum(a[i] == b.get(i) for i in a)
print(f"k=20 K/V store vs live (absorbed form): {same} of {len(a)} answers identical")
PY
