#!/usr/bin/env python3
"""Data pipeline for the small CEPE reader, from ../shared/data/squad-train.

Two steps around the tokenizer (tokenizer.sh):

  data.py split  --work W   whole-article train/held-out split, the spm_train text, and BM25
                            distractors for every question  -> W/split.json, W/spm_train.txt,
                            W/passages.jsonl, W/questions.jsonl, W/retrieval.npz
  tokenizer.sh W [VOCAB]    -> W/tokenizer.model
  data.py encode --work W [--out D]
                            token ids of everything the trainer and evaluate.py read ->
                            D/data.npz, D/heldout.jsonl, D/tokenizer.model, D/meta.json
                            (D defaults to W; D is what travels to the GPU machine, ~25 MB)

Both directories hold SQuAD-derived data: keep them outside the repository, or in an ignored
folder (training/.gitignore ignores training/work*/), never commit them.

Everything is deterministic: the held-out articles are chosen by a hash of their titles, the
retriever has no randomness, and ties are broken by passage index.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import common  # noqa: E402
from common import BOS_ID, EOS_ID  # noqa: E402


# --------------------------------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------------------------------

def holdout_rank(title: str) -> str:
    # A keyed hash rather than file order, so that the held-out articles are spread over the
    # alphabet and the choice does not change when articles are added elsewhere.
    return hashlib.sha256(("cepe-qa-holdout:" + title).encode("utf-8")).hexdigest()


def choose_holdout(titles, n_holdout: int):
    return set(sorted(titles, key=holdout_rank)[:n_holdout])


# --------------------------------------------------------------------------------------------------
# BM25 (Robertson/Sparck Jones idf, k1 = 0.9, b = 0.4 as Pyserini's defaults), pure numpy
# --------------------------------------------------------------------------------------------------

_STOP = frozenset("""a an the and or of to in on at by for with from as is are was were be been being
it its this that these those which who whom whose what when where why how did do does done has
have had not no but if than then so such there their they them he she his her him we you your i
me my our us into over under about after before during while also can could would should may
might will shall one""".split())
_WORD = re.compile(r"\w+", re.UNICODE)


def terms(text: str):
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


class BM25:
    """Inverted index over a list of passage texts; `search` scores all passages against a query
    by adding each query term's precomputed per-posting weights."""

    def __init__(self, texts, k1: float = 0.9, b: float = 0.4):
        postings = collections.defaultdict(list)
        lengths = np.zeros(len(texts), dtype=np.float32)
        for d, text in enumerate(texts):
            t = terms(text)
            lengths[d] = len(t)
            for w, tf in collections.Counter(t).items():
                postings[w].append((d, tf))
        n, avg = len(texts), float(lengths.mean()) if len(texts) else 1.0
        self.n = n
        self.index = {}
        for w, plist in postings.items():
            docs = np.fromiter((d for d, _ in plist), dtype=np.int32, count=len(plist))
            tf = np.fromiter((f for _, f in plist), dtype=np.float32, count=len(plist))
            idf = math.log(1.0 + (n - len(plist) + 0.5) / (len(plist) + 0.5))
            w_tf = tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * lengths[docs] / avg))
            self.index[w] = (docs, (idf * w_tf).astype(np.float32))

    def search(self, query: str, k: int, exclude=()):
        """Indices of the k best passages (ties by lower index), minus those in `exclude`."""
        scores = np.zeros(self.n, dtype=np.float32)
        for w in set(terms(query)):
            hit = self.index.get(w)
            if hit is not None:
                scores[hit[0]] += hit[1]
        for e in exclude:
            scores[e] = -np.inf
        k = min(k, self.n - len(exclude))
        # lexsort: primary key score (descending), secondary index (ascending) -> deterministic.
        top = np.argpartition(-scores, k - 1)[:k] if k < self.n else np.arange(self.n)
        top = top[np.lexsort((top, -scores[top]))]
        return top[:k]


# --------------------------------------------------------------------------------------------------
# Step 1: split + spm text + retrieval
# --------------------------------------------------------------------------------------------------

