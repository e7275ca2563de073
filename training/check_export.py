#!/usr/bin/env python3
"""Checks an exported model three ways on the same token ids: the trainer's module
(training/model.py), the reference (tests/reference/cepe_reference.py) and the C++ engine
(`cepe score`). The issue's requirement is that the engine's scores equal the PyTorch model's.

  check_export.py --model DIR --cepe BINARY [--work W] [--tol 1e-4]

Inputs: with --work, held-out questions (BOS + prompt + answer) with their gold passage and BM25
distractors as chunks (unequal lengths, the real use); without, random ids. Each case is scored
with its chunks and, as the decoder alone, without. Prints one JSON line per case and exits 1 if
any |NLL difference| > --tol or any |logit difference| > --logit-tol.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import BOS_ID  # noqa: E402  (also puts tests/reference on sys.path)
import cepe_reference as ref  # noqa: E402
from model import CepeLM  # noqa: E402
from train import Data, pad_chunks  # noqa: E402


def cases(args, vocab, enc_vocab):
    if args.work:
        data = Data(args.work)
        for qi in data.heldout_q[:args.cases]:
            p, t = data.question(int(qi))
            ids = [BOS_ID] + [int(x) for x in p] + [int(x) for x in t]
            pids = [int(data.a["q_gold"][qi])] + [int(x) for x in data.a["q_distractors"][qi][:4]]
            yield ids, [[int(x) for x in data.passage(i, args.chunk_len)] for i in pids]
    else:
        g = np.random.default_rng(5)
        for _ in range(args.cases):
            ids = [BOS_ID] + g.integers(3, vocab, 24).tolist()
            yield ids, [g.integers(3, enc_vocab, n).tolist() for n in (37, 5, 64)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cepe", required=True, help="the cepe binary")
    ap.add_argument("--work", help="data.py's output, for real held-out inputs")
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--chunk-len", type=int, default=256)
    ap.add_argument("--tol", type=float, default=1e-4, help="max |NLL difference|")
    ap.add_argument("--logit-tol", type=float, default=1e-3, help="max |logit difference|")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    model = CepeLM.from_pretrained(args.model).eval()
    reference = ref.Model(args.model)
    vocab = model.dec.vocab_size
    enc_vocab = model.enc.vocab_size if model.is_cepe else vocab
    worst = {"nll": 0.0, "logit": 0.0}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for n, (ids, chunks) in enumerate(cases(args, vocab, enc_vocab)):
            for with_ctx in ([True, False] if model.is_cepe else [False]):
                ctx = chunks if with_ctx else []
                with torch.no_grad():
                    x = torch.tensor([ids])
                    if ctx:
                        c, m = pad_chunks([[np.array(z) for z in ctx]])
                        logits = model(x, c, m)[0]
                    else:
                        logits = model(x)[0]
                nll_torch = float(F.cross_entropy(logits[:-1].double(), x[0, 1:]))
                enc = reference.encode(ctx) if ctx else None
                ref_logits = reference.forward(ids, enc)
                nll_ref = reference.nll(ids, enc, ref_logits)

                inp = os.path.join(tmp, f"in{n}.json")
                with open(inp, "w") as f:
                    json.dump({"input_ids": ids, "context_ids": ctx}, f)
                r = subprocess.run([args.cepe, "score", "--model", args.model, "--input", inp,
                                    "--threads", "1"], capture_output=True, text=True)
                if r.returncode != 0:
                    print(r.stderr, file=sys.stderr)
                    print("FAIL: cepe score exited with an error", file=sys.stderr)
                    return 1
                out = json.loads(r.stdout)
                cpp_logits = torch.tensor(out["logits"], dtype=torch.float32)
                rec = {
                    "case": n, "context_chunks": len(ctx), "tokens": len(ids),
                    "nll_torch": nll_torch, "nll_reference": nll_ref, "nll_cepe": out["nll"],
                    "nll_diff_cepe_torch": abs(out["nll"] - nll_torch),
                    "logit_diff_cepe_torch": float((cpp_logits - logits).abs().max()),
                    "logit_diff_torch_reference": float((ref_logits - logits).abs().max()),
                }
                print(json.dumps(rec), flush=True)
                worst["nll"] = max(worst["nll"], rec["nll_diff_cepe_torch"],
                                   abs(nll_ref - nll_torch))
                worst["logit"] = max(worst["logit"], rec["logit_diff_cepe_torch"],
                                     rec["logit_diff_torch_reference"])
    ok = worst["nll"] <= args.tol and worst["logit"] <= args.logit_tol
    print(("ok" if ok else "FAIL") + f": max |NLL diff| {worst['nll']:.2e} (tol {args.tol:g}), "
          f"max |logit diff| {worst['logit']:.2e} (tol {args.logit_tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
