#!/usr/bin/env bash
# Engine benchmark, side by side with the PyTorch reference in the same run, for every load-time
# weights kind. Needs a build (bench_engine) and, for the baseline, Debian's python3-torch
# (scripts/install-deps.sh --with-torch).
#   bench/run_engine_bench.sh [threads] [kinds] [model]
#     threads  default 2
#     kinds    default "stored bf16 f16 q8_0 q4_0" (stored = F32 for the F32 checkpoint)
#     model    "plain" (default): the 134M plain LLaMA of issue 14 (dim 768, 12 layers, 12 heads,
#              FFN 2048, vocab 32000, untied), 512-token prompt, 128 decode tokens;
#              "cepe": the ~150M random CEPE model, 32 x 256 passages encoded, 512 + 128.
# Prints one JSON line per run and a table; figures on a shared machine are noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
kinds=${2:-"stored bf16 f16 q8_0 q4_0"}
which=${3:-plain}
build=${BUILD_DIR:-build}
if [[ $which == plain ]]; then
  model=${BENCH_MODEL_DIR:-/tmp/cepe-bench134m-plain}
  make_flags=(--plain --dec-layers 12)
  run_flags=(--prompt-tokens 512 --decode-tokens 128)
  torch_flags=(--chunks 0 --prefill 512 --decode 128)
else
  model=${BENCH_MODEL_DIR:-/tmp/cepe-bench150m-cepe}
  make_flags=()
  run_flags=(--chunks 32 --chunk-len 256 --prompt-tokens 512 --decode-tokens 128)
  torch_flags=(--chunks 32 --chunk-len 256 --prefill 512 --decode 128)
fi
if [[ ! -f "$model/config.json" ]]; then
  /usr/bin/python3 bench/make_bench_model.py --out "$model" "${make_flags[@]}" >&2
fi
results=()
for kind in $kinds; do
  line=$("$build/bench/bench_engine" --model "$model" --threads "$threads" --weights "$kind" \
         "${run_flags[@]}" --json)
  echo "cepe $kind: $line"
  results+=("$line")
done
theirs=null
if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  theirs=$(/usr/bin/python3 bench/torch_bench.py --model "$model" --threads "$threads" \
           "${torch_flags[@]}" | tr -d '\n')
  echo "pytorch fp32: $theirs"
else
  echo "python3-torch not installed: no PyTorch baseline (scripts/install-deps.sh --with-torch)"
fi
/usr/bin/python3 - "$theirs" "${results[@]}" <<'PY'
import json, sys
theirs = json.loads(sys.argv[1])
ours = [json.loads(a) for a in sys.argv[2:]]
cols = [o["weights"] for o in ours] + (["pytorch f32"] if theirs else [])
def row(name, get_ours, get_theirs):
    vals = [get_ours(o) for o in ours] + ([get_theirs(theirs)] if theirs else [])
    cells = " | ".join(f"{v:.1f}" if v is not None else "-" for v in vals)
    ratio = ""
    if theirs and get_theirs(theirs):
        ratio = " | " + " ".join(f"{get_ours(o) / get_theirs(theirs):.2f}x" for o in ours)
    print(f"| {name} | {cells}{ratio} |")
print("\n| figure | " + " | ".join(cols) + (" | cepe / pytorch" if theirs else "") + " |")
print("|---" * (len(cols) + 1 + (1 if theirs else 0)) + "|")
if ours[0]["encode"]["tokens"]:
    row("encode tokens/s", lambda o: o["encode"]["tokens_per_s"], lambda t: t["encode"]["tokens_per_s"])
row("prefill tokens/s (512-token prompt)", lambda o: o["prefill"]["tokens_per_s"],
    lambda t: t["prefill"]["tokens_per_s"])
row("decode tokens/s (128 tokens)", lambda o: o["decode_short"]["tokens_per_s"],
    lambda t: t["decode_short"]["tokens_per_s"])
row("decode tokens/s after a 512-token prompt", lambda o: o["decode"]["tokens_per_s"],
    lambda t: t["decode_cached_cross_kv"]["tokens_per_s"])
row("peak RSS MB", lambda o: o["peak_rss_mb"], lambda t: t["peak_rss_mb"])
# The memory roofline of short decode on this machine: its measured read bandwidth over the
# bytes of weights one step reads (no engine can beat it), and how close each kind gets.
print("| decode roofline tokens/s (read GB/s / weight bytes per step) | " +
      " | ".join(f'{o["decode_roofline_tokens_per_s"]:.1f} ({o["machine_read_gb_s"]:.1f} GB/s)'
                 for o in ours) + (" | - | |" if theirs else " |"))
print("| short decode as a share of that roofline | " +
      " | ".join(f'{o["decode_short"]["tokens_per_s"] / o["decode_roofline_tokens_per_s"]:.0%}'
                 for o in ours) + (" | - | |" if theirs else " |"))
# The compute side of prefill: FLOP/s in the decoder's linears and self-attention against what
# this machine's cores reach with independent F32 FMAs (int8 and bf16 kernels can pass it).
print("| prefill GFLOP/s (share of this box's F32 FMA peak) | " +
      " | ".join(f'{o["prefill_gflop_s"]:.1f} ({o["prefill_gflop_s"] / o["machine_fma_gflop_s"]:.0%}'
                 f' of {o["machine_fma_gflop_s"]:.0f})' for o in ours) +
      (" | - | |" if theirs else " |"))
PY
