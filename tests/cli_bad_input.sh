#!/usr/bin/env bash
# Bad input never crashes `cepe`: every case below must end with exit status 1 and one line that
# names what was wrong, under AddressSanitizer + UndefinedBehaviorSanitizer (a separate build).
set -uo pipefail
src=${CEPE_SOURCE_DIR:?}
build=${CEPE_BUILD_DIR:?}/asan
if [[ -n "${CEPE_ASAN_BINARY:-}" ]]; then
  cepe=$CEPE_ASAN_BINARY  # a prebuilt binary (quick runs while developing)
else
echo "building cepe with ASan+UBSan in $build (this takes a few minutes)"
cmake -S "$src" -B "$build" -DCEPE_SANITIZE=ON -DCEPE_WITH_CUDA=OFF -DCEPE_BUILD_TESTS=OFF \
  -DCEPE_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$build.log" 2>&1 &&
  cmake --build "$build" -j"$(nproc)" --target cepe fuzz_targets >>"$build.log" 2>&1 ||
  { tail -40 "$build.log"; echo "FAIL: sanitizer build"; exit 1; }
cepe="$build/cepe"
fi
fuzz_dir=$(dirname "$cepe")/tests/fuzz
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:exitcode=99
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=98
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

# expect_error "name" "fragment of the message" cepe-args...
expect_error() {
  local name=$1 fragment=$2
  shift 2
  local out rc lines
  out=$("$cepe" "$@" 2>&1 >/dev/null)
  rc=$?
  lines=$(printf '%s\n' "$out" | grep -c .)
  if [[ $rc -ne 1 ]] || [[ $lines -ne 1 ]] || [[ "$out" != *"$fragment"* ]] ||
    [[ "$out" == *Sanitizer* ]] || [[ "$out" == *"runtime error"* ]]; then
    echo "FAIL: $name (exit $rc): expected one line containing '$fragment', got:"
    printf '%s\n' "$out" | head -20
    fail=1
  else
    echo "ok:   $name -> $out"
  fi
}

fixture="$src/tests/fixtures/gqa_cross_last2"
good="$tmp/good"
cp -r "$fixture" "$good"
echo '{"input_ids": [1, 5, 9]}' >"$tmp/in.json"
"$cepe" score --model "$good" --input "$tmp/in.json" >/dev/null ||
  { echo "FAIL: the good fixture does not score"; exit 1; }

expect_error "missing model dir" "not a directory" score --model "$tmp/nope" --input "$tmp/in.json"
mkdir -p "$tmp/noconfig" && cp "$good/model.safetensors" "$tmp/noconfig/"
expect_error "missing config.json" "config.json" score --model "$tmp/noconfig" --input "$tmp/in.json"
cp -r "$good" "$tmp/badjson" && echo '{"hidden_size": 64,' >"$tmp/badjson/config.json"
expect_error "invalid config JSON" "invalid JSON" score --model "$tmp/badjson" --input "$tmp/in.json"
cp -r "$good" "$tmp/nohidden" && sed -i 's/"hidden_size"/"hidden_sizeX"/' "$tmp/nohidden/config.json"
expect_error "missing config field" "hidden_size" score --model "$tmp/nohidden" --input "$tmp/in.json"
cp -r "$good" "$tmp/xattn" &&
  sed -i 's/"num_cross_attn_hidden_states": 1/"num_cross_attn_hidden_states": 3/' "$tmp/xattn/config.json"
expect_error "unsupported option" "num_cross_attn_hidden_states" score --model "$tmp/xattn" --input "$tmp/in.json"
cp -r "$good" "$tmp/shape" && sed -i 's/"intermediate_size": \([0-9]*\)/"intermediate_size": 7/' "$tmp/shape/config.json"
expect_error "tensor shape mismatch" "mlp.gate_proj.weight" score --model "$tmp/shape" --input "$tmp/in.json"
cp -r "$good" "$tmp/trunc" && truncate -s 50000 "$tmp/trunc/model.safetensors"
expect_error "truncated safetensors" "model.safetensors" score --model "$tmp/trunc" --input "$tmp/in.json"
cp -r "$good" "$tmp/garbage" && head -c 4096 /dev/urandom >"$tmp/garbage/model.safetensors"
expect_error "garbage safetensors" "model.safetensors" score --model "$tmp/garbage" --input "$tmp/in.json"
cp -r "$good" "$tmp/empty" && : >"$tmp/empty/model.safetensors"
expect_error "empty safetensors" "model.safetensors" score --model "$tmp/empty" --input "$tmp/in.json"

