#!/usr/bin/env bash
# The OpenAI-compatible endpoints of `cepe serve` driven by the real `openai` npm package
# (tests/openai_client.mjs): a tiny random CEPE model, a BM25 index over a small corpus, a
# server on a loopback port with an API key. The package is installed into the build folder;
# without node, npm or a reachable registry the test skips (77) with a message.
set -uo pipefail
cepe=${CEPE_BINARY:?}
src=${CEPE_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
build=${CEPE_BUILD_DIR:-$(dirname "$cepe")}
[[ -x "$cepe" ]] || { echo "SKIP: $cepe not built"; exit 77; }
command -v node >/dev/null || { echo "SKIP: node not installed"; exit 77; }
command -v npm >/dev/null || { echo "SKIP: npm not installed"; exit 77; }
export OMP_WAIT_POLICY=passive
# openai v4: the major whose engines field accepts the Node 18-20 that Debian ships.
prefix="$build/npm-openai"
if [[ ! -f "$prefix/node_modules/openai/package.json" ]]; then
  if ! timeout 300 npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error openai@4 \
    >"$build/npm-openai.log" 2>&1; then
    echo "SKIP: npm could not install the openai package (no registry?):"
    tail -5 "$build/npm-openai.log"
    exit 77
  fi
fi

tmp=$(mktemp -d)
server_pid=
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# Tokenizer: trained here when spm_train exists, else the shared llama2 one.
for c in Paris:France:Seine Rome:Italy:Tiber Berlin:Germany:Spree Madrid:Spain:Manzanares \
  Vienna:Austria:Danube Dublin:Ireland:Liffey; do
  IFS=: read -r city country river <<<"$c"
  for j in 1 2 3; do
    echo "{\"id\":\"$city-$j\",\"title\":\"$country\",\"text\":\"$city is the capital of $country. The river $river flows through $city. It has $j million people.\"}"
  done
done >"$tmp/passages.jsonl"
if command -v spm_train >/dev/null; then
  sed 's/.*"text":"\([^"]*\)".*/\1/' "$tmp/passages.jsonl" >"$tmp/corpus.txt"
  spm_train --input="$tmp/corpus.txt" --model_prefix="$tmp/spm" --vocab_size=400 \
    --hard_vocab_limit=false --model_type=bpe --byte_fallback=true --minloglevel=2 >/dev/null 2>&1 ||
    { echo "SKIP: spm_train failed"; exit 77; }
  tokenizer="$tmp/spm.model"
elif [[ -f "$src/../shared/models/llama2-tokenizer/tokenizer.model" ]]; then
  tokenizer="$src/../shared/models/llama2-tokenizer/tokenizer.model"
else
  echo "SKIP: neither spm_train nor the shared llama2 tokenizer found"; exit 77
fi
# Our own commands failing is a failure, not a skip.
"$cepe" random-model --preset tiny --tokenizer "$tokenizer" --out "$tmp/model" >"$tmp/rm.log" 2>&1 ||
  { echo "FAIL: cepe random-model"; cat "$tmp/rm.log"; exit 1; }
"$cepe" index build --input "$tmp/passages.jsonl" --out "$tmp/index" >"$tmp/ib.log" 2>&1 ||
  { echo "FAIL: cepe index build"; cat "$tmp/ib.log"; exit 1; }

"$cepe" serve --model "$tmp/model" --index "$tmp/index" --port 0 --threads 1 --io-threads 2 \
  --retrieval-threads 1 --model-name tiny-openai --api-key test-key-1 --max-new-tokens 64 \
  2>"$tmp/serve.log" &
server_pid=$!
port=
for _ in $(seq 1 600); do
  grep -q '"event":"ready"' "$tmp/serve.log" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { echo "FAIL: cepe serve exited"; cat "$tmp/serve.log"; exit 1; }
  sleep 0.1
done
port=$(sed -n 's/.*"event":"listening".*"port":\([0-9]*\).*/\1/p' "$tmp/serve.log" | head -1)
grep -q '"event":"ready"' "$tmp/serve.log" && [[ -n "$port" ]] ||
  { echo "FAIL: cepe serve did not become ready"; cat "$tmp/serve.log"; exit 1; }

OPENAI_NPM_PREFIX="$prefix" CEPE_URL="http://127.0.0.1:$port/v1" CEPE_KEY=test-key-1 \
  timeout 120 node "$src/tests/openai_client.mjs"
rc=$?
kill -TERM "$server_pid"
wait "$server_pid"
stop_rc=$?
server_pid=
if [[ $stop_rc -ne 0 ]]; then echo "FAIL: cepe serve exited $stop_rc on SIGTERM"; rc=1; fi
# The OpenAI routes are counted like /ask.
if [[ $rc -ne 0 ]]; then echo "--- server log (tail)"; tail -20 "$tmp/serve.log"; fi
exit $rc