def cmd_split(args) -> None:
    t0 = time.time()
    src = os.path.join(args.shared, "data", "squad-train")
    passages = list(common.read_jsonl(os.path.join(src, "passages.jsonl")))
    questions = list(common.read_jsonl(os.path.join(src, "questions.jsonl")))

    titles = list(dict.fromkeys(p["title"] for p in passages))  # file order
    if args.limit_articles:
        titles = titles[:args.limit_articles]
    keep = set(titles)
    passages = [p for p in passages if p["title"] in keep]
    n_hold = args.holdout_articles if args.holdout_articles is not None else max(
        1, round(args.holdout_frac * len(titles)))
    if not 0 < n_hold < len(titles):
        sys.exit(f"error: {n_hold} held-out articles out of {len(titles)}")
    held = choose_holdout(titles, n_hold)

    pidx = {p["id"]: i for i, p in enumerate(passages)}
    questions = [q for q in questions if q["passage_id"] in pidx]
    p_split = np.array([1 if p["title"] in held else 0 for p in passages], dtype=np.uint8)
    q_gold = np.array([pidx[q["passage_id"]] for q in questions], dtype=np.int64)
    q_split = p_split[q_gold]

    os.makedirs(args.work, exist_ok=True)
    with open(os.path.join(args.work, "passages.jsonl"), "w", encoding="utf-8") as f:
        for i, p in enumerate(passages):
            f.write(json.dumps({"idx": i, "id": p["id"], "title": p["title"], "text": p["text"],
                                "split": "heldout" if p_split[i] else "train"},
                               ensure_ascii=False) + "\n")
    with open(os.path.join(args.work, "questions.jsonl"), "w", encoding="utf-8") as f:
        for i, q in enumerate(questions):
            f.write(json.dumps({"idx": i, "id": q["id"], "question": q["question"],
                                "answers": q["answers"], "gold": int(q_gold[i]),
                                "split": "heldout" if q_split[i] else "train"},
                               ensure_ascii=False) + "\n")

    # Tokenizer text: training articles only, so held-out words are as new to the tokenizer as
    # to the model. One line per passage or question line (spm_train reads lines; the model's
    # texts never have a newline inside a piece).
    with open(os.path.join(args.work, "spm_train.txt"), "w", encoding="utf-8") as f:
        for i, p in enumerate(passages):
            if not p_split[i]:
                f.write(common.chunk_text(p["title"], p["text"]).replace("\n", " ") + "\n")
        for i, q in enumerate(questions):
            if not q_split[i]:
                for line in (common.prompt_text(q["question"]) +
                             common.target_text(q["answers"][0])).split("\n"):
                    if line.strip():
                        f.write(line + "\n")

    # Distractors: the best BM25 passages for the question other than its gold one. Training
    # questions retrieve from the training passages only (no held-out text leaks into training);
    # held-out questions retrieve from all passages, as the deployed reader would.
    texts = [p["title"] + " " + p["text"] for p in passages]
    train_ids = np.flatnonzero(p_split == 0)
    bm_all = BM25(texts)
    bm_train = BM25([texts[i] for i in train_ids])
    train_pos = {int(g): j for j, g in enumerate(train_ids)}
    K = args.distractors
    ret = np.zeros((len(questions), K), dtype=np.uint16 if len(passages) < 65536 else np.int32)
    gold_rank = []  # where BM25 itself puts the gold passage (retriever quality, for the card)
    for i, q in enumerate(questions):
        g = int(q_gold[i])
        if q_split[i]:
            top = bm_all.search(q["question"], K + 1)
            gold_rank.append(int(np.flatnonzero(top == g)[0]) if g in top else -1)
            top = top[top != g][:K]
        else:
            top = train_ids[bm_train.search(q["question"], K, exclude=(train_pos[g],))]
        if len(top) < K:  # tiny slices: fewer passages than K, repeat the list
            top = np.resize(top, K)
        ret[i] = top
    np.savez(os.path.join(args.work, "retrieval.npz"), distractors=ret)

    hold_q = int(q_split.sum())
    ranks = np.array(gold_rank) if gold_rank else np.zeros(0)
    info = {
        "shared": os.path.abspath(args.shared),
        "articles": len(titles), "heldout_articles": sorted(held),
        "passages": len(passages), "heldout_passages": int(p_split.sum()),
        "questions": len(questions), "heldout_questions": hold_q,
        "distractors_per_question": K,
        "bm25_heldout_gold_top1": float(np.mean(ranks == 0)) if hold_q else None,
        "bm25_heldout_gold_top10": float(np.mean((ranks >= 0) & (ranks < 10))) if hold_q else None,
        "seconds": round(time.time() - t0, 1),
    }
    common.write_json_atomic(os.path.join(args.work, "split.json"), info)
    print(json.dumps({k: v for k, v in info.items() if k != "heldout_articles"}))


# --------------------------------------------------------------------------------------------------
# Step 2: token ids
# --------------------------------------------------------------------------------------------------

def _flat(seqs, dtype):
    off = np.zeros(len(seqs) + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(s) for s in seqs])
    flat = np.fromiter((t for s in seqs for t in s), dtype=dtype, count=int(off[-1]))
    return flat, off


