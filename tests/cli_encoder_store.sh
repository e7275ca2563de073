#!/usr/bin/env bash
# `cepe index encode` end to end on a slice of ../shared/data/squad-train:
# - crash test: the build is killed (SIGKILL) mid-way, rerun, resumes from its last commit, and the
#   store is byte-equal to an uninterrupted build's; an interrupted build is never picked up;
# - `cepe qa` answers identically with the f32 store and with live encoding (--encoder-store off);
# - a store made with another chunk length is reported once and ignored (answers stay the same),
#   and named explicitly it is an error (exit 1) naming the difference;
# - a cross K/V store (--layout kv) is preferred to the states store and answers identically to
#   live encoding in the cached form, with no passage encoded live;
# - after `cepe index add`, encode copies the stored passages' states and encodes only the new
#   ones (and the batch they join), and the store is byte-equal to one encoded from scratch, for
#   the states and kv layouts and for q8_0 (rows are copied as bytes); a narrower dtype is converted
#   from the f32 store and a kv store projected from the f32 states store, each byte-equal to
#   encoding it; an index rebuilt in another
#   order, or with passages removed, reuses every remaining passage's states; a damaged store is
#   not copied from.
set -euo pipefail
cepe=${CEPE_BINARY:?}
source "${CEPE_SOURCE_DIR:?}/scripts/squad_slice.sh"
data=${CEPE_SHARED_DIR:-${CEPE_SOURCE_DIR:?}/../shared}/data/squad-train
if [[ ! -f "$data/passages.jsonl" ]]; then
  echo "skip: $data not found (the shared test data is only present in CI)"
  exit 77
