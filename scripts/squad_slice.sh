# Sourced by the tests and benchmarks that run on a slice of ../shared's SQuAD data.
# squad_slice DATA WORK PASSAGES STEP MAX VOCAB: the first PASSAGES passages of DATA (the
# squad-train directory) into WORK/passages.jsonl; every STEP-th question about them, at most MAX
# (0: no limit), into WORK/questions.jsonl; their text into WORK/corpus.txt, and a VOCAB-piece
# sentencepiece BPE tokenizer trained on it (WORK/spm.model). Runs $PYTHON (default python3).
squad_slice() {
  local data=$1 work=$2 passages=$3 step=$4 max=$5 vocab=$6
  head -n "$passages" "$data/passages.jsonl" >"$work/passages.jsonl"
  "${PYTHON:-python3}" - "$work" "$data/questions.jsonl" "$step" "$max" <<'PY'
import json, sys
work, questions, step, most = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ids = {json.loads(l)["id"] for l in open(f"{work}/passages.jsonl")}
picked = [l for l in open(questions) if json.loads(l)["passage_id"] in ids][::step]
open(f"{work}/questions.jsonl", "w").writelines(picked[:most] if most else picked)
with open(f"{work}/corpus.txt", "w") as f:
    for l in open(f"{work}/passages.jsonl"):
        p = json.loads(l)
        f.write(p["title"] + "\n" + p["text"] + "\n")
PY
  spm_train --input="$work/corpus.txt" --model_prefix="$work/spm" --vocab_size="$vocab" \
    --hard_vocab_limit=false --model_type=bpe --byte_fallback=true --minloglevel=2 >/dev/null 2>&1
}
