#!/usr/bin/env python3
"""Checks that training/model.py computes what tests/reference/cepe_reference.py computes.

Random weights (cross-attention made non-trivial), GQA in the decoder, an encoder narrower than
the decoder, cross-attention in the last layers only, chunks of unequal length; written with the
exporter and read back by the reference. Also checks that a padded batch gives each example the
logits it gets alone, and that the tokenizer's command-line fallback gives the binding's ids.

  /usr/bin/python3 training/test_model.py [--tokenizer WORK/tokenizer.model]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import common  # noqa: E402
import cepe_reference as ref  # noqa: E402
import export  # noqa: E402
from model import CepeLM, stack_dict  # noqa: E402
from train import pad_chunks  # noqa: E402


def check(cond, msg):
    if not cond:
        print("FAIL: " + msg, file=sys.stderr)
        sys.exit(1)
    print("ok: " + msg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", help="a tokenizer.model to compare binding and CLI ids on")
    args = ap.parse_args()
    torch.set_num_threads(1)
    V = 97
    cfg = stack_dict(V, 64, 3, 4, 2, 160, 64, theta=50000.0)
    cfg.update(do_cross_attention=True, num_cross_attn_layers=2,
               encoder_config=stack_dict(V, 48, 2, 4, 4, 96, 32, eps=1e-6))
    model = CepeLM(cfg)
    model.init_weights(7, std=0.1)
    model.eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, V, (20,), generator=g)
    chunk_list = [torch.randint(0, V, (n,), generator=g) for n in (7, 13, 4)]

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "m")
        export.export_model(model.config, model.state_dict(), b"", out, "f32", max_shard_mb=0.05)
        check(os.path.exists(os.path.join(out, "model.safetensors.index.json")),
              "small --max-shard-mb writes a sharded checkpoint")
        r = ref.Model(out)
        enc = r.encode([c.tolist() for c in chunk_list])
        want = r.forward(ids.tolist(), enc)
        want_plain = r.forward(ids.tolist(), None)
        # The same weights through the trainer's loader (sharded f32 -> identical tensors).
        back = CepeLM.from_pretrained(out)
        back.eval()
        same = all(torch.equal(a, b) for a, b in zip(back.state_dict().values(),
                                                     model.state_dict().values()))
        check(same, "export -> from_pretrained round-trips f32 weights exactly")

    with torch.no_grad():
        chunks, mask = pad_chunks([[c.numpy() for c in chunk_list]])
        got = model(ids[None], chunks, mask)[0]
        got_plain = model(ids[None])[0]
    d = float((got - want).abs().max())
    check(d < 1e-4, f"CEPE logits match the reference (max |diff| {d:.2e})")
    d = float((got_plain - want_plain).abs().max())
    check(d < 1e-4, f"decoder-only logits match the reference (max |diff| {d:.2e})")

    # Batch of two with padding (shorter ids, fewer and shorter chunks, a padding chunk).
    ids2 = ids[:11]
    chunks2 = [chunk_list[2].numpy()]
    with torch.no_grad():
        x = torch.zeros(2, 20, dtype=torch.long)
        x[0], x[1, :11] = ids, ids2
        c, m = pad_chunks([[t.numpy() for t in chunk_list], chunks2])
        both = model(x, c, m)
        c2, m2 = pad_chunks([chunks2])
        alone = model(ids2[None], c2, m2)[0]
    d0 = float((both[0] - got).abs().max())
    d1 = float((both[1, :11] - alone).abs().max())
    check(max(d0, d1) < 1e-5, f"padded batch equals single examples (max |diff| {max(d0, d1):.2e})")

    # Zero-initialised cross-attention leaves the decoder's output unchanged.
    model.init_cross_attention(1)
    with torch.no_grad():
        d = float((model(ids[None], chunks, mask)[0] - model(ids[None])[0]).abs().max())
    check(d == 0.0, "fresh cross-attention is a no-op on the decoder")

    if args.tokenizer:
        tok = common.Tokenizer(args.tokenizer)
        if tok.sp is None:
            print("skip: no sentencepiece binding, the CLI path is the only one")
        else:
            texts = [common.pretrain_doc("T 1", "Some text, 1984.\nMore é ü 中文 text.",
                                         [("Who?", "Me"), ("When?", "1984")]),
                     common.prompt_text("What is it?") + common.target_text("a thing"), "\n\nx\n"]
            want_ids = tok.encode_many(texts)
            newline = tok.newline_id
            tok.sp = None
            check(tok._newline_id() == newline, "spm_export_vocab finds the newline byte piece")
            check(tok.encode_many(texts) == want_ids, "spm_encode fallback gives the binding's ids")


if __name__ == "__main__":
    main()