echo '{"input_ids": [1, 2' >"$tmp/bad.json"
expect_error "score: bad JSON" "invalid JSON" score --model "$good" --input "$tmp/bad.json"
echo '{"input_ids": [1, 100000]}' >"$tmp/oov.json"
expect_error "score: id outside vocab" "input_ids[1]" score --model "$good" --input "$tmp/oov.json"
echo '{"context_ids": [[1]]}' >"$tmp/noids.json"
expect_error "score: no input_ids" "input_ids" score --model "$good" --input "$tmp/noids.json"
echo '{"input_ids": [1], "context_ids": [[1, "x"]]}' >"$tmp/ctxtype.json"
expect_error "score: wrong context type" "context_ids[0][1]" score --model "$good" --input "$tmp/ctxtype.json"
echo '{"input_ids": [1], "context_ids": [[]]}' >"$tmp/ctxempty.json"
expect_error "score: empty chunk" "context_ids[0]" score --model "$good" --input "$tmp/ctxempty.json"
echo '{"input_ids": [1], "extra": 1}' >"$tmp/extra.json"
expect_error "score: unknown field" "extra" score --model "$good" --input "$tmp/extra.json"
expect_error "score: missing input file" "cannot open" score --model "$good" --input "$tmp/none.json"
expect_error "bad --threads" "--threads" score --model "$good" --input "$tmp/in.json" --threads abc
expect_error "bad --cross-attention" "--cross-attention" score --model "$good" --input "$tmp/in.json" \
  --cross-attention fast
expect_error "bad --stored-weights" "--stored-weights: unknown stored-weights mode 'mmap'" score \
  --model "$good" --input "$tmp/in.json" --stored-weights mmap
expect_error "--stored-weights mapped with a conversion" "--stored-weights: mapped reads" score \
  --model "$good" --input "$tmp/in.json" --stored-weights mapped --weights q8_0
expect_error "unknown flag" "--bogus" score --model "$good" --input "$tmp/in.json" --bogus 1

# generate needs a tokenizer: train a tiny one offline and attach it to a random model.
printf 'the quick brown fox jumps over the lazy dog.\n%.0s' {1..200} >"$tmp/corpus.txt"
spm_train --input="$tmp/corpus.txt" --model_prefix="$tmp/spm" --vocab_size=300 --hard_vocab_limit=false --model_type=bpe \
  --byte_fallback=true --minloglevel=2 >/dev/null 2>&1 || { echo "FAIL: spm_train"; exit 1; }
"$cepe" random-model --preset tiny --tokenizer "$tmp/spm.model" --out "$tmp/rnd" >/dev/null
expect_error "generate: empty prompt" "--prompt is empty" generate --model "$tmp/rnd" --prompt ""
expect_error "generate: context over limit" "over the limit" generate --model "$tmp/rnd" \
  --prompt "the fox" --context "the quick brown fox jumps over the lazy dog" --max-context-tokens 3
expect_error "generate: too many tokens" "over the limit" generate --model "$tmp/rnd" --prompt "the fox" \
  --max-new-tokens 5000
expect_error "generate: bad top-p" "--top-p" generate --model "$tmp/rnd" --prompt "the" --top-p 2
expect_error "generate: no tokenizer" "tokenizer.model" generate --model "$good" --prompt "the"
cp -r "$tmp/rnd" "$tmp/badtok" && head -c 100 "$tmp/spm.model" >"$tmp/badtok/tokenizer.model"
expect_error "generate: corrupt tokenizer" "tokenizer.model" generate --model "$tmp/badtok" --prompt "the"
# A tokenizer with more pieces than the model's vocab_size is refused before the weights are read
# (reading them first would stop at embed_tokens' shape, which says nothing of the tokenizer).
cp -r "$tmp/rnd" "$tmp/smallvocab" &&
  sed -i 's/"vocab_size": [0-9]*/"vocab_size": 100/' "$tmp/smallvocab/config.json"
expect_error "generate: tokenizer over vocab_size" "pieces but the model's vocab_size" \
  generate --model "$tmp/smallvocab" --prompt "the"
# The server logs (JSON lines on stderr) while it loads: its last line is the error.
printf '{"model": "%s", "port": 0}\n' "$tmp/smallvocab" >"$tmp/smallvocab.json"
out=$(timeout 60 "$cepe" serve --config "$tmp/smallvocab.json" 2>&1 >/dev/null)
rc=$?
if [[ $rc -ne 1 ]] || [[ "$(printf '%s\n' "$out" | tail -n 1)" != *"pieces but the model's vocab_size"* ]] ||
  [[ "$out" == *Sanitizer* ]] || [[ "$out" == *"runtime error"* ]]; then
  echo "FAIL: serve: tokenizer over vocab_size (exit $rc):"
  printf '%s\n' "$out" | tail -5
  fail=1
else
  echo "ok:   serve: tokenizer over vocab_size -> $(printf '%s\n' "$out" | tail -n 1)"
