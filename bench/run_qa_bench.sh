#!/usr/bin/env bash
# Batch QA throughput: the same questions answered with continuous batching (--concurrency N)
# and one at a time (--concurrency 1), on a slice of ../shared/data/squad-train with a random
# "small" CEPE model (~20M parameters; its answers are noise, the work per token is real).
#   bench/run_qa_bench.sh [questions=64] [concurrency=16] [threads=all]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/squad_slice.sh
n=${1:-64}
conc=${2:-16}
threads=${3:-0}
cepe=${CEPE:-build/cepe}
work=${QA_BENCH_DIR:-/tmp/cepe-qa-bench}
mkdir -p "$work"
if [[ ! -f "$work/index/manifest.json" ]]; then
  squad_slice ../shared/data/squad-train "$work" 2000 5 0 4000
  "$cepe" random-model --preset small --tokenizer "$work/spm.model" --out "$work/model"
  "$cepe" index build --input "$work/passages.jsonl" --out "$work/index" >/dev/null 2>&1
fi
run() {
  "$cepe" qa --questions "$work/questions.jsonl" --index "$work/index" --model "$work/model" \
    --limit "$n" --k 5 --decoder-passages 0 --max-new-tokens 25 --stop "@@never@@" \
    --threads "$threads" --concurrency "$1" --out "$work/answers-$1.jsonl" >/dev/null 2>&1
  python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['run']; print(r['questions_per_s'], r['tokens_per_s'])" \
    "$work/answers-$1.jsonl.summary.json"
}
read -r qps_b tps_b < <(run "$conc")
read -r qps_s tps_s < <(run 1)
cmp <(python3 -c "import json,sys; [print(json.loads(l)['id'], json.loads(l)['answer']) for l in sorted(open(sys.argv[1]))]" "$work/answers-$conc.jsonl") \
    <(python3 -c "import json,sys; [print(json.loads(l)['id'], json.loads(l)['answer']) for l in sorted(open(sys.argv[1]))]" "$work/answers-1.jsonl") \
  && echo "answers identical with and without batching"
printf '%-28s %12s %12s\n' "" "questions/s" "tokens/s"
printf '%-28s %12.2f %12.1f\n' "continuous batching ($conc)" "$qps_b" "$tps_b"
printf '%-28s %12.2f %12.1f\n' "one at a time" "$qps_s" "$tps_s"
python3 -c "print(f'speed-up: {$qps_b / $qps_s:.2f}x')"
