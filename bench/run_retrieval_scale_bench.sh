#!/usr/bin/env bash
# Retrieval at corpus scale: a 1M-passage corpus made from SQuAD-train (its 18,896 passages plus
# sentence mixes of them, bench/make_scale_corpus.py, so term statistics stay those of real text
# and SQuAD's questions keep their gold passages among 981K distractors), indexed with BM25
# (Xapian) and, with EMBEDDER=bert:DIR, a dense FAISS IVF-PQ index; build time, size on disk, memory,
# single-query p50/p99 and batched throughput, recall@1/5/20/100 (bench_retrieval).
#   bench/run_retrieval_scale_bench.sh [extra bench_retrieval flags]
# Knobs: PASSAGES (1000000), EMBEDDER (none: BM25 only), DENSE (IVF1024,PQ64: the FAISS factory
# with EMBEDDER), BUILD_DIR (build), BENCH_WORK_DIR (/tmp/cepe-retrieval-scale; needs ~4 GB),
# SQUAD_DIR.
# Figures: docs/retrieval.md ("At 1M passages").
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
data=${SQUAD_DIR:-../shared/data/squad-train}
work=${BENCH_WORK_DIR:-/tmp/cepe-retrieval-scale}
n=${PASSAGES:-1000000}
dense=${DENSE-IVF1024,PQ64}
[[ -f "$data/passages.jsonl" && -f "$data/questions.jsonl" ]] ||
  { echo "no SQuAD data at $data (set SQUAD_DIR)"; exit 1; }
[[ -x $build/bench/bench_retrieval ]] || { echo "build bench_retrieval first ($build)"; exit 1; }
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
mkdir -p "$work"
corpus=$work/passages-$n.jsonl
[[ -f $corpus ]] || python3 bench/make_scale_corpus.py --source "$data/passages.jsonl" \
  --passages "$n" --out "$corpus"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "corpus: $corpus ($(wc -l <"$corpus") passages, $(du -h "$corpus" | cut -f1))"
configs=(--index bm25)
[[ -n ${EMBEDDER:-} && -n $dense ]] && configs+=(--embedder "$EMBEDDER" --index "dense:$dense")
/usr/bin/time -v "$build/bench/bench_retrieval" --passages "$corpus" --questions "$data/questions.jsonl" \
  --work "$work" "${configs[@]}" --sample 10000 --seed 1234 \
  --latency-queries 1000 --batch 32 --train-size 65536 --json "$work/results.json" "$@" \
  2> >(grep -v '^WARNING clustering' >&2)
