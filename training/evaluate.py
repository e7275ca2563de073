#!/usr/bin/env python3
"""EM/F1 of an exported model on held-out SQuAD articles, in the issue's three settings:

  decoder      the decoder alone: "Question: q\\nAnswer:" and nothing else
  gold_in_10   CEPE, the encoder reads 10 passages: the gold one and the 9 best BM25 others
  gold_in_20   the same with 20 passages

  evaluate.py --model DIR --work W [--settings 0,10,20] [--limit N] [--device cuda] [--out F]

Generation is what the engine's reader does by default: greedy, at most 25 new tokens, stopping
at the first newline (or EOS); one passage per encoder chunk, truncated to 256 tokens. Scores are
SQuAD's (DrQA normalisation: lower case, no punctuation or articles, collapsed whitespace),
maximised over the gold answers, from tests/reference/squad_eval.py. The passages' order in the
encoder is irrelevant to CEPE (cross-attention has no positions), so the gold one is first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402
from common import BOS_ID, EOS_ID  # noqa: E402
import squad_eval  # noqa: E402  (tests/reference)
from model import CepeLM  # noqa: E402
from train import Data, pad_chunks  # noqa: E402


def setting_name(k: int) -> str:
    return "decoder" if k == 0 else f"gold_in_{k}"


@torch.no_grad()
def greedy(model, prompts, contexts, device, amp, max_new, stop_ids):
    """Batched greedy decoding without a KV cache (prompts are short): every step re-runs the
    decoder over the right-padded batch and reads each row's last real position. The encoder
    runs once per batch."""
    B = len(prompts)
    enc = enc_mask = None
    if contexts is not None:
        chunks, mask = pad_chunks(contexts)
        with amp():
            enc, enc_mask = model.context_states(chunks.to(device), mask.to(device))
    seqs = [list(p) for p in prompts]
    out = [[] for _ in range(B)]
    live = list(range(B))
    for _ in range(max_new):
        if not live:
            break
        T = max(len(seqs[b]) for b in live)
        ids = torch.zeros(len(live), T, dtype=torch.long)
        for r, b in enumerate(live):
            ids[r, :len(seqs[b])] = torch.tensor(seqs[b])
        ids = ids.to(device)
        with amp():
            h = model.model(ids, None, None if enc is None else enc[live],
                            None if enc is None else enc_mask[live])
            last = torch.stack([h[r, len(seqs[b]) - 1] for r, b in enumerate(live)])
            nxt = model.lm_head(last).float().argmax(-1).tolist()
        still = []
        for b, t in zip(live, nxt):
            if t in stop_ids:
                continue
            out[b].append(t)
            seqs[b].append(t)
            still.append(b)
        live = still
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="exported model directory")
    ap.add_argument("--work", required=True, help="data.py's output (data.npz, heldout.jsonl)")
    ap.add_argument("--settings", default="0,10,20",
                    help="passages in the encoder per setting (0 = decoder alone)")
    ap.add_argument("--limit", type=int, default=0,
                    help="N held-out questions spread evenly over the held-out articles (0: all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=25)
    ap.add_argument("--chunk-len", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", help="write the results JSON here (and predictions beside it)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else \
        (lambda: torch.autocast("cpu", enabled=False))

    model = CepeLM.from_pretrained(args.model).to(device).eval()
    tok = common.Tokenizer(os.path.join(args.model, "tokenizer.model"))
    data = Data(args.work)
    heldout = list(common.read_jsonl(os.path.join(args.work, "heldout.jsonl")))
    if 0 < args.limit < len(heldout):
        # Every (n/limit)-th question, so that every held-out article is represented.
        heldout = [heldout[i * len(heldout) // args.limit] for i in range(args.limit)]
    stop_ids = {EOS_ID, tok.newline_id}
    settings = [int(x) for x in args.settings.split(",")]
    if any(k > 0 for k in settings) and not model.is_cepe:
        sys.exit("error: passages in the encoder need a CEPE model")
    if max(settings) - 1 > data.a["q_distractors"].shape[1]:
        sys.exit(f"error: data has {data.a['q_distractors'].shape[1]} distractors per question")

    results, preds = {}, {}
    for k in settings:
        t0 = time.time()
        em = f1 = 0.0
        rows = []
        for s in range(0, len(heldout), args.batch_size):
            batch = heldout[s:s + args.batch_size]
            prompts, ctx = [], []
            for q in batch:
                p, _ = data.question(q["idx"])
                prompts.append([BOS_ID] + [int(x) for x in p])
                pids = [q["gold"]] + [int(x) for x in data.a["q_distractors"][q["idx"]][:k - 1]]
                ctx.append([data.passage(i, args.chunk_len) for i in pids])
            gen = greedy(model, prompts, ctx if k else None, device, amp, args.max_new_tokens,
                         stop_ids)
            for q, g in zip(batch, gen):
                text = tok.decode(g).strip()
                e = float(squad_eval.best(squad_eval.exact, text, q["answers"]))
                f = squad_eval.best(lambda p, a: squad_eval.f1(p, a, False), text, q["answers"])
                em += e
                f1 += f
                rows.append({"id": q["id"], "prediction": text, "answers": q["answers"],
                             "em": e, "f1": round(f, 4)})
        n = max(1, len(heldout))
        results[setting_name(k)] = {"passages_in_encoder": k, "em": round(100 * em / n, 2),
                                    "f1": round(100 * f1 / n, 2), "questions": len(heldout),
                                    "seconds": round(time.time() - t0, 1)}
        preds[setting_name(k)] = rows
        print(json.dumps({setting_name(k): results[setting_name(k)]}), flush=True)

    report = {"model": os.path.abspath(args.model), "heldout_questions": len(heldout),
              "settings": results,
              "examples": {name: rows[:5] for name, rows in preds.items()}}
    if args.out:
        common.write_json_atomic(args.out, report)
        with open(os.path.splitext(args.out)[0] + ".predictions.jsonl", "w",
                  encoding="utf-8") as f:
            for name, rows in preds.items():
                for r in rows:
                    f.write(json.dumps(dict(r, setting=name), ensure_ascii=False) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
