#!/usr/bin/env bash
# All three stages, evaluation and export in one device-machine call (each stage bounded by a
# time limit; a stage that stops early is exported from its checkpoint so the next can start).
#   training/run_device.sh WORK RUNS OUT [pretrain_s warmup_s qa_s eval_questions]
# WORK: data.py encode's output (data.npz, heldout.jsonl, tokenizer.model, meta.json).
# Calling it again with the same RUNS (a machine kept warm between calls) skips the stages that
# finished (RUNS/STAGE/DONE) and resumes the others from their checkpoints.
# Extra per-stage arguments: PRETRAIN_ARGS, WARMUP_ARGS, QA_ARGS (e.g. QA_ARGS="--steps 6000");
# PYTHON: the interpreter with torch (default python3).
set -uo pipefail
cd "$(dirname "$0")"
work=$1 runs=$2 out=$3
t_pre=${4:-150} t_warm=${5:-100} t_qa=${6:-180} n_eval=${7:-300}
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
mkdir -p "$runs" "$out"
stage() {  # name init time_limit [extra...]
  local name=$1 init=$2 limit=$3
  shift 3
  if [[ -f "$runs/$name/DONE" ]]; then
    echo "$name: done in an earlier call"
    return
  fi
  local t0=$SECONDS
  "$py" train.py "$name" --work "$work" --run "$runs/$name" ${init:+--init "$init"} \
    --time-limit "$limit" --log-every 50 --resume "$@" >>"$out/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $((SECONDS - t0)) s; $(tail -n 2 "$runs/$name/log.jsonl" 2>/dev/null | tr '\n' ' ')"
  if [[ $rc == 0 ]]; then
    touch "$runs/$name/DONE"
  elif [[ -f "$runs/$name/ckpt.pt" ]]; then
    "$py" export.py --checkpoint "$runs/$name/ckpt.pt" --out "$runs/$name/final" \
      --max-shard-mb 15 >>"$out/$name.log" 2>&1
  fi
  cp "$runs/$name/log.jsonl" "$out/$name.log.jsonl" 2>/dev/null
}
# shellcheck disable=SC2086  # the *_ARGS are word lists on purpose
{
  stage pretrain "" "$t_pre" ${PRETRAIN_ARGS:-}
  stage warmup "$runs/pretrain/final" "$t_warm" ${WARMUP_ARGS:-}
  stage qa "$runs/warmup/final" "$t_qa" ${QA_ARGS:-}
}
"$py" evaluate.py --model "$runs/qa/final" --work "$work" --settings 0,10,20 --limit "$n_eval" \
  --out "$out/eval.json" >"$out/eval.log" 2>&1
echo "evaluate: rc=$?"; tail -n 5 "$out/eval.log"
