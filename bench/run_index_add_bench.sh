#!/usr/bin/env bash
# `cepe index add` beside a rebuild, in the same run: an index of the first N - M SQuAD passages
# (../shared) grown by the last M (only those are embedded), against `cepe index build` of all N;
# then `cepe index remove` of those M from a copy of the whole index (nothing embedded) against
# the build of the first N - M;
# both hybrid (BM25 + dense FAISS) with a random BERT of MiniLM-L6's shape (hidden 384, 6 layers,
# 12 heads, FFN 1536; 128 tokens) so that embedding costs what a small real embedder costs. The
# indexes compared must answer every query with the same hits (Flat: exact search).
#   bench/run_index_add_bench.sh [N] [M] [faiss]     defaults: 18896 1890 Flat
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-18896}
m=${2:-1890}
faiss=${3:-Flat}
cepe=${CEPE:-build/cepe}
data=${SHARED:-../shared}/data/squad-train
[[ -f $data/passages.jsonl ]] || { echo "no $data/passages.jsonl (../shared)"; exit 1; }
work=${WORK:-/tmp/cepe-index-add-bench}
mkdir -p "$work"
bert=$work/bert-minilm-shape
if [[ ! -f $bert/model.safetensors ]]; then
  /usr/bin/python3 - "$bert" tests/fixtures/bert_tiny/vocab.txt <<'PY'
import json, os, struct, sys
import numpy as np
out, vocab = sys.argv[1], open(sys.argv[2], encoding="utf-8").read().splitlines()
H, L, I, heads, P = 384, 6, 1536, 12, 128
rng = np.random.default_rng(7)
tensors = []
def add(name, *shape, scale=0.05, shift=0.0):
    tensors.append((name, (rng.standard_normal(shape) * scale + shift).astype("<f4")))
add("embeddings.word_embeddings.weight", len(vocab), H)
add("embeddings.position_embeddings.weight", P, H)
add("embeddings.token_type_embeddings.weight", 2, H)
add("embeddings.LayerNorm.weight", H, shift=1.0)
add("embeddings.LayerNorm.bias", H)
for i in range(L):
    p = f"encoder.layer.{i}."
    for m in ("query", "key", "value"):
        add(p + f"attention.self.{m}.weight", H, H); add(p + f"attention.self.{m}.bias", H)
    add(p + "attention.output.dense.weight", H, H); add(p + "attention.output.dense.bias", H)
    add(p + "attention.output.LayerNorm.weight", H, shift=1.0); add(p + "attention.output.LayerNorm.bias", H)
    add(p + "intermediate.dense.weight", I, H); add(p + "intermediate.dense.bias", I)
    add(p + "output.dense.weight", H, I); add(p + "output.dense.bias", H)
    add(p + "output.LayerNorm.weight", H, shift=1.0); add(p + "output.LayerNorm.bias", H)
os.makedirs(out, exist_ok=True)
header, offset = {}, 0
for name, t in tensors:
    header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
    offset += t.nbytes
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(f"{out}/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h)
    for _, t in tensors: f.write(t.tobytes())
json.dump({"model_type": "bert", "hidden_size": H, "num_hidden_layers": L, "num_attention_heads": heads,
           "intermediate_size": I, "max_position_embeddings": P, "type_vocab_size": 2,
           "layer_norm_eps": 1e-12, "hidden_act": "gelu", "vocab_size": len(vocab)},
          open(f"{out}/config.json", "w"))
open(f"{out}/vocab.txt", "w", encoding="utf-8").write("\n".join(vocab) + "\n")
PY
fi
head -n "$n" "$data/passages.jsonl" >"$work/all.jsonl"
head -n $((n - m)) "$work/all.jsonl" >"$work/first.jsonl"
tail -n "$m" "$work/all.jsonl" >"$work/last.jsonl"
flags=(--retriever hybrid --embedder "bert:$bert" --faiss "$faiss")
rm -rf "$work/whole" "$work/grown" "$work/first" "$work/shrunk"
now() { date +%s.%N; }
t0=$(now)
"$cepe" index build --input "$work/all.jsonl" --out "$work/whole" "${flags[@]}" >"$work/whole.log" 2>&1
t1=$(now)
"$cepe" index build --input "$work/first.jsonl" --out "$work/grown" "${flags[@]}" >"$work/first.log" 2>&1
t2=$(now)
cp -r "$work/grown" "$work/first"  # the build of the first N - M, which the removal must equal
t2c=$(now)
"$cepe" index add --index "$work/grown" --input "$work/last.jsonl" >"$work/add.log" 2>&1
t3=$(now)
tail -1 "$work/add.log"
cp -r "$work/whole" "$work/shrunk"
/usr/bin/python3 -c 'import json, sys
for l in open(sys.argv[1]): print(json.loads(l)["id"])' "$work/last.jsonl" >"$work/last.ids"
t4=$(now)
"$cepe" index remove --index "$work/shrunk" --ids "$work/last.ids" >"$work/remove.log" 2>&1
t5=$(now)
tail -1 "$work/remove.log"
cmp -s "$work/whole/passages.bin" "$work/grown/passages.bin" || { echo "FAIL: passage stores differ"; exit 1; }
cmp -s "$work/first/passages.bin" "$work/shrunk/passages.bin" || { echo "FAIL: passage stores differ after the removal"; exit 1; }
queries=("who founded the university" "when did the earthquake happen" "capital of the province"
  "largest river in the country" "the treaty was signed in" "what is the population")
search() { "$cepe" index search --index "$1" -k 10 --json "${queries[@]}"; }
if [[ $faiss == Flat ]]; then
  cmp -s <(search "$work/whole") <(search "$work/grown") || { echo "FAIL: hits differ"; exit 1; }
  cmp -s <(search "$work/first") <(search "$work/shrunk") || { echo "FAIL: hits differ after the removal"; exit 1; }
  echo "same hits for ${#queries[@]} queries (top 10, scores included)"
fi
awk -v b="$(echo "$t1 - $t0" | bc)" -v f="$(echo "$t2 - $t1" | bc)" -v a="$(echo "$t3 - $t2c" | bc)" \
  -v r="$(echo "$t5 - $t4" | bc)" \
  -v n="$n" -v m="$m" 'BEGIN {
    printf "rebuild of all %d passages: %.1f s\n", n, b
    printf "build of the first %d: %.1f s; add of the last %d: %.1f s (%.1fx faster than the rebuild)\n",
      n - m, f, m, a, b / a
    printf "remove of the last %d from all %d: %.1f s (%.1fx faster than the build of the first %d)\n",
      m, n, r, f / r, n - m }'
