#!/usr/bin/python3
"""Reference for the `bert` dense embedder (retriever/bert_embedder.h).

A small pure-PyTorch BERT encoder (BertModel's forward: embeddings + post-LayerNorm transformer
layers with exact-erf GELU), a BertTokenizer-semantics WordPiece tokenizer written from the
algorithm's description, a hand-written safetensors writer, and the generator of the committed
fixture tests/fixtures/bert_tiny/ (random weights, a hand-made vocab.txt, expected ids and
embeddings computed in float64). Uses no `transformers` library.

  /usr/bin/python3 tests/reference/bert_reference.py                    # regenerate the fixture

The Unicode tables retriever/wordpiece.cpp uses come from common/gen_unicode_tables.py (the one
generator; see common/unicode.h).
"""
import json
import math
import os
import struct
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "fixtures", "bert_tiny")

# ---- tokenizer (BertTokenizer semantics) -----------------------------------------------------


def is_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def is_control(ch):
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokens(text, lower=True, strip_accents=None, cjk=True):
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or is_control(ch):
            continue
        out.append(" " if is_whitespace(ch) else ch)
    text = "".join(out)
    if cjk:
        text = "".join(f" {c} " if is_cjk(ord(c)) else c for c in text)
    tokens = []
    for tok in text.split():
        if lower:
            tok = tok.lower()
        if (lower and strip_accents is not False) or strip_accents:
            tok = "".join(c for c in unicodedata.normalize("NFD", tok)
                          if unicodedata.category(c) != "Mn")
        piece = []
        for c in tok:
            if is_punctuation(c):
                if piece:
                    tokens.append("".join(piece))
                    piece = []
                tokens.append(c)
            else:
                piece.append(c)
        if piece:
            tokens.append("".join(piece))
    return tokens


def wordpiece(tokens, vocab, unk="[UNK]", max_chars=100):
    out = []
    for tok in tokens:
        if len(tok) > max_chars:
            out.append(unk)
            continue
        start, pieces = 0, []
        while start < len(tok):
            end, found = len(tok), None
            while start < end:
                sub = ("##" if start > 0 else "") + tok[start:end]
                if sub in vocab:
                    found = sub
                    break
                end -= 1
            if found is None:
                pieces = None
                break
            pieces.append(found)
            start = end
        out.extend(pieces if pieces is not None else [unk])
    return out


def encode(text, vocab, max_len, **kw):
    pieces = wordpiece(basic_tokens(text, **kw), vocab)[: max_len - 2]
    return [vocab["[CLS]"]] + [vocab[p] for p in pieces] + [vocab["[SEP]"]]


# ---- model ---------------------------------------------------------------------------------------