fi
command -v spm_train >/dev/null || { echo "skip: spm_train (sentencepiece) not installed"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

squad_slice "$data" "$tmp" 600 37 24 2000
"$cepe" random-model --preset tiny --tokenizer "$tmp/spm.model" --out "$tmp/model" >/dev/null
"$cepe" index build --input "$tmp/passages.jsonl" --out "$tmp/index" >/dev/null 2>&1
cp -r "$tmp/index" "$tmp/index2"

# Small batches: many commits, so the kill lands between two of them.
enc=(--model "$tmp/model" --threads 1 --batch-tokens 300)
"$cepe" index encode --index "$tmp/index2" "${enc[@]}" >"$tmp/whole.txt" 2>/dev/null
cat "$tmp/whole.txt"

"$cepe" index encode --index "$tmp/index" "${enc[@]}" >/dev/null 2>&1 &
pid=$!
killed=0
for _ in $(seq 1 600); do
  ckpt=$(ls "$tmp"/index/encoder_states/*.partial.ckpt 2>/dev/null || true)
  if [[ -n "$ckpt" ]] && [[ $(awk '{print $NF}' "$ckpt") -ge 200 ]]; then
    kill -9 "$pid" && killed=1
    break
  fi
  sleep 0.05
done
wait "$pid" 2>/dev/null || true
[[ $killed == 1 ]] || { echo "FAIL: the build finished before it could be killed"; exit 1; }
rows=$(awk '{print $NF}' "$tmp"/index/encoder_states/*.partial.ckpt)
echo "killed after $rows committed passages"
if ls "$tmp"/index/encoder_states/*.ces >/dev/null 2>&1; then
  echo "FAIL: an unfinished store is visible"; exit 1
fi
"$cepe" index info "$tmp/index" | grep -q "^encoder    .*\.ces: a build in progress or interrupted, $rows passages committed" || {
  echo "FAIL: index info does not show the interrupted build"; "$cepe" index info "$tmp/index"; exit 1; }
# The interrupted build is not used: qa runs live (no store line) and works.
"$cepe" qa --questions "$tmp/questions.jsonl" --index "$tmp/index" --model "$tmp/model" \
  --k 3 --max-new-tokens 4 --threads 1 --limit 2 --out "$tmp/partial.jsonl" >/dev/null 2>"$tmp/partial.err"
if grep -q "^encoder store:" "$tmp/partial.err"; then
  echo "FAIL: an interrupted store was used"; exit 1
fi

"$cepe" index encode --index "$tmp/index" "${enc[@]}" >"$tmp/resume.txt" 2>"$tmp/resume.err"
grep -q "resuming at passage $rows" "$tmp/resume.err" || {
  echo "FAIL: did not resume at $rows"; cat "$tmp/resume.err"; exit 1; }
a=$(ls "$tmp"/index/encoder_states/*.ces)
b=$(ls "$tmp"/index2/encoder_states/*.ces)
[[ $(basename "$a") == $(basename "$b") ]] || { echo "FAIL: fingerprints differ"; exit 1; }
cmp "$a" "$b" || { echo "FAIL: resumed store differs from an uninterrupted build"; exit 1; }
echo "ok: resumed store is byte-equal to the uninterrupted build ($(stat -c %s "$a") bytes)"
ls "$tmp"/index/encoder_states/ | grep -q partial && { echo "FAIL: partial files left"; exit 1; }

# Answers: store vs live.
qa=(--questions "$tmp/questions.jsonl" --index "$tmp/index" --model "$tmp/model" --k 5
  --max-new-tokens 6 --threads 2 --concurrency 4)
"$cepe" qa "${qa[@]}" --out "$tmp/store.jsonl" >"$tmp/store.out" 2>"$tmp/store.err"
grep -q "^encoder store: .*(f32, states, 600 passages)" "$tmp/store.err" || {
  echo "FAIL: the store was not used"; cat "$tmp/store.err"; exit 1; }
# Every retrieved passage is in the store: the scheduler reads them all and encodes none live.
grep -Eq "encoder states: [1-9][0-9]* passages from the store, 0 from the cache, 0 encoded live" \
  "$tmp/store.out" || { echo "FAIL: the scheduler did not read the store"; cat "$tmp/store.out"; exit 1; }
"$cepe" qa "${qa[@]}" --encoder-store off --out "$tmp/live.jsonl" >/dev/null 2>"$tmp/live.err"
grep -q "^encoder store:" "$tmp/live.err" && { echo "FAIL: --encoder-store off used it"; exit 1; }
python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
load = lambda n: {r["id"]: r["answer"] for r in map(json.loads, open(f"{tmp}/{n}"))}
s, l = load("store.jsonl"), load("live.jsonl")
assert len(s) == len(l) > 0 and s == l, "answers differ between the f32 store and live encoding"
print(f"ok: {len(s)} answers identical with the f32 store and with live encoding")
PY

# A store with another chunk length: reported once, ignored; explicit: exit 1 with the reason.
"$cepe" qa "${qa[@]}" --chunk-tokens 64 --out "$tmp/c64.jsonl" >/dev/null 2>"$tmp/c64.err"
[[ $(grep -c "encoder store ignored: .*chunk length 256 tokens (this run uses 64)" "$tmp/c64.err") == 1 ]] || {
  echo "FAIL: mismatch not reported exactly once"; cat "$tmp/c64.err"; exit 1; }
grep -q "^encoder store:" "$tmp/c64.err" && { echo "FAIL: a mismatching store was used"; exit 1; }
set +e
"$cepe" qa "${qa[@]}" --chunk-tokens 64 --encoder-store "$a" --out "$tmp/x.jsonl" >/dev/null 2>"$tmp/x.err"
rc=$?
set -e
[[ $rc == 1 ]] && grep -q "does not fit this model: it was made with chunk length 256" "$tmp/x.err" || {
  echo "FAIL: explicit mismatching store: rc $rc"; cat "$tmp/x.err"; exit 1; }
echo "ok: a store with another chunk length is reported once and ignored; named, it is refused"

# Rerunning on a complete store does nothing.
"$cepe" index encode --index "$tmp/index" "${enc[@]}" | grep -q "is complete" || {
  echo "FAIL: a complete store was rebuilt"; exit 1; }
# The cross K/V layout: built beside the states store, preferred to it, same answers as live
# encoding read in the cached form (the same keys and values, attended alike).
"$cepe" index encode --index "$tmp/index" "${enc[@]}" --layout kv >"$tmp/kv.txt" 2>/dev/null
grep -q "encoded 600 passages (.* tokens, f32, kv) into" "$tmp/kv.txt" || { echo "FAIL: kv build"; cat "$tmp/kv.txt"; exit 1; }
[[ $(ls "$tmp"/index/encoder_states/*.ces | wc -l) == 2 ]] || { echo "FAIL: expected two stores"; exit 1; }
"$cepe" qa "${qa[@]}" --out "$tmp/kv.jsonl" >"$tmp/kv.out" 2>"$tmp/kv.err"
grep -q "^encoder store: .*(f32, kv, 600 passages)" "$tmp/kv.err" || {
  echo "FAIL: the K/V store was not preferred"; cat "$tmp/kv.err"; exit 1; }
grep -Eq "encoder states: [1-9][0-9]* passages from the store, 0 from the cache, 0 encoded live" \
  "$tmp/kv.out" || { echo "FAIL: the scheduler did not read the K/V store"; cat "$tmp/kv.out"; exit 1; }
"$cepe" qa "${qa[@]}" --encoder-store off --cross-attention cached --out "$tmp/live-cached.jsonl" \
  >/dev/null 2>&1
python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
load = lambda n: {r["id"]: r["answer"] for r in map(json.loads, open(f"{tmp}/{n}"))}
s, l = load("kv.jsonl"), load("live-cached.jsonl")
assert len(s) == len(l) > 0 and s == l, "answers differ between the f32 K/V store and live encoding"
print(f"ok: {len(s)} answers identical with the f32 K/V store and with live encoding (cached form)")
PY

# The index grows: the stored passages' states are copied, only the new ones encoded, and the
# store equals one encoded from scratch for the grown index, byte for byte.
sed -n 601,640p "$data/passages.jsonl" >"$tmp/more.jsonl"
# A narrower dtype beside an f32 store is converted from it, not encoded: byte-equal to encoding.
"$cepe" index encode --index "$tmp/index" "${enc[@]}" --dtype q8_0 >"$tmp/q8.txt" 2>/dev/null
grep -q "^encoded 600 passages (600 converted from the f32 store; " "$tmp/q8.txt" || {
  echo "FAIL: q8_0 not converted from the f32 store"; cat "$tmp/q8.txt"; exit 1; }
cp -r "$tmp/index" "$tmp/index5"
rm -rf "$tmp/index5/encoder_states"
"$cepe" index encode --index "$tmp/index5" "${enc[@]}" --dtype q8_0 >"$tmp/q8live.txt" 2>/dev/null
grep -q "^encoded 600 passages ([0-9]* tokens, q8_0, states)" "$tmp/q8live.txt" || {
  echo "FAIL: q8_0 encoded"; cat "$tmp/q8live.txt"; exit 1; }
q8=$(basename "$(ls "$tmp"/index5/encoder_states/*.ces)")
cmp "$tmp/index/encoder_states/$q8" "$tmp/index5/encoder_states/$q8" || {
  echo "FAIL: the q8_0 store converted from f32 differs from the one encoded"; exit 1; }
echo "ok: a q8_0 store converted from the f32 store is byte-equal to one encoded"
# The kv store above was projected from the f32 states store: byte-equal to encoding it.
grep -q "^encoded 600 passages (600 projected from the states store; .* tokens, f32, kv)" "$tmp/kv.txt" || {
  echo "FAIL: the kv store was not projected from the states store"; cat "$tmp/kv.txt"; exit 1; }
"$cepe" index encode --index "$tmp/index5" "${enc[@]}" --layout kv >"$tmp/kvlive.txt" 2>/dev/null
grep -q "^encoded 600 passages ([0-9]* tokens, f32, kv)" "$tmp/kvlive.txt" || {
  echo "FAIL: kv encoded"; cat "$tmp/kvlive.txt"; exit 1; }
for f in "$tmp"/index5/encoder_states/*.ces; do
  cmp "$f" "$tmp/index/encoder_states/$(basename "$f")" || {
    echo "FAIL: $(basename "$f"): the store made from stored rows differs from the one encoded"; exit 1; }
done
echo "ok: a kv store projected from the states store is byte-equal to one encoded"
"$cepe" index add --index "$tmp/index" --input "$tmp/more.jsonl" >/dev/null 2>&1
cp -r "$tmp/index" "$tmp/index3"
rm -rf "$tmp/index3/encoder_states"
# index info lists the three stores, each short of the grown index (and checks them with --verify).
[[ $("$cepe" index info "$tmp/index" --verify | grep -c "^encoder    .*, 600 passages, .*: the index has 640 (cepe index encode rewrites it)") == 3 ]] || {
  echo "FAIL: index info does not show the stores behind the index"; "$cepe" index info "$tmp/index"; exit 1; }
for layout in states kv; do
  for dtype in f32 q8_0; do
    [[ $layout == kv && $dtype == q8_0 ]] && continue
    "$cepe" index encode --index "$tmp/index" "${enc[@]}" --layout $layout --dtype $dtype \
      >"$tmp/grow.txt" 2>"$tmp/grow.err"
    grep -q "holds 600 of the index's 640 passages (the index grew): writing it again for all 640, copying the states of 600" \
      "$tmp/grow.err" || { echo "FAIL: $layout $dtype: no reuse"; cat "$tmp/grow.err"; exit 1; }
    # All but the batch row 600 falls in are copied (300-token batches hold one or two passages).
    copied=$(sed -En 's/^encoded 640 passages \(([0-9]+) copied from the previous store; .*/\1/p' "$tmp/grow.txt")
    [[ -n "$copied" && $copied -ge 590 && $copied -le 600 ]] || {
      echo "FAIL: $layout $dtype: copied '$copied' of 600"; cat "$tmp/grow.txt"; exit 1; }
    "$cepe" index encode --index "$tmp/index3" "${enc[@]}" --layout $layout --dtype $dtype >/dev/null 2>&1
  done
done
for f in "$tmp"/index3/encoder_states/*.ces; do
  cmp "$f" "$tmp/index/encoder_states/$(basename "$f")" || {
    echo "FAIL: the grown store $(basename "$f") differs from one encoded from scratch"; exit 1; }
done
echo "ok: after index add, $copied passages' states copied, the rest encoded; 3 stores byte-equal to fresh builds"
# The same passages indexed in another order: every passage's states are found and copied.
tac "$tmp/passages.jsonl" >"$tmp/reversed.jsonl"
cat "$tmp/more.jsonl" >>"$tmp/reversed.jsonl"
"$cepe" index build --input "$tmp/reversed.jsonl" --out "$tmp/index4" >/dev/null 2>&1
mkdir -p "$tmp/index4/encoder_states"
cp "$tmp"/index/encoder_states/*.ces "$tmp/index4/encoder_states/"
"$cepe" index encode --index "$tmp/index4" "${enc[@]}" >"$tmp/rev.txt" 2>"$tmp/rev.err"
grep -q "holds 640 passages, 640 of them still in the index (the index changed)" "$tmp/rev.err" &&
  grep -q "^encoded 640 passages (640 copied from the previous store; " "$tmp/rev.txt" || {
  echo "FAIL: reordered index"; cat "$tmp/rev.err" "$tmp/rev.txt"; exit 1; }
"$cepe" index encode --index "$tmp/index4" "${enc[@]}" | grep -q "is complete" || {
  echo "FAIL: the rewritten store is not complete"; exit 1; }
echo "ok: an index rebuilt in another order reuses all 640 passages' states"
# Passages removed (cepe index remove): the store still serves the others; rewritten, it copies
# every remaining passage's states and encodes none.
python3 -c 'import json, sys
for l in list(open(sys.argv[1]))[100:110]: print(json.loads(l)["id"])' "$tmp/passages.jsonl" >"$tmp/gone.ids"
"$cepe" index remove --index "$tmp/index" --ids "$tmp/gone.ids" | grep -q "removed 10 passages" || {
  echo "FAIL: index remove"; exit 1; }
"$cepe" index encode --index "$tmp/index" "${enc[@]}" >"$tmp/rm.txt" 2>"$tmp/rm.err"
grep -q "holds 640 passages, 630 of them still in the index (the index changed)" "$tmp/rm.err" &&
  grep -q "^encoded 630 passages (630 copied from the previous store; " "$tmp/rm.txt" || {
  echo "FAIL: encode after remove"; cat "$tmp/rm.err" "$tmp/rm.txt"; exit 1; }
echo "ok: after index remove, the store is rewritten from its own rows (630 copied, none encoded)"
# A damaged store is not copied from: its checksum fails, it is said so, and every passage is
# encoded (the result equals a build from scratch).
store=$(sed -En 's/^encoded 630 passages \(.* into (.*\.ces): .*/\1/p' "$tmp/rm.txt")
[[ -f $store ]] || { echo "FAIL: no store path in $tmp/rm.txt"; exit 1; }
printf '\x5a' | dd of="$store" bs=1 seek=$(($(stat -c %s "$store") - 7)) conv=notrunc status=none
sed -n 641,641p "$data/passages.jsonl" >"$tmp/one.jsonl"
"$cepe" index add --index "$tmp/index" --input "$tmp/one.jsonl" >/dev/null 2>&1
"$cepe" index encode --index "$tmp/index" "${enc[@]}" >"$tmp/bad.txt" 2>"$tmp/bad.err"
grep -q "not using it: .*data checksum mismatch" "$tmp/bad.err" &&
  grep -q "^encoded 631 passages ([0-9]* tokens, f32, states)" "$tmp/bad.txt" || {
  echo "FAIL: a damaged store was copied from"; cat "$tmp/bad.err" "$tmp/bad.txt"; exit 1; }
echo "ok: a damaged store is reported and not copied from; all 631 passages encoded"

echo "all encoder-store CLI checks passed"
