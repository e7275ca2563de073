#!/usr/bin/env bash
# Trains the reader's sentencepiece tokenizer with Debian's spm_train (package `sentencepiece`).
#
#   training/tokenizer.sh WORK [VOCAB]     reads WORK/spm_train.txt (data.py split), writes
#                                          WORK/tokenizer.model and WORK/tokenizer.vocab
#
# LLaMA-like: BPE with byte fallback (no text is ever <unk>), digits split one by one, no
# normalisation, whitespace kept as it is, unk=0 bos=1 eos=2 and no pad piece.
# One deliberate difference from LLaMA: add_dummy_prefix is off, so that the ids of a prompt
# followed by its answer are the prompt's ids followed by the answer's (see common.Tokenizer);
# the engine loads any sentencepiece model, so this changes nothing for it.
# Deterministic for a given input (a single trainer thread, no sampling of sentences).
set -euo pipefail
work="${1:?usage: tokenizer.sh WORK [VOCAB]}"
vocab="${2:-8000}"
[[ -s "$work/spm_train.txt" ]] || { echo "error: $work/spm_train.txt missing (run data.py split)" >&2; exit 1; }
command -v spm_train >/dev/null || { echo "error: spm_train not found (apt-get install sentencepiece)" >&2; exit 1; }

spm_train \
  --input="$work/spm_train.txt" \
  --model_prefix="$work/tokenizer" \
  --model_type=bpe \
  --vocab_size="$vocab" \
  --byte_fallback=true \
  --split_digits=true \
  --character_coverage=0.9995 \
  --normalization_rule_name=identity \
  --add_dummy_prefix=false \
  --remove_extra_whitespaces=false \
  --allow_whitespace_only_pieces=true \
  --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 \
  --input_sentence_size=0 \
  --max_sentence_length=16384 \
  --num_threads=1 \
  --minloglevel=1 >"$work/tokenizer.log" 2>&1 || { cat "$work/tokenizer.log" >&2; exit 1; }
echo "tokenizer: $work/tokenizer.model ($vocab pieces)"
