#!/usr/bin/env bash
# Batch QA end to end on a slice of ../shared/data/squad-train: index the passages, answer the
# questions with a small CEPE model, and recompute the summary's metrics independently (the SQuAD
# scoring re-implemented in tests/reference/squad_eval.py). Also: answers are identical with
# continuous batching and one at a time, and --resume finishes a torn partial output.
# The model has random weights (no trained model exists offline), so EM is near 0; the metrics
# must still agree exactly, and retrieval recall is real.
set -euo pipefail
src=${CEPE_SOURCE_DIR:?}
cepe=${CEPE_BINARY:?}
source "$src/scripts/squad_slice.sh"
data=${CEPE_SHARED_DIR:-$src/../shared}/data/squad-train
if [[ ! -f "$data/passages.jsonl" ]]; then
  echo "skip: $data not found (the shared test data is only present in CI)"
  exit 77
fi
py=/usr/bin/python3
[[ -x $py ]] || py=python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

PYTHON=$py squad_slice "$data" "$tmp" 400 7 48 2000
"$cepe" random-model --preset tiny --tokenizer "$tmp/spm.model" --out "$tmp/model" >/dev/null
"$cepe" index build --input "$tmp/passages.jsonl" --out "$tmp/index" >/dev/null 2>&1

common=(--questions "$tmp/questions.jsonl" --index "$tmp/index" --model "$tmp/model" --k 5
  --decoder-passages 1 --max-new-tokens 6 --threads 2)
"$cepe" qa "${common[@]}" --out "$tmp/batched.jsonl" --concurrency 8 >"$tmp/batched.txt"
"$cepe" qa "${common[@]}" --out "$tmp/single.jsonl" --concurrency 1 >"$tmp/single.txt"
cat "$tmp/batched.txt"

# Cut the output after 20 lines plus half a line, as a Ctrl-C mid-write would leave it.
head -n 20 "$tmp/batched.jsonl" >"$tmp/resumed.jsonl"
sed -n 21p "$tmp/batched.jsonl" | head -c 40 >>"$tmp/resumed.jsonl"
"$cepe" qa "${common[@]}" --out "$tmp/resumed.jsonl" --concurrency 8 --resume >/dev/null 2>&1

$py - "$tmp" "$src/tests/reference" <<'PY'
import json, math, sys
tmp, ref = sys.argv[1], sys.argv[2]
sys.path.insert(0, ref)
import squad_eval as se

def load(name):
    return [json.loads(l) for l in open(f"{tmp}/{name}")]

passages = {p["id"]: p["text"] for p in load("passages.jsonl")}
questions = load("questions.jsonl")
batched, single, resumed = load("batched.jsonl"), load("single.jsonl"), load("resumed.jsonl")
assert len(batched) == len(questions), (len(batched), len(questions))

def by_id(rows):
    return {r["id"]: r for r in rows}

b, s, r = by_id(batched), by_id(single), by_id(resumed)
assert len(r) == len(resumed) == len(questions), "resume must finish every question exactly once"
for qid in b:
    assert b[qid]["answer"] == s[qid]["answer"], f"batched vs single differ for {qid}"
    assert b[qid]["answer"] == r[qid]["answer"], f"resumed answer differs for {qid}"

summary = json.load(open(f"{tmp}/batched.jsonl.summary.json"))
n = len(batched)
em = sum(se.best(se.exact, x["answer"], x["gold"]) for x in batched) / n
f1 = sum(se.best(lambda p, g: se.f1(p, g, True), x["answer"], x["gold"]) for x in batched) / n
sub = sum(se.best(se.substring, x["answer"], x["gold"]) for x in batched) / n
def recall_at(k):
    hits = 0
    for x in batched:
        texts = [se.normalize(passages[pid]) for pid in x["passages"][:k]]
        hits += any(se.normalize(g) in t for g in x["gold"] for t in texts)
    return hits / n
checks = [("exact_match", summary["exact_match"], em), ("f1", summary["f1"], f1),
          ("substring_exact_match", summary["substring_exact_match"], sub)]
for k, v in summary["retrieval"]["recall"].items():
    checks.append((f"recall@{k}", v, recall_at(int(k))))
for name, got, want in checks:
    assert abs(got - want) < 1e-9, f"{name}: summary {got} != recomputed {want}"
    print(f"ok: {name} = {got:.4f} (recomputed {want:.4f})")
# Selective QA, recomputed: answers ranked by answer_logprob (ties in file order), EM of the most
# confident ceil(coverage * n); batched and single runs give the same log-probabilities to
# float rounding (a batch step's arithmetic may differ from a lone step's in the last bits).
for x in batched:
    assert x["answer_logprob"] <= 0, x
    assert abs(x["answer_logprob"] - s[x["id"]]["answer_logprob"]) < 1e-3 * max(1, x["generated_tokens"])
ranked = sorted(batched, key=lambda x: -x["answer_logprob"])
ems = [se.best(se.exact, x["answer"], x["gold"]) for x in ranked]
for c in summary["selective"]["coverage"]:
    k = max(1, math.ceil(c["coverage"] * n - 1e-9))
    assert c["questions"] == k, (c, k)
    near_tie = k < n and abs(ranked[k - 1]["answer_logprob"] - ranked[k]["answer_logprob"]) < 1e-9
    if not near_tie:
        assert abs(c["exact_match"] - sum(ems[:k]) / k) < 1e-9, (c, sum(ems[:k]) / k)
print(f"ok: EM by confidence {[round(c['exact_match'], 3) for c in summary['selective']['coverage']]}"
      f" (AUC {summary['selective']['exact_match_auc']:.3f})")
qps_b = json.load(open(f"{tmp}/batched.jsonl.summary.json"))["run"]["questions_per_s"]
qps_s = json.load(open(f"{tmp}/single.jsonl.summary.json"))["run"]["questions_per_s"]
print(f"throughput: {qps_b:.2f} questions/s batched (8) vs {qps_s:.2f} one at a time "
      f"({qps_b / qps_s:.2f}x)")
PY