def cmd_encode(args) -> None:
    t0 = time.time()
    out_dir = args.out or args.work
    os.makedirs(out_dir, exist_ok=True)
    tok = common.Tokenizer(os.path.join(args.work, "tokenizer.model"))
    passages = list(common.read_jsonl(os.path.join(args.work, "passages.jsonl")))
    questions = list(common.read_jsonl(os.path.join(args.work, "questions.jsonl")))
    distractors = np.load(os.path.join(args.work, "retrieval.npz"))["distractors"]

    chunk_ids = tok.encode_many([common.chunk_text(p["title"], p["text"]) for p in passages])
    prompts = tok.encode_many([common.prompt_text(q["question"]) for q in questions])
    # The prompt ends a word and the target starts with a space, so with whitespace splitting
    # (spm's default) the ids of prompt + target are the prompt's followed by the target's; the
    # target is encoded without its space, since add_dummy_prefix is off and "▁" marks the space.
    targets = tok.encode_many([common.target_text(q["answers"][0]) for q in questions])
    check = tok.encode_many([common.prompt_text(q["question"]) + common.target_text(q["answers"][0])
                             for q in questions[:200]])
    mismatch = sum(c != p + t for c, p, t in zip(check, prompts, targets))
    if mismatch:
        print(f"warning: {mismatch}/{len(check)} prompt+target encodings are not the "
              "concatenation of their parts", file=sys.stderr)

    # Pretraining documents, one per passage, each as BOS doc EOS, concatenated by split in
    # passage order (the trainer draws random windows).
    by_passage = collections.defaultdict(list)
    for q in questions:
        by_passage[q["gold"]].append((q["question"], q["answers"][0]))
    docs = tok.encode_many([common.pretrain_doc(p["title"], p["text"], by_passage[i])
                            for i, p in enumerate(passages)])
    streams = {"train": [], "heldout": []}
    for p, d in zip(passages, docs):
        streams[p["split"]].append([BOS_ID] + d + [EOS_ID])

    vocab = max(max((max(s) for s in chunk_ids if s), default=0), max(
        (max(s) for s in docs if s), default=0)) + 1
    if vocab > 65535:
        sys.exit("error: the vocabulary does not fit uint16")
    psg_tok, psg_off = _flat(chunk_ids, np.uint16)
    qp_tok, qp_off = _flat(prompts, np.uint16)
    qt_tok, qt_off = _flat(targets, np.uint16)
    arrays = dict(
        pt_train=np.fromiter((t for d in streams["train"] for t in d), dtype=np.uint16),
        pt_heldout=np.fromiter((t for d in streams["heldout"] for t in d), dtype=np.uint16),
        psg_tok=psg_tok, psg_off=psg_off,
        psg_split=np.array([p["split"] == "heldout" for p in passages], dtype=np.uint8),
        q_prompt=qp_tok, q_prompt_off=qp_off, q_target=qt_tok, q_target_off=qt_off,
        q_gold=np.array([q["gold"] for q in questions], dtype=np.int32),
        q_split=np.array([q["split"] == "heldout" for q in questions], dtype=np.uint8),
        q_distractors=distractors,
    )
    tmp = os.path.join(out_dir, "data.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, os.path.join(out_dir, "data.npz"))
    if os.path.abspath(out_dir) != os.path.abspath(args.work):
        shutil.copyfile(os.path.join(args.work, "tokenizer.model"),
                        os.path.join(out_dir, "tokenizer.model"))
    # The held-out questions with their answers (for evaluate.py), and the passages they may see.
    with open(os.path.join(out_dir, "heldout.jsonl"), "w", encoding="utf-8") as f:
        for q in questions:
            if q["split"] == "heldout":
                f.write(json.dumps({k: q[k] for k in ("idx", "id", "question", "answers", "gold")},
                                   ensure_ascii=False) + "\n")

    lens = np.diff(psg_off)
    meta = {
        "tokenizer_vocab": _vocab_size(tok),
        "pretrain_tokens": {k: int(arrays["pt_" + k].size) for k in ("train", "heldout")},
        "passage_tokens_mean": float(lens.mean()),
        "passages_over_256_tokens": float(np.mean(lens > 256)),
        "questions": len(questions),
        "prompt_target_mismatch_of_200": mismatch,
        "seconds": round(time.time() - t0, 1),
        "split": json.load(open(os.path.join(args.work, "split.json"))),
    }
    common.write_json_atomic(os.path.join(out_dir, "meta.json"), meta)
    print(json.dumps(meta))


def _vocab_size(tok) -> int:
    if tok.sp is not None:
        return int(tok.sp.GetPieceSize())
    import subprocess
    out = subprocess.run(["spm_export_vocab", f"--model={tok.path}"], check=True,
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="held-out split, spm_train text, BM25 distractors")
    s.add_argument("--shared", default=common.default_shared_dir(), help="../shared")
    s.add_argument("--work", required=True, help="output directory (outside the repo or ignored)")
    s.add_argument("--holdout-frac", type=float, default=0.05,
                   help="fraction of articles held out (default 0.05: 22 of 442)")
    s.add_argument("--holdout-articles", type=int, help="number of held-out articles instead")
    s.add_argument("--limit-articles", type=int, default=0,
                   help="use only the first N articles of the file (tests)")
    s.add_argument("--distractors", type=int, default=24,
                   help="BM25 distractors kept per question (>= 19 for the 20-passage setting)")
    e = sub.add_parser("encode", help="token ids of passages, documents and questions")
    e.add_argument("--work", required=True)
    e.add_argument("--out", help="where the trainer's inputs go (default: --work)")
    args = ap.parse_args(argv)
    {"split": cmd_split, "encode": cmd_encode}[args.cmd](args)


if __name__ == "__main__":
    main()