def bert_forward(w, cfg, ids, torch):
    """Last hidden states [T, H] of one text (float64), BertModel semantics, token type 0."""
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd, eps = H // nh, cfg["layer_norm_eps"]
    t = torch.tensor(ids)
    ln = lambda x, p: torch.nn.functional.layer_norm(x, (H,), w[p + ".weight"], w[p + ".bias"], eps)
    lin = lambda x, p: x @ w[p + ".weight"].T + w[p + ".bias"]
    x = (w["embeddings.word_embeddings.weight"][t]
         + w["embeddings.position_embeddings.weight"][: len(ids)]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = lin(x, p + "attention.self.query").view(-1, nh, hd).transpose(0, 1)
        k = lin(x, p + "attention.self.key").view(-1, nh, hd).transpose(0, 1)
        v = lin(x, p + "attention.self.value").view(-1, nh, hd).transpose(0, 1)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), dim=-1) @ v
        a = a.transpose(0, 1).reshape(-1, H)
        x = ln(lin(a, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
        x = ln(lin(h, p + "output.dense") + x, p + "output.LayerNorm")
    return x


def pool(hidden, pooling, normalize, torch):
    v = hidden.mean(dim=0) if pooling == "mean" else hidden[0]
    if normalize:
        v = v / torch.clamp(v.norm(), min=1e-12)
    return v


# ---- safetensors ---------------------------------------------------------------------------------


def write_safetensors(path, tensors):
    """tensors: list of (name, float32 torch tensor); written little-endian F32, header padded."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors:
        data = t.detach().contiguous().to(dtype=t.dtype).numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---- fixture -------------------------------------------------------------------------------------

VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
         + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["¿", "¡", "«", "»", "—", "…", "。", "，"]
         + list("abcdefghijklmnopqrstuvwxyz0123456789")
         + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
         + ["the", "a", "an", "of", "and", "in", "to", "is", "was", "who", "what", "where",
            "when", "which", "capital", "france", "paris", "city", "river", "seine", "cafe",
            "naive", "resume", "creme", "brulee", "uber", "zurich", "sao", "paulo", "munchen",
            "espana", "nino", "play", "##ing", "##ed", "##er", "##s", "##ly", "##able", "un",
            "##believ", "believ", "quick", "brown", "fox", "jump", "##s", "over", "lazy", "dog",
            "hello", "world", "hug", "##gin", "##g", "face", "token", "##izer", "##ization",
            "query", "passage", "bert", "model", "text", "first", "second", "third", "word",
            "long", "##er", "##est", "don", "'", "t", "it", "##'", "ρ", "σ", "ς", "οδος",
            "##ος", "οδ", "中", "国", "人", "日", "本", "北", "京", "東", "京", "語", "词",
            "ai", "##i", "ii", "i", "the", "Hello", "World", "Paris", "##ING", "Café", "é",
            "##é", "ß", "##ss", "ss", "strasse", "stra", "##ß", "##e", "x", "y", "##x"])


def unique(seq):
    seen, out = set(), []
    for s in seq:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


TEXTS = [
    "What is the capital of France?",
    "Paris is the capital and largest city of France, on the river Seine.",
    "Café crème brûlée — naïve résumé!",
    "Über Zürich, São Paulo, München; España: niño.",
    "Hugging Face tokenization: un-believ-able!!! (don't)",
    "北京是中国的首都。日本語 text",
    "A supercalifragilisticexpialidocious word, and " + "x" * 120 + " too.",
    "\tcontrol\u0000chars\u200b and\u00a0nbsp  spaces\r\n",
    "ΟΔΟΣ and οδος",
    " ".join(["long"] * 80),  # past max_position_embeddings: truncated
    "",
]

CONFIG = {
    "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
    "max_position_embeddings": 48, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
    "hidden_act": "gelu", "vocab_size": 0, "pad_token_id": 0,
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
}

SETTINGS = [  # name, pooling, normalize, prefix applied to every text
    ("mean", "mean", False, ""),
    ("cls", "cls", False, ""),
    ("mean_norm_query", "mean", True, "query: "),
    ("cls_norm_passage", "cls", True, "passage: "),
]


def make_fixture():
    import torch

    torch.manual_seed(1234)
    vocab_list = unique(VOCAB)
    vocab = {t: i for i, t in enumerate(vocab_list)}
    cfg = dict(CONFIG, vocab_size=len(vocab_list))
    H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    tensors = []

    def add(name, *shape, scale=0.5, shift=0.0):
        tensors.append((name, (torch.randn(*shape) * scale + shift).float()))

    add("embeddings.word_embeddings.weight", len(vocab_list), H)
    add("embeddings.position_embeddings.weight", cfg["max_position_embeddings"], H, scale=0.2)
    add("embeddings.token_type_embeddings.weight", cfg["type_vocab_size"], H, scale=0.2)
    add("embeddings.LayerNorm.weight", H, scale=0.2, shift=1.0)
    add("embeddings.LayerNorm.bias", H, scale=0.1)
    for i in range(L):
        p = f"encoder.layer.{i}."
        for m in ("query", "key", "value"):
            add(p + f"attention.self.{m}.weight", H, H, scale=H ** -0.5)
            add(p + f"attention.self.{m}.bias", H, scale=0.1)
        add(p + "attention.output.dense.weight", H, H, scale=H ** -0.5)
        add(p + "attention.output.dense.bias", H, scale=0.1)
        add(p + "attention.output.LayerNorm.weight", H, scale=0.2, shift=1.0)
        add(p + "attention.output.LayerNorm.bias", H, scale=0.1)
        add(p + "intermediate.dense.weight", I, H, scale=H ** -0.5)
        add(p + "intermediate.dense.bias", I, scale=0.1)
        add(p + "output.dense.weight", H, I, scale=I ** -0.5)
        add(p + "output.dense.bias", H, scale=0.1)
        add(p + "output.LayerNorm.weight", H, scale=0.2, shift=1.0)
        add(p + "output.LayerNorm.bias", H, scale=0.1)
    # A pooler as real checkpoints have; the embedder ignores it.
    add("pooler.dense.weight", H, H, scale=H ** -0.5)
    add("pooler.dense.bias", H, scale=0.1)

    os.makedirs(FIXTURE, exist_ok=True)
    write_safetensors(os.path.join(FIXTURE, "model.safetensors"), tensors)
    with open(os.path.join(FIXTURE, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(FIXTURE, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in vocab_list))
    with open(os.path.join(FIXTURE, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "model_max_length": 512,
                   "tokenizer_class": "BertTokenizer"}, f, indent=2)
        f.write("\n")

    w = {n: t.double() for n, t in tensors}
    max_len = cfg["max_position_embeddings"]
    expected = {"texts": TEXTS, "ids": {}, "embeddings": {}, "settings": []}
    for name, pooling, normalize, prefix in SETTINGS:
        expected["settings"].append({"name": name, "pooling": pooling, "normalize": normalize,
                                     "prefix": prefix})
        ids = [encode(prefix + t, vocab, max_len) for t in TEXTS]
        expected["ids"][name] = ids
        expected["embeddings"][name] = [
            [float(v) for v in pool(bert_forward(w, cfg, i, torch), pooling, normalize, torch)]
            for i in ids]
    expected["pieces"] = [wordpiece(basic_tokens(t), vocab) for t in TEXTS]
    with open(os.path.join(FIXTURE, "expected_embeddings.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(FIXTURE, n)) for n in os.listdir(FIXTURE))
    print(f"wrote {FIXTURE}: {len(vocab_list)} tokens, {total} bytes")


if __name__ == "__main__":
    make_fixture()
