#!/usr/bin/env bash
# The training pipeline (training/) end to end on a tiny slice of ../shared/data/squad-train, on
# the CPU: whole-article split and BM25 distractors, a small spm_train tokenizer, a few steps of
# each stage on a tiny model (the pretraining loss must fall, the warmup must start learning to
# use the encoder), exact resume from a checkpoint, export in the HF CEPE layout, and the issue's
# check that the C++ engine's scores on the exported model equal the PyTorch model's.
#
# Env: CEPE_BINARY (the cepe binary), CEPE_SOURCE_DIR, CEPE_SHARED_DIR (../shared),
# CEPE_PYTHON (default /usr/bin/python3). Exit 77 = skipped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${CEPE_SOURCE_DIR:-$here/..}"
shared="${CEPE_SHARED_DIR:-$src/../shared}"
py="${CEPE_PYTHON:-/usr/bin/python3}"
cepe="${CEPE_BINARY:-}"
if [[ -z "$cepe" ]]; then
  for c in "$src/build-main/cepe" "$src/build/cepe" /tmp/cepe; do [[ -x "$c" ]] && { cepe="$c"; break; }; done
fi

if [[ ! -s "$shared/data/squad-train/passages.jsonl" || ! -s "$shared/data/squad-train/questions.jsonl" ]]; then
  echo "skip: $shared/data/squad-train not found (the shared test data is only present in CI)"
  exit 77
fi
if ! "$py" -c "import torch, numpy" 2>/dev/null; then
  echo "skip: $py has no torch/numpy (scripts/install-deps.sh --with-torch installs them)"
  exit 77
fi
if ! command -v spm_train >/dev/null || ! command -v spm_encode >/dev/null; then
  echo "skip: spm_train/spm_encode not found (Debian package sentencepiece)"
  exit 77
