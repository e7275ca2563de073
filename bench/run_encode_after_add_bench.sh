#!/usr/bin/env bash
# `cepe index encode` after `cepe index add`, beside encoding the grown index from scratch, in the
# same run: an index of the first N - M SQuAD passages (../shared) is encoded, grown by the last M,
# and encoded again (the stored passages' states are copied, only the new ones encoded); the
# baseline encodes a copy of the grown index that has no store. The two stores must be byte-equal.
# Then a bf16 store beside the f32 one (converted from it) against a bf16 store encoded from
# scratch, also byte-equal.
#   bench/run_encode_after_add_bench.sh [N] [M] [preset] [threads]    defaults: 3000 300 small 2
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3000}
m=${2:-300}
preset=${3:-small}
threads=${4:-2}
cepe=${CEPE:-build/cepe}
source scripts/squad_slice.sh
data=${SHARED:-../shared}/data/squad-train
[[ -f $data/passages.jsonl ]] || { echo "no $data/passages.jsonl (../shared)"; exit 1; }
command -v spm_train >/dev/null || { echo "spm_train (sentencepiece) not installed"; exit 1; }
work=${WORK:-/tmp/cepe-encode-add-bench}
rm -rf "$work"
mkdir -p "$work"
squad_slice "$data" "$work" "$n" 1000 1 8000
head -n $((n - m)) "$work/passages.jsonl" >"$work/first.jsonl"
tail -n "$m" "$work/passages.jsonl" >"$work/last.jsonl"
"$cepe" random-model --preset "$preset" --tokenizer "$work/spm.model" --out "$work/model" >/dev/null
enc=(--model "$work/model" --threads "$threads")
now() { date +%s.%N; }
"$cepe" index build --input "$work/first.jsonl" --out "$work/grown" >/dev/null 2>&1
"$cepe" index encode --index "$work/grown" "${enc[@]}" >"$work/first.log" 2>/dev/null
"$cepe" index add --index "$work/grown" --input "$work/last.jsonl" >/dev/null 2>&1
cp -r "$work/grown" "$work/fresh"
rm -rf "$work/fresh/encoder_states"
t0=$(now)
"$cepe" index encode --index "$work/fresh" "${enc[@]}" >"$work/fresh.log" 2>/dev/null
t1=$(now)
"$cepe" index encode --index "$work/grown" "${enc[@]}" >"$work/grown.log" 2>"$work/grown.err"
t2=$(now)
cat "$work/first.log" "$work/fresh.log" "$work/grown.log"
a=$(ls "$work"/fresh/encoder_states/*.ces)
cmp "$a" "$work/grown/encoder_states/$(basename "$a")" || { echo "FAIL: stores differ"; exit 1; }
echo "the store written after the add is byte-equal to the one encoded from scratch ($(stat -c %s "$a") bytes)"
cp -r "$work/grown" "$work/bf16-live"
rm -rf "$work/bf16-live/encoder_states"
t3=$(now)
"$cepe" index encode --index "$work/bf16-live" "${enc[@]}" --dtype bf16 >"$work/bf16-live.log" 2>/dev/null
t4=$(now)
"$cepe" index encode --index "$work/grown" "${enc[@]}" --dtype bf16 >"$work/bf16.log" 2>/dev/null
t5=$(now)
cat "$work/bf16-live.log" "$work/bf16.log"
b=$(ls "$work"/bf16-live/encoder_states/*.ces)
cmp "$b" "$work/grown/encoder_states/$(basename "$b")" || { echo "FAIL: bf16 stores differ"; exit 1; }
echo "the bf16 store converted from the f32 one is byte-equal to the one encoded"
awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v e="$t4" -v f="$t5" -v n="$n" -v m="$m" 'BEGIN {
  printf "encode all %d passages (baseline): %.1f s\n", n, b - a
  printf "encode after adding %d:            %.1f s (%.1fx faster)\n", m, c - b, (b - a) / (c - b)
  printf "bf16 store encoded (baseline):     %.1f s\n", e - d
  printf "bf16 store converted from f32:     %.1f s (%.1fx faster)\n", f - e, (e - d) / (f - e) }'
