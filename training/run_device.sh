#!/usr/bin/env bash
# All three stages, evaluation and export in one device-machine call (each stage bounded by a
# time limit; a stage that stops early is exported from its checkpoint so the next can start).
#   training/run_device.sh WORK RUNS OUT [pretrain_s warmup_s qa_s eval_questions]
# WORK: data.py encode's output (data.npz, heldout.jsonl, tokenizer.model, meta.json).
set -uo pipefail
cd "$(dirname "$0")"
work=$1 runs=$2 out=$3
t_pre=${4:-150} t_warm=${5:-100} t_qa=${6:-180} n_eval=${7:-300}
export PYTHONUNBUFFERED=1
mkdir -p "$runs" "$out"
stage() {  # name init time_limit [extra...]
  local name=$1 init=$2 limit=$3
  shift 3
  local t0=$SECONDS
  python3 train.py "$name" --work "$work" --run "$runs/$name" ${init:+--init "$init"} \
    --time-limit "$limit" --log-every 50 "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $((SECONDS - t0)) s; $(tail -n 2 "$runs/$name/log.jsonl" 2>/dev/null | tr '\n' ' ')"
  if [[ ! -f "$runs/$name/final/config.json" && -f "$runs/$name/ckpt.pt" ]]; then
    python3 export.py --checkpoint "$runs/$name/ckpt.pt" --out "$runs/$name/final" >>"$out/$name.log" 2>&1
  fi
  cp "$runs/$name/log.jsonl" "$out/$name.log.jsonl" 2>/dev/null
}
stage pretrain "" "$t_pre"
stage warmup "$runs/pretrain/final" "$t_warm"
stage qa "$runs/warmup/final" "$t_qa"
python3 evaluate.py --model "$runs/qa/final" --work "$work" --settings 0,10,20 --limit "$n_eval" \
  --out "$out/eval.json" >"$out/eval.log" 2>&1
echo "evaluate: rc=$?"; tail -n 5 "$out/eval.log"
