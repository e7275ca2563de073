#!/usr/bin/env bash
# Golden end-to-end test on weights nobody in this project made: convert Karpathy's stories260K
# (llama2.c format) and check that greedy generation reproduces llama2.c's own output exactly.
#
# ../shared/models/stories260K/README.md: llama2.c's `run` at temperature 0 with 200 steps, the
# BOS prompt token fed at step 0, prints expected_greedy_200.txt. Its loop samples a token at
# every step, so that is 200 new tokens after BOS (an independent numpy forward pass of the
# converted weights confirms it: 200 tokens match, 199 stop one word short). Decoding drops the
# space after BOS, which is what decoding the ids after a BOS-only prompt does.
#
# Env: CEPE_BINARY (the cepe binary), CEPE_SHARED_DIR (../shared). Exit 77 = skipped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
shared="${CEPE_SHARED_DIR:-$here/../../shared}"
src="$shared/models/stories260K"
if [[ ! -f "$src/stories260K.bin" || ! -f "$src/tok512.bin" || ! -f "$src/expected_greedy_200.txt" ]]; then
  echo "skip: $src not found (the shared test data is only present in CI)"
  exit 77
fi
cepe="${CEPE_BINARY:-cepe}"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/cepe-stories260k-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

"$cepe" convert llama2c --checkpoint "$src/stories260K.bin" --tokenizer "$src/tok512.bin" \
  --out "$tmp/model" >"$tmp/convert.log" 2>&1 || {
  cat "$tmp/convert.log" >&2
  fail "cepe convert llama2c exited with an error"
}
for f in config.json model.safetensors tokenizer.model; do
  [[ -s "$tmp/model/$f" ]] || fail "convert did not write $f"
done

# A bad checkpoint must fail with a message that names the file.
if "$cepe" convert llama2c --checkpoint "$tmp/missing.bin" --tokenizer "$src/tok512.bin" \
  --out "$tmp/bad" >"$tmp/bad.log" 2>&1; then
  fail "convert of a missing checkpoint succeeded"
fi
grep -q "missing.bin: no such file" "$tmp/bad.log" || fail "unclear error: $(cat "$tmp/bad.log")"

# Greedy generation from BOS alone, 200 new tokens, text only on stdout.
"$cepe" generate --model "$tmp/model" --unconditional --max-new-tokens 200 --temperature 0 \
  >"$tmp/out.txt" 2>"$tmp/generate.log" || {
  cat "$tmp/generate.log" >&2
  fail "cepe generate exited with an error"
}

# generate ends its output with one newline; the golden file has none. Everything else must
# match byte for byte.
strip_final_newline() {
  local f="$1"
  if [[ "$(tail -c 1 "$f" | od -An -c | tr -d ' ')" == '\n' ]]; then
    head -c -1 "$f"
  else
    cat "$f"
  fi
}
strip_final_newline "$tmp/out.txt" >"$tmp/out_stripped.txt"
if ! cmp -s "$tmp/out_stripped.txt" "$src/expected_greedy_200.txt"; then
  echo "--- expected (expected_greedy_200.txt) vs +++ cepe generate:" >&2
  diff -u "$src/expected_greedy_200.txt" "$tmp/out_stripped.txt" >&2 || true
  fail "greedy output of stories260K differs from llama2.c's"
fi
echo "ok: stories260K greedy output matches llama2.c byte for byte"

# Log-probabilities leave the text as it is and list every generated token on stderr: the sum
# line, then one line per token whose greedy choice is the first of its alternatives.
"$cepe" generate --model "$tmp/model" --unconditional --max-new-tokens 200 --temperature 0 \
  --logprobs 3 >"$tmp/out_lp.txt" 2>"$tmp/lp.log" || {
  cat "$tmp/lp.log" >&2
  fail "cepe generate --logprobs exited with an error"
}
cmp -s "$tmp/out_lp.txt" "$tmp/out.txt" || fail "--logprobs changed the generated text"
grep -q '^\[logprobs\] 200 tokens, sum -' "$tmp/lp.log" || fail "no logprobs summary: $(head -3 "$tmp/lp.log")"
lines=$(grep -cE '^ +-?[0-9]+\.[0-9]{4} ' "$tmp/lp.log")
[[ $lines -eq 200 ]] || fail "expected 200 logprob lines, got $lines"
# Greedy: each token's figure is the first alternative's.
bad=$(grep -E '^ +-?[0-9]+\.[0-9]{4} ' "$tmp/lp.log" |
  awk -F'  [|] ' '{ sub(/^ +/, "", $1); fig = substr($1, 1, index($1, " ") - 1);
                   tok = substr($1, index($1, " ") + 1); if (index($2, tok " " fig) != 1) print }' |
  head -3)
[[ -z "$bad" ]] || fail "a greedy token is not its step's most likely: $bad"
echo "ok: --logprobs lists 200 tokens, each its step's most likely"
