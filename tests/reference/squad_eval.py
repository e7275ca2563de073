#!/usr/bin/env python3
"""Independent reference for the C++ answer scoring (qa/scoring.cpp), in plain Python 3.

Implements the SQuAD v1.1 evaluation semantics (normalize_answer, exact match, token F1), CEPE's
variant of F1 (zero when a yes/no/noanswer answer meets a different one) and CEPE's substring
exact match, each maximised over the gold answers. The C++ test feeds it generated cases and
requires bit-identical results.

Input, one case per line: hex(prediction) TAB hex(gold) [TAB hex(gold) ...], the strings being
UTF-8 bytes (invalid sequences allowed: they are decoded with surrogateescape, which is how the
C++ side treats them).
Output, one line per case, tab-separated:
  hex(normalised prediction)  em  f1_squad  f1_cepe  substring  hex(normalised first gold)
with em/substring as 0/1 and the F1 values as float.hex() so that the comparison is exact.

With --normalize each input line is a single hex string and the output its normalised hex.
"""

import collections
import re
import string
import sys

PUNCTUATION = frozenset(string.punctuation)
ARTICLES = re.compile(r"\b(a|an|the)\b")
YES_NO = ("yes", "no", "noanswer")


def normalize(text):
    lowered = text.lower()
    no_punct = "".join(ch for ch in lowered if ch not in PUNCTUATION)
    no_articles = ARTICLES.sub(" ", no_punct)
    return " ".join(no_articles.split())


def exact(pred, gold):
    return normalize(pred) == normalize(gold)


def f1(pred, gold, cepe_rule):
    p, g = normalize(pred), normalize(gold)
    if cepe_rule and p != g and (p in YES_NO or g in YES_NO):
        return 0.0
    p_tokens, g_tokens = p.split(), g.split()
    overlap = collections.Counter(p_tokens) & collections.Counter(g_tokens)
    same = sum(overlap.values())
    if same == 0:
        return 0.0
    precision = 1.0 * same / len(p_tokens)
    recall = 1.0 * same / len(g_tokens)
    return (2 * precision * recall) / (precision + recall)


def substring(pred, gold):
    return normalize(gold) in normalize(pred)


def best(metric, pred, golds):
    return max(metric(pred, g) for g in golds)


def decode(hex_text):
    return bytes.fromhex(hex_text).decode("utf-8", "surrogateescape")


def encode(text):
    return text.encode("utf-8", "surrogateescape").hex()


def main():
    args = sys.argv[1:]
    normalize_only = "--normalize" in args
    paths = [a for a in args if a != "--normalize"]
    source = open(paths[0], encoding="ascii") if paths else sys.stdin
    out = []
    for line in source:
        fields = line.rstrip("\n").split("\t")
        if normalize_only:
            out.append(encode(normalize(decode(fields[0]))))
            continue
        pred = decode(fields[0])
        golds = [decode(f) for f in fields[1:]]
        if not golds:
            sys.exit("squad_eval.py: a case without gold answers")
        out.append("\t".join([
            encode(normalize(pred)),
            str(int(best(exact, pred, golds))),
            best(lambda p, g: f1(p, g, False), pred, golds).hex(),
            best(lambda p, g: f1(p, g, True), pred, golds).hex(),
            str(int(best(substring, pred, golds))),
            encode(normalize(golds[0])),
        ]))
    sys.stdout.write("".join(o + "\n" for o in out))


if __name__ == "__main__":
    main()