fi
"$cepe" generate --model "$tmp/rnd" --prompt "the fox" --context "the lazy dog" --max-new-tokens 4 \
  >/dev/null || { echo "FAIL: a good generate under sanitizers"; fail=1; }

# Index files that cannot crash us: one flipped byte anywhere in any file, or the file cut short,
# of a BM25 + HNSW (hybrid), a Flat and an IVF-PQ index is refused at open with one line naming
# the index, never read by FAISS or Xapian (the ASan build turns any bad read into a failure).
for i in $(seq 1 200); do
  printf '{"id": "p%d", "title": "T%d", "text": "castle moat lava orchestra number%d word%d."}\n' \
    "$i" "$((i % 17))" "$i" "$((i * 7 % 31))"
done >"$tmp/corpus.jsonl"
bert="bert:${CEPE_SOURCE_DIR:?}/tests/fixtures/bert_tiny"
for spec in "hidx hybrid HNSW8" "fidx dense Flat" "pidx dense IVF4,PQ8x4"; do
  read -r name retriever factory <<<"$spec"
  "$cepe" index build --retriever "$retriever" --embedder "$bert" --faiss "$factory" \
    --input "$tmp/corpus.jsonl" --out "$tmp/$name" >/dev/null 2>&1 ||
    { echo "FAIL: $retriever $factory index build"; exit 1; }
  "$cepe" index search --index "$tmp/$name" -k 3 "castle number5" >/dev/null ||
    { echo "FAIL: the good $factory index does not search"; fail=1; }
done
flips=0
cuts=0
for name in hidx fidx pidx; do
  for file in "$tmp/$name"/*; do
    base=$(basename "$file")
    size=$(stat -c %s "$file")
    for trial in 1 2 3 4 5 6 7 8; do
      rm -rf "$tmp/flip" && cp -r "$tmp/$name" "$tmp/flip"
      # Trials 1-6 flip one bit at a random offset; 7 and 8 cut the file at a random length.
      python3 - "$tmp/flip/$base" "$size" "$trial" <<'PY'
import os, random, sys
path, size, trial = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(size * 131 + trial)
at = rng.randrange(size)
if trial > 6:
    os.truncate(path, at)
else:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)[0]
        f.seek(at)
        f.write(bytes([b ^ (1 << rng.randrange(8))]))
PY
      what="flipped byte"
      ((trial > 6)) && what="cut short"
      expect_error "$name: $what in $base (trial $trial)" "$tmp/flip" index search --index "$tmp/flip" \
        -k 3 "castle number5"
      if ((trial > 6)); then cuts=$((cuts + 1)); else flips=$((flips + 1)); fi
    done
  done
done
echo "index damage: $flips byte flips and $cuts truncations over 3 indexes, each refused with one line"

# cepe index remove: bad ids and a damaged index are refused with one line, the index untouched.
expect_error "remove: unknown id" "unknown id 'nope' (not in the index" index remove --index "$tmp/fidx" p1 nope
printf 'p1\nbad id\n' >"$tmp/ids.txt"
expect_error "remove: unknown id in a file" "$tmp/ids.txt:2: unknown id 'bad id'" index remove --index "$tmp/fidx" --ids "$tmp/ids.txt"
expect_error "remove: missing id file" "cannot open" index remove --index "$tmp/fidx" --ids "$tmp/none.txt"
seq -f 'p%g' 1 200 >"$tmp/all.txt"
expect_error "remove: every passage" "would leave" index remove --index "$tmp/fidx" --ids "$tmp/all.txt"
rm -rf "$tmp/flip" && cp -r "$tmp/fidx" "$tmp/flip"
printf 'X' | dd of="$tmp/flip/faiss.index" bs=1 seek=200 conv=notrunc status=none
expect_error "remove: damaged index" "faiss.index" index remove --index "$tmp/flip" p1
"$cepe" index search --index "$tmp/fidx" -k 200 "castle" >"$tmp/all_hits.txt"
grep -q "\] p1 |" "$tmp/all_hits.txt" || { echo "FAIL: a refused removal changed the index"; fail=1; }

# The fuzz corpus (tests/fuzz/corpus: seeds and every input fuzzing once failed on) replayed
# under the sanitizers; each target checks its own promises (tests/fuzz/fuzz_util.h).
if [[ -d "$fuzz_dir" ]]; then
  for corpus in "$src"/tests/fuzz/corpus/*/; do
    target=$(basename "$corpus")
    if out=$("$fuzz_dir/$target" "$corpus" 2>&1); then
      echo "ok:   $target: $(printf '%s\n' "$out" | tail -1)"
    else
      echo "FAIL: $target on its corpus:"
      printf '%s\n' "$out" | tail -30
      fail=1
    fi
  done
else
  echo "FAIL: no fuzz targets beside $cepe (build them: --target fuzz_targets)"
  fail=1
fi

exit $fail
