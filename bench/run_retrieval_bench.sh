#!/usr/bin/env bash
# Retrieval benchmark from a fresh build over SQuAD-train passages: BM25 (Xapian); with
# EMBEDDER=bert:DIR (a BERT-family model, e.g. Contriever) also dense FAISS Flat (exact baseline),
# HNSW32 and IVF-PQ, and hybrid BM25 + Flat; build throughput, size on disk, query latency (single
# and batched), gold-passage recall@1/5/20/100.
#   bench/run_retrieval_bench.sh [extra bench_retrieval flags, e.g. --sample 0 for all questions]
# Figures: docs/retrieval.md.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-ret}
data=${SQUAD_DIR:-../shared/data/squad-train}
work=${BENCH_WORK_DIR:-/tmp/cepe-retrieval-bench}
[[ -f "$data/passages.jsonl" && -f "$data/questions.jsonl" ]] ||
  { echo "no SQuAD data at $data (set SQUAD_DIR)"; exit 1; }
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
cmake -S . -B "$build" -DCEPE_WITH_CUDA=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"${JOBS:-1}" --target bench_retrieval cepe
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
configs=(--index bm25)
if [[ -n ${EMBEDDER:-} ]]; then
  configs+=(--embedder "$EMBEDDER" --index dense:Flat --index dense:HNSW32 --index "dense:${IVFPQ:-IVF256,PQ64}"
    --index hybrid:Flat)
fi
"$build/bench/bench_retrieval" --passages "$data/passages.jsonl" --questions "$data/questions.jsonl" \
  --work "$work" "${configs[@]}" \
  --sample 10000 --seed 1234 --latency-queries 1000 --batch 32 --train-size 8192 \
  --json "$work/results.json" "$@" 2> >(grep -v '^WARNING clustering' >&2)
