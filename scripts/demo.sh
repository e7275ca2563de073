#!/usr/bin/env bash
# The main job on built-in defaults, offline: index a corpus, start the QA server, ask it questions.
#  1. corpus: the project's own documentation (README.md, docs/*.md), split into ~100-word passages;
#  2. model: models/demo when present (the trained reader, see training/README.md); otherwise a
#     random-weight CEPE model with a tokenizer trained on the corpus (its answers are noise: the
#     point is the pipeline - retrieval, parallel encoding, cross-attending decoding, HTTP);
#  3. `cepe index build` (BM25, the default), `cepe serve` on a free loopback port,
#     two `POST /ask` requests (one plain, one streamed), then SIGTERM (graceful shutdown);
#  4. with ../shared/models/stories260K (a real pretrained tiny LLaMA), `cepe generate` tells a story.
set -euo pipefail
cd "$(dirname "$0")/.."
cepe=${CEPE:-build/cepe}
work=${DEMO_DIR:-/tmp/cepe-demo}
rm -rf "$work/corpus" && mkdir -p "$work/corpus"
cp README.md docs/*.md "$work/corpus/"

model=models/demo
if [[ ! -f "$model/config.json" ]]; then
  model="$work/random"
  if [[ ! -f "$model/tokenizer.model" ]]; then
    cat "$work"/corpus/*.md >"$work/corpus.txt"
    spm_train --input="$work/corpus.txt" --model_prefix="$work/spm" --vocab_size=1000 \
      --model_type=bpe --byte_fallback=true --hard_vocab_limit=false --character_coverage=1.0 \
      --minloglevel=2 >/dev/null
    "$cepe" random-model --preset tiny --tokenizer "$work/spm.model" --out "$model"
  fi
  echo "(no trained model in models/demo: a random-weight model answers, expect noise)"
fi

echo "== cepe index build (the project's docs) =="
"$cepe" index build --input "$work/corpus" --out "$work/index" --overwrite

echo "== cepe serve =="
log="$work/serve.log"
"$cepe" serve --model "$model" --index "$work/index" --host 127.0.0.1 --port 0 --threads 2 \
  2>"$log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
port=""
for _ in $(seq 1 300); do
  port=$(grep -o '"event":"listening"[^}]*"port":[0-9]*' "$log" 2>/dev/null | grep -o '[0-9]*$' || true)
  if [[ -n "$port" ]] && curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then break; fi
  kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.2
done
echo "listening on 127.0.0.1:$port"
ask() {
  echo "-- POST /ask $1"
  curl -sS -X POST "http://127.0.0.1:$port/ask" -H 'Content-Type: application/json' -d "$1" |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
if "error" in r: sys.exit("error: " + json.dumps(r["error"]))
print("answer:", repr(r["answer"]), "(" + r["finish_reason"] + ")")
for p in r["passages"]:
    print("  [%d] %.3f %s: %s..." % (p["rank"], p["score"], p["title"], p["text"][:90]))
t = r["timings"]
print("  timings ms: retrieve %.1f encode %.1f prefill %.1f decode %.1f total %.1f" % (
    t["retrieve_ms"], t["encode_ms"], t["prefill_ms"], t["decode_ms"], t["total_ms"]))'
}
ask '{"question": "How does the server limit hostile clients?", "k": 3, "max_new_tokens": 24}'
ask '{"question": "What does the encoder read in parallel?", "k": 4, "decoder_passages": 1, "max_new_tokens": 16, "temperature": 0}'
echo "-- POST /ask with \"stream\": true (Server-Sent Events)"
curl -sS -N -X POST "http://127.0.0.1:$port/ask" -H 'Content-Type: application/json' \
  -d '{"question": "Which embedders can build an index?", "k": 2, "max_new_tokens": 8, "stream": true}' \
  >"$work/stream.txt"
cut -c1-150 "$work/stream.txt" | grep -v '^$' | head -24
kill -TERM $server
wait $server && echo "server stopped cleanly (SIGTERM)"
trap - EXIT

stories=../shared/models/stories260K
if [[ -f "$stories/stories260K.bin" ]]; then
  "$cepe" convert llama2c --checkpoint "$stories/stories260K.bin" \
    --tokenizer "$stories/tok512.bin" --out "$work/stories260K" >/dev/null
  echo "== cepe generate (stories260K, a real pretrained tiny LLaMA, greedy) =="
  "$cepe" generate --model "$work/stories260K" --prompt "Once upon a time" --echo \
    --max-new-tokens 120 --stats
fi
