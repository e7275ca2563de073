#!/usr/bin/env python3
"""Writes a corpus of N passages for retrieval at scale, made from a real one.

The first passages are the source corpus itself (so its questions keep their gold passages and
recall still means something); the rest are distractors, each a mix of 3-7 sentences drawn at random
from random source passages under the title of the first one. Term statistics (vocabulary, document
frequencies, passage lengths) therefore stay those of real text, which is what BM25 and an IVF
quantizer are sensitive to; a corpus of random words would make every query unrealistically easy.

    make_scale_corpus.py --source passages.jsonl --passages 1000000 --out big.jsonl [--seed 1234]

Deterministic for a given source, size and seed. The output is written to OUT.tmp and renamed.
"""

import argparse
import json
import os
import random
import re
import sys

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="source corpus (.jsonl with id, title, text)")
    ap.add_argument("--passages", type=int, required=True, help="passages in the output")
    ap.add_argument("--out", required=True, help="output .jsonl")
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()

    source = []
    with open(a.source, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                p = json.loads(line)
                source.append((p["id"], p.get("title", ""), p["text"]))
            except (ValueError, KeyError) as e:
                sys.exit(f"{a.source}:{ln}: expected {{id, title, text}} ({e})")
    if not source:
        sys.exit(f"{a.source}: no passages")
    if a.passages < len(source):
        sys.exit(f"--passages {a.passages} is smaller than the source ({len(source)} passages)")
    sentences = [[s for s in SENTENCE_END.split(text) if s] or [text] for _, _, text in source]

    rng = random.Random(a.seed)
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        for pid, title, text in source:
            out.write(json.dumps({"id": pid, "title": title, "text": text}, ensure_ascii=False) + "\n")
        step = max(1, (a.passages - len(source)) // 20)
        for i in range(a.passages - len(source)):
            first = rng.randrange(len(source))
            parts = [rng.choice(sentences[first])]
            for _ in range(rng.randint(2, 6)):
                parts.append(rng.choice(sentences[rng.randrange(len(source))]))
            out.write(json.dumps({"id": f"mix-{i}", "title": source[first][1], "text": " ".join(parts)},
                                 ensure_ascii=False) + "\n")
            if (i + 1) % step == 0:
                print(f"\rmake_scale_corpus: {len(source) + i + 1} / {a.passages} passages",
                      end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
