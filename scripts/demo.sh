#!/usr/bin/env bash
# The main job on built-in defaults: makes a model offline and runs `cepe generate` on it.
# - With ../shared/models/stories260K (a real pretrained tiny LLaMA) it converts it and tells a story.
# - Without it, it trains a small sentencepiece tokenizer on the project's docs, writes a random
#   CEPE model and runs generation with encoder context (the text is noise: the weights are random).
set -euo pipefail
cd "$(dirname "$0")/.."
cepe=${CEPE:-build/cepe}
work=${DEMO_DIR:-/tmp/cepe-demo}
mkdir -p "$work"
stories=../shared/models/stories260K
if [[ -f "$stories/stories260K.bin" ]]; then
  "$cepe" convert llama2c --checkpoint "$stories/stories260K.bin" \
    --tokenizer "$stories/tok512.bin" --out "$work/stories260K"
  echo "== cepe generate (stories260K, greedy) =="
  "$cepe" generate --model "$work/stories260K" --prompt "Once upon a time" --echo \
    --max-new-tokens 120 --stats
else
  echo "../shared/models/stories260K not found: using a random CEPE model instead"
  if [[ ! -f "$work/random/tokenizer.model" ]]; then
    cat README.md docs/*.md > "$work/corpus.txt"
    spm_train --input="$work/corpus.txt" --model_prefix="$work/spm" --vocab_size=1000 \
      --model_type=bpe --byte_fallback=true --hard_vocab_limit=false --character_coverage=1.0 --minloglevel=2 >/dev/null
    "$cepe" random-model --preset tiny --tokenizer "$work/spm.model" --out "$work/random"
  fi
  echo "== cepe generate (random weights: expect noise) =="
  "$cepe" generate --model "$work/random" --prompt "The encoder reads" --echo \
    --context "$(head -c 2000 README.md)" --chunk-tokens 64 --max-new-tokens 40 --stats
fi
