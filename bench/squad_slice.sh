# Sourced by the benchmarks that run on a slice of ../shared/data/squad-train.
# squad_slice WORK PASSAGES STEP: the first PASSAGES passages (WORK/passages.jsonl), every STEP-th
# question about them (WORK/questions.jsonl), and a 4000-piece sentencepiece tokenizer trained on
# their text (WORK/spm.model).
squad_slice() {
  local work=$1 passages=$2 step=$3 data=../shared/data/squad-train
  head -n "$passages" "$data/passages.jsonl" >"$work/passages.jsonl"
  python3 - "$work" "$data/questions.jsonl" "$step" <<'PY'
import json, sys
work, questions, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
ids = {json.loads(l)["id"] for l in open(f"{work}/passages.jsonl")}
open(f"{work}/questions.jsonl", "w").writelines(
    [l for l in open(questions) if json.loads(l)["passage_id"] in ids][::step])
with open(f"{work}/corpus.txt", "w") as f:
    for l in open(f"{work}/passages.jsonl"):
        p = json.loads(l)
        f.write(p["title"] + "\n" + p["text"] + "\n")
PY
  spm_train --input="$work/corpus.txt" --model_prefix="$work/spm" --vocab_size=4000 \
    --hard_vocab_limit=false --model_type=bpe --byte_fallback=true --minloglevel=2 >/dev/null 2>&1
}