fi
[[ -n "$cepe" && -x "$cepe" ]] || { echo "FAIL: no cepe binary (set CEPE_BINARY)" >&2; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/cepe-training-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
# One thread: the CI box has two cores and other tests run beside this one.
export OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
t="$src/training"
W="$tmp/work"
start=$SECONDS
step() { echo "--- $* ($((SECONDS - start)) s)"; }

step "data: 6 articles, 1 held out"
"$py" "$t/data.py" split --shared "$shared" --work "$W" --limit-articles 6 --holdout-articles 1 \
  >"$tmp/split.log" || { cat "$tmp/split.log" >&2; fail "data.py split"; }
"$t/tokenizer.sh" "$W" 600 || fail "tokenizer.sh"
"$py" "$t/data.py" encode --work "$W" >"$tmp/encode.log" || { cat "$tmp/encode.log" >&2; fail "data.py encode"; }
"$py" - "$W" <<'EOF' || fail "data checks"
import json, sys, numpy as np
w = sys.argv[1]
split, meta = json.load(open(w + "/split.json")), json.load(open(w + "/meta.json"))
z = np.load(w + "/data.npz")
held = [json.loads(l) for l in open(w + "/heldout.jsonl")]
qs = [json.loads(l) for l in open(w + "/questions.jsonl")]
ps = [json.loads(l) for l in open(w + "/passages.jsonl")]
titles = {p["idx"]: p["title"] for p in ps}
held_titles = set(split["heldout_articles"])
assert len(held_titles) == 1 and split["articles"] == 6, split
# Whole articles: every passage of a held-out article is held out, and no other.
assert all((p["split"] == "heldout") == (p["title"] in held_titles) for p in ps)
assert all((q["split"] == "heldout") == (titles[q["gold"]] in held_titles) for q in qs)
assert len(held) == split["heldout_questions"] > 0
# Distractors never include the gold passage; training questions only see training passages.
d = z["q_distractors"]
for i, q in enumerate(qs):
    assert q["gold"] not in d[i], i
    if q["split"] == "train":
        assert all(ps[j]["split"] == "train" for j in d[i]), i
assert meta["tokenizer_vocab"] == 600 and meta["prompt_target_mismatch_of_200"] == 0, meta
assert z["pt_train"].max() < 600 and z["pt_train"][0] == 1, "BOS-first token stream"
print("ok: split by whole article, distractors, token ids")
EOF

step "model.py against the reference"
"$py" "$t/test_model.py" --tokenizer "$W/tokenizer.model" || fail "test_model.py"

TINY=(--dec-layers 2 --dec-hidden 64 --dec-heads 4 --dec-kv-heads 2 --dec-ffn 128 --max-pos 128
      --threads 1 --device cpu --log-every 1)
PRE=(pretrain --work "$W" "${TINY[@]}" --steps 30 --batch-size 8 --seq-len 64 --lr 3e-3 --warmup 5
     --dropout 0 --ckpt-every 10)

step "pretrain: 30 steps"
"$py" "$t/train.py" "${PRE[@]}" --run "$tmp/pre" >"$tmp/pre.log" 2>&1 || { cat "$tmp/pre.log" >&2; fail "pretrain"; }

step "pretrain again, interrupted at step 20, then --resume"
rc=0
"$py" "$t/train.py" "${PRE[@]}" --run "$tmp/pre2" --stop-at 20 >"$tmp/pre2a.log" 2>&1 || rc=$?
[[ $rc == 75 ]] || { cat "$tmp/pre2a.log" >&2; fail "an interrupted stage must exit 75, got $rc"; }
[[ ! -e "$tmp/pre2/final" ]] || fail "an interrupted stage must not export final/"
"$py" "$t/train.py" "${PRE[@]}" --run "$tmp/pre2" --resume >"$tmp/pre2b.log" 2>&1 || { cat "$tmp/pre2b.log" >&2; fail "resume"; }
grep -q "resume: pretrain from step 20 of 30" "$tmp/pre2b.log" || fail "resume did not start at step 20: $(head -3 "$tmp/pre2b.log")"

"$py" - "$tmp" <<'EOF' || fail "loss / resume checks"
import json, sys
tmp = sys.argv[1]
a = [json.loads(l) for l in open(tmp + "/pre/log.jsonl")]
b = [json.loads(l) for l in open(tmp + "/pre2/log.jsonl")]
la = [r["loss"] for r in a]
print("pretrain loss:", " ".join(f"{x:.3f}" for x in la))
assert [r["step"] for r in a] == list(range(1, 31)), "one log line per step"
first, last = sum(la[:5]) / 5, sum(la[-5:]) / 5
assert last < first - 0.3, f"pretraining loss did not fall: first 5 {first:.3f}, last 5 {last:.3f}"
# The resumed run logs steps 1..30 once each and, batches being a function of the step,
# repeats the uninterrupted run's losses.
assert [r["step"] for r in b] == list(range(1, 31)), [r["step"] for r in b]
diff = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
assert diff < 1e-4, f"resumed run differs from the uninterrupted one by {diff}"
print(f"ok: loss {first:.3f} -> {last:.3f}; resumed run matches the uninterrupted one (max diff {diff:.1e})")
EOF
cmp -s "$tmp/pre/final/model.safetensors" "$tmp/pre2/final/model.safetensors" ||
  fail "interrupted+resumed pretraining exported different weights"

step "warmup: 20 steps (encoder copied from the decoder, decoder frozen)"
"$py" "$t/train.py" warmup --work "$W" --run "$tmp/warm" --init "$tmp/pre/final" "${TINY[@]}" \
  --enc-layers 1 --enc-max-pos 64 --steps 20 --batch-size 8 --seq-len 64 --n-chunks 4 \
  --lr 3e-3 --warmup 3 >"$tmp/warm.log" 2>&1 || { cat "$tmp/warm.log" >&2; fail "warmup"; }

"$py" - "$tmp" <<'EOF' || fail "warmup checks"
import json, sys
r = [json.loads(l) for l in open(sys.argv[1] + "/warm/log.jsonl")]
g = [x["context_gain"] for x in r]
print("warmup loss:", " ".join(f"{x['loss']:.3f}" for x in r))
print("warmup gain from the encoder (decoder-alone loss - loss):", " ".join(f"{x:.4f}" for x in g))
# Cross-attention starts as an exact no-op, so the first step gains nothing.
assert abs(g[0]) < 1e-6, g[0]
first, last = sum(g[:5]) / 5, sum(g[-5:]) / 5
assert last > first and last > 0, f"the encoder is not starting to help: {first:.4f} -> {last:.4f}"
print(f"ok: context gain {first:.4f} -> {last:.4f}")
EOF

step "qa: 10 steps"
"$py" "$t/train.py" qa --work "$W" --run "$tmp/qa" --init "$tmp/warm/final" --threads 1 --device cpu \
  --log-every 1 --steps 10 --batch-size 4 --lr 3e-3 --warmup 2 --chunk-len 64 --min-ctx 2 --max-ctx 5 \
  >"$tmp/qa.log" 2>&1 || { cat "$tmp/qa.log" >&2; fail "qa"; }

step "export and the engine's scores"
"$py" "$t/export.py" --checkpoint "$tmp/qa/ckpt.pt" --out "$tmp/export" --dtype f16 --max-shard-mb 0.2 \
  || fail "export.py"
for f in config.json tokenizer.model model.safetensors.index.json; do
  [[ -s "$tmp/export/$f" ]] || fail "export did not write $f"
done
"$py" - "$tmp/export/config.json" <<'EOF' || fail "config.json"
import json, sys
c = json.load(open(sys.argv[1]))
for k, v in dict(do_cross_attention=True, num_cross_attn_layers=2, num_cross_attn_hidden_states=1,
                 encoder_is_model=False, encode_mode="context_only", encoder_hidden_size=64,
                 torch_dtype="float16", bos_token_id=1, eos_token_id=2).items():
    assert c.get(k) == v, (k, c.get(k))
assert c["encoder_config"]["num_hidden_layers"] == 1 and c["encoder_config"]["is_decoder"] is False
print("ok: config.json has the CEPE keys")
EOF
"$py" "$t/check_export.py" --model "$tmp/export" --cepe "$cepe" --work "$W" --chunk-len 64 --tol 1e-4 ||
  fail "the engine's scores differ from the PyTorch model's (CEPE export)"
"$py" "$t/check_export.py" --model "$tmp/pre/final" --cepe "$cepe" --cases 1 --tol 1e-4 ||
  fail "the engine's scores differ from the PyTorch model's (decoder-only export)"

step "evaluate: 4 held-out questions, three settings"
"$py" "$t/evaluate.py" --model "$tmp/export" --work "$W" --limit 4 --settings 0,10,20 --threads 1 \
  --chunk-len 64 --device cpu --out "$tmp/eval.json" >"$tmp/eval.log" 2>&1 || { cat "$tmp/eval.log" >&2; fail "evaluate.py"; }
"$py" - "$tmp/eval.json" <<'EOF' || fail "evaluation report"
import json, sys
s = json.load(open(sys.argv[1]))["settings"]
assert set(s) == {"decoder", "gold_in_10", "gold_in_20"}, s
assert all(v["questions"] == 4 and 0 <= v["em"] <= v["f1"] + 1e-9 <= 100 for v in s.values()), s
print("ok: EM/F1 reported for", ", ".join(sorted(s)))
EOF
step "run_device.sh: two chained calls, the first cut short in the qa stage"
chain=(--threads 1 --device cpu --batch-size 4 --lr 3e-3 --warmup 2)
export PYTHON="$py" PRETRAIN_ARGS="${TINY[*]} --steps 6 --batch-size 4 --seq-len 64 --dropout 0"
export WARMUP_ARGS="${TINY[*]} --enc-layers 1 --enc-max-pos 64 --steps 4 --seq-len 64 --n-chunks 4"
qa_args="${chain[*]} --steps 8 --chunk-len 64 --min-ctx 2 --max-ctx 5 --log-every 1"
QA_ARGS="$qa_args --stop-at 4" "$t/run_device.sh" "$W" "$tmp/chain" "$tmp/chain-out1" 600 600 600 2 \
  >"$tmp/chain1.log" 2>&1 || { cat "$tmp/chain1.log" >&2; fail "run_device.sh, first call"; }
grep -q "^qa: rc=75" "$tmp/chain1.log" || fail "the first call's qa stage should stop early: $(cat "$tmp/chain1.log")"
[[ -f "$tmp/chain/qa/final/config.json" && -s "$tmp/chain-out1/eval.json" ]] ||
  fail "a stage cut short must still be exported and evaluated"
QA_ARGS="$qa_args" "$t/run_device.sh" "$W" "$tmp/chain" "$tmp/chain-out2" 600 600 600 2 \
  >"$tmp/chain2.log" 2>&1 || { cat "$tmp/chain2.log" >&2; fail "run_device.sh, second call"; }
for s in pretrain warmup; do
  grep -q "^$s: done in an earlier call" "$tmp/chain2.log" || fail "$s ran again: $(cat "$tmp/chain2.log")"
done
grep -q "^qa: rc=0" "$tmp/chain2.log" && [[ -f "$tmp/chain/qa/DONE" && -s "$tmp/chain-out2/eval.json" ]] ||
  fail "the second call should finish qa: $(cat "$tmp/chain2.log")"
grep -q "resume: qa from step 4 of 8" "$tmp/chain-out2/qa.log" || fail "qa did not resume at step 4"
echo "ok: chained device calls skip finished stages and resume the cut one"

echo "ok: training pipeline ($((SECONDS - start)) s)"
