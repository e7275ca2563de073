#!/usr/bin/env bash
# Everything the CUDA backend must show on a GPU machine, in one go (issue 3):
#   1. the backend op tests and the whole-model fixtures, CUDA against the CPU backend;
#   2. compute-sanitizer memcheck over the CUDA tests;
#   3. stories260K greedy text on CUDA equal to llama2.c's (when ../shared is there);
#   4. bench100m (F32): our CUDA engine against the PyTorch reference on the same GPU;
#   5. the CEPE-LLaMA-2-7B shapes in BF16 (random weights): encode 50 x 256, prefill 2048 with
#      the 50 passages in the encoder, decode, peak GPU memory; cached and absorbed
#      cross-attention side by side (--cross-attention).
# Usage: BUILD_DIR=build OUT_DIR=/tmp/gpu bench/run_gpu_checks.sh [steps...]   (default: all)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
out=${OUT_DIR:-/tmp/cepe-gpu-checks}
shared=${CEPE_SHARED_DIR:-../shared}
steps=${*:-"1 2 3 4 5"}
mkdir -p "$out"
export CEPE_SOURCE_DIR=$PWD CEPE_SHARED_DIR=$shared CEPE_BINARY=$PWD/$build/cepe PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
has() { [[ " $steps " == *" $1 "* ]]; }
if has 1; then
  echo "== 1. CUDA vs CPU: backend ops and model fixtures"
  "$build/tests/test_backends" >"$out/test_backends.log" 2>&1; echo "test_backends rc=$?"
  grep -E "PASSED|FAILED|SKIPPED \]" "$out/test_backends.log" | sort | uniq -c | head -20
  [[ -x "$build/tests/test_bert_embedder" ]] &&
    { "$build/tests/test_bert_embedder" >"$out/test_bert.log" 2>&1; echo "test_bert_embedder rc=$?"; }
fi
if has 2; then
  echo "== 2. compute-sanitizer memcheck"
  compute-sanitizer --tool memcheck --error-exitcode 9 "$build/tests/test_backends" \
    --gtest_filter='*cuda*:*Cuda*:*CUDA*' >"$out/memcheck.log" 2>&1
  echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$out/memcheck.log" | head -5
fi
if has 3; then
  echo "== 3. stories260K greedy on CUDA"
  src="$shared/models/stories260K"
  if [[ -f "$src/stories260K.bin" ]]; then
    "$build/cepe" convert llama2c --checkpoint "$src/stories260K.bin" --tokenizer "$src/tok512.bin" \
      --out /tmp/stories260K >/dev/null
    for dev in cpu cuda; do
      "$build/cepe" generate --model /tmp/stories260K --device "$dev" --unconditional \
        --max-new-tokens 200 --temperature 0 >"$out/stories-$dev.txt" 2>"$out/stories-$dev.err"
      echo "$dev rc=$?"
    done
    cmp "$out/stories-cpu.txt" "$out/stories-cuda.txt" && echo "stories260K: CUDA text == CPU text"
    head -c 300 "$out/stories-cuda.txt"; echo
  else
    echo "skip: $src not found"
  fi
fi
if has 4; then
  echo "== 4. bench100m F32: cepe CUDA vs PyTorch CUDA"
  m=/tmp/cepe-bench100m-F32
  [[ -f $m/config.json ]] || "$build/cepe" random-model --preset bench100m --dtype F32 --out $m >/dev/null
  "$build/bench/bench_engine" --model $m --device cuda | tee "$out/bench100m-cepe.json"
  python3 bench/torch_bench.py --model $m --threads 8 --device cuda | tee "$out/bench100m-torch.json"
fi
if has 5; then
  echo "== 5. CEPE-LLaMA-2-7B shapes, BF16, random weights (cepe: cached / absorbed; PyTorch bf16 SDPA)"
  m=/tmp/cepe-7b-BF16
  [[ -f $m/config.json ]] || "$build/cepe" random-model --preset cepe-llama2-7b --dtype BF16 --out $m >/dev/null
  common=(--model $m --device cuda --chunks 50 --chunk-len 256 --prefill 2048 --decode 32)
  "$build/bench/bench_engine" "${common[@]}" --cross-attention cached | tee "$out/bench7b-cached.json"
  for batch in 1 8 32; do
    "$build/bench/bench_engine" "${common[@]}" --cross-attention absorbed --batch $batch |
      tee "$out/bench7b-absorbed-b$batch.json"
  done
  python3 bench/torch_bench.py --model $m --threads 8 --device cuda --dtype bf16 --sdpa \
    --chunks 50 --chunk-len 256 --prefill 2048 --decode 32 | tee "$out/bench7b-torch.json"
  python3 bench/gpu_summary.py "$out" | tee "$out/summary.txt"
fi
