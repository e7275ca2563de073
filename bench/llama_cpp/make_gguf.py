"""Write a GGUF v3 file (llama architecture) from a HuggingFace LLaMA checkpoint, so that real
llama.cpp (bench/llama_cpp/bench.mjs) can run the very weights our engine benchmarks.

    /usr/bin/python3 bench/llama_cpp/make_gguf.py --model DIR --type f32|bf16|f16|q8_0|q4_0 \
        --tokenizer PATH/tokenizer.model --out FILE.gguf

DIR holds config.json and model.safetensors (F32, BF16 or F16 tensors). Every 2-D matrix
(token_embd and output included) is written in --type; the norm weights stay F32. The quantizers
reproduce ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref bit for bit, so the file matches
what llama.cpp's own tools would make from the same F32 weights. Only numpy is needed: the
safetensors file, the sentencepiece protobuf and GGUF are handled here.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys

import numpy as np

ALIGNMENT = 32
# name: (ggml type id, general.file_type)
KINDS = {"f32": (0, 0), "f16": (1, 1), "q4_0": (2, 2), "q8_0": (8, 7), "bf16": (30, 32)}
QK = 32  # elements per Q8_0 / Q4_0 block


# --- input --------------------------------------------------------------------------------------

def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Tensors as float32 arrays over a memory map (nothing is copied until it is converted)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf, shape, dt = raw[a:b], info["shape"], info["dtype"]
        if dt == "F32":
            t = buf.view("<f4")
        elif dt == "F16":
            t = buf.view("<f2")
        elif dt == "BF16":  # bf16 is the top half of an f32
            t = (buf.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            sys.exit(f"make_gguf: {name}: unsupported dtype {dt}")
        out[name] = t.reshape(shape)
    return out


def read_sentencepiece(path: str):
    """(pieces, scores, types) from a sentencepiece ModelProto; the other fields are skipped."""
    data = open(path, "rb").read()

    def varint(buf, i):
        v = shift = 0
        while True:
            b = buf[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v, i

    def fields(buf):
        i = 0
        while i < len(buf):
            key, i = varint(buf, i)
            num, wire = key >> 3, key & 7
            if wire == 0:
                val, i = varint(buf, i)
            elif wire == 1:
                val, i = buf[i:i + 8], i + 8
            elif wire == 2:
                n, i = varint(buf, i)
                val, i = buf[i:i + n], i + n
            elif wire == 5:
                val, i = buf[i:i + 4], i + 4
            else:
                sys.exit(f"make_gguf: {path}: unsupported protobuf wire type {wire}")
            yield num, wire, val

    pieces, scores, types = [], [], []
    for num, wire, val in fields(data):
        if num != 1 or wire != 2:
            continue
        piece, score, kind = None, 0.0, 1  # proto defaults: score 0, type NORMAL
        for n2, w2, v2 in fields(val):
            if n2 == 1:
                piece = v2.decode("utf-8")
            elif n2 == 2 and w2 == 5:
                (score,) = struct.unpack("<f", v2)
            elif n2 == 3:
                kind = v2
        if piece is None:
            sys.exit(f"make_gguf: {path}: piece {len(pieces)} has no text")
        pieces.append(piece)
        scores.append(score)
        types.append(kind)
    if not pieces:
        sys.exit(f"make_gguf: {path}: no sentencepiece pieces found")
    return pieces, scores, types


# --- tensor encodings (ggml reference semantics, in float32 throughout) -------------------------

def to_bf16(x: np.ndarray) -> np.ndarray:
    # ggml_compute_fp32_to_bf16: round to nearest even; NaN stays a (quiet) NaN.
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r[nan] = ((u[nan] >> 16) | 64).astype(np.uint16)
    return r


def roundf(v: np.ndarray) -> np.ndarray:
    # C roundf (half away from zero) without the v + 0.5 double-rounding trap.
    t = np.trunc(v)
    return t + np.sign(v) * (np.abs(v - t) >= 0.5)


def blocks(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK)


def to_q8_0(x: np.ndarray) -> np.ndarray:
    b = blocks(x)
    d = np.abs(b).max(axis=1) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = roundf(b * inv[:, None]).astype(np.int8)
    out = np.empty((len(b), 2 + QK), np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out


def to_q4_0(x: np.ndarray) -> np.ndarray:
    b = blocks(x)
    # The signed element of largest magnitude (the first one on ties), scaled to -8.
    mx = b[np.arange(len(b)), np.abs(b).argmax(axis=1)]
    d = (mx / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.minimum(15, np.trunc(b * inv[:, None] + np.float32(8.5)).astype(np.int8)).astype(np.uint8)
    out = np.empty((len(b), 2 + QK // 2), np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q[:, :QK // 2] | (q[:, QK // 2:] << 4)
    return out


def encode(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "f32":
        return np.ascontiguousarray(x, dtype="<f4")
    if kind == "f16":
        return np.ascontiguousarray(x, dtype=np.float32).astype("<f2")
    if kind == "bf16":
        return to_bf16(x)
    return to_q8_0(x) if kind == "q8_0" else to_q4_0(x)


# --- model mapping ------------------------------------------------------------------------------

def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    # HF stores q/k rows in rotate-half order; llama.cpp's RoPE wants pairs interleaved
    # (the same transform as convert_hf_to_gguf.py's LlamaModel.permute).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(cfg: dict, hf: dict[str, np.ndarray]):
    """[(gguf name, HF array)] in llama.cpp's order, with shapes checked against config.json."""
    dim, ffn, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    kv_dim = dim // n_head * n_kv

    def get(name, shape):
        if name not in hf:
            sys.exit(f"make_gguf: tensor {name} missing from model.safetensors")
        if list(hf[name].shape) != list(shape):
            sys.exit(f"make_gguf: {name}: shape {list(hf[name].shape)}, expected {list(shape)}")
        return hf[name]

    out = [("token_embd.weight", get("model.embed_tokens.weight", (vocab, dim)))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (f"blk.{i}.attn_norm.weight", get(p + "input_layernorm.weight", (dim,))),
            (f"blk.{i}.attn_q.weight", permute_rope(get(p + "self_attn.q_proj.weight", (dim, dim)), n_head)),
            (f"blk.{i}.attn_k.weight", permute_rope(get(p + "self_attn.k_proj.weight", (kv_dim, dim)), n_kv)),
            (f"blk.{i}.attn_v.weight", get(p + "self_attn.v_proj.weight", (kv_dim, dim))),
            (f"blk.{i}.attn_output.weight", get(p + "self_attn.o_proj.weight", (dim, dim))),
            (f"blk.{i}.ffn_norm.weight", get(p + "post_attention_layernorm.weight", (dim,))),
            (f"blk.{i}.ffn_gate.weight", get(p + "mlp.gate_proj.weight", (ffn, dim))),
            (f"blk.{i}.ffn_up.weight", get(p + "mlp.up_proj.weight", (ffn, dim))),
            (f"blk.{i}.ffn_down.weight", get(p + "mlp.down_proj.weight", (dim, ffn))),
        ]
    out.append(("output_norm.weight", get("model.norm.weight", (dim,))))
    if "lm_head.weight" in hf or not cfg.get("tie_word_embeddings", False):
        out.append(("output.weight", get("lm_head.weight", (vocab, dim))))
    # else: tied, and llama.cpp falls back to token_embd for the head
    return out


# --- GGUF writer --------------------------------------------------------------------------------

def gguf_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key: str, value) -> bytes:
    """One metadata pair; the value's GGUF type is given as (type name, value)."""
    kind, v = value
    scalar = {"u32": (4, "<I"), "i32": (5, "<i"), "f32": (6, "<f"), "bool": (7, "<?")}
    head = gguf_str(key)
    if kind in scalar:
        t, fmt = scalar[kind]
        return head + struct.pack("<I", t) + struct.pack(fmt, v)
    if kind == "str":
        return head + struct.pack("<I", 8) + gguf_str(v)
    if kind == "str[]":
        return head + struct.pack("<IIQ", 9, 8, len(v)) + b"".join(gguf_str(s) for s in v)
    if kind == "f32[]":
        return head + struct.pack("<IIQ", 9, 6, len(v)) + np.asarray(v, "<f4").tobytes()
    if kind == "i32[]":
        return head + struct.pack("<IIQ", 9, 5, len(v)) + np.asarray(v, "<i4").tobytes()
    raise ValueError(kind)


def pad(n: int) -> int:
    return (ALIGNMENT - n % ALIGNMENT) % ALIGNMENT


def main() -> None:
    ap = argparse.ArgumentParser(description="HF LLaMA checkpoint -> GGUF v3 for llama.cpp")
    ap.add_argument("--model", required=True, help="directory with config.json and model.safetensors")
    ap.add_argument("--type", required=True, choices=sorted(KINDS), help="type of the 2-D matrices")
    ap.add_argument("--tokenizer", required=True, help="sentencepiece tokenizer.model")
    ap.add_argument("--out", required=True, help="GGUF file to write")
    ap.add_argument("--name", help="general.name (default: the model directory's name)")
    args = ap.parse_args()

    for f in ("config.json", "model.safetensors"):
        if not os.path.isfile(os.path.join(args.model, f)):
            sys.exit(f"make_gguf: {args.model} has no {f}")
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    hf = read_safetensors(os.path.join(args.model, "model.safetensors"))
    pieces, scores, types = read_sentencepiece(args.tokenizer)
    if len(pieces) != cfg["vocab_size"]:
        sys.exit(f"make_gguf: tokenizer has {len(pieces)} pieces, config vocab_size is {cfg['vocab_size']}")
    tensors = gguf_tensors(cfg, hf)
    ggml_type, file_type = KINDS[args.type]
    n_head = cfg["num_attention_heads"]

    meta = {
        "general.architecture": ("str", "llama"),
        "general.name": ("str", args.name or os.path.basename(os.path.normpath(args.model))),
        "general.file_type": ("u32", file_type),
        "general.alignment": ("u32", ALIGNMENT),
        "llama.context_length": ("u32", cfg["max_position_embeddings"]),
        "llama.embedding_length": ("u32", cfg["hidden_size"]),
        "llama.block_count": ("u32", cfg["num_hidden_layers"]),
        "llama.feed_forward_length": ("u32", cfg["intermediate_size"]),
        "llama.rope.dimension_count": ("u32", cfg["hidden_size"] // n_head),
        "llama.attention.head_count": ("u32", n_head),
        "llama.attention.head_count_kv": ("u32", cfg.get("num_key_value_heads") or n_head),
        "llama.attention.layer_norm_rms_epsilon": ("f32", cfg.get("rms_norm_eps", 1e-5)),
        "llama.rope.freq_base": ("f32", cfg.get("rope_theta", 10000.0)),
        "tokenizer.ggml.model": ("str", "llama"),
        "tokenizer.ggml.tokens": ("str[]", pieces),
        "tokenizer.ggml.scores": ("f32[]", scores),
        "tokenizer.ggml.token_type": ("i32[]", types),
        "tokenizer.ggml.bos_token_id": ("u32", 1),
        "tokenizer.ggml.eos_token_id": ("u32", 2),
        "tokenizer.ggml.unknown_token_id": ("u32", 0),
        "tokenizer.ggml.add_bos_token": ("bool", True),
    }

    # Tensor infos need each tensor's byte size up front; sizes follow from shape and type.
    def nbytes(shape, t):
        n = int(np.prod(shape))
        if t == 0:
            return 4 * n
        if t in (1, 30):
            return 2 * n
        if shape[-1] % QK:
            sys.exit(f"make_gguf: a row of {shape[-1]} elements is not a whole number of {QK}-blocks")
        return n // QK * (34 if t == 8 else 18)

    infos, plan, offset = [], [], 0
    for name, arr in tensors:
        t = ggml_type if arr.ndim == 2 else 0
        size = nbytes(arr.shape, t)
        dims = arr.shape[::-1]  # GGUF lists ne0 (the contiguous, innermost dimension) first
        infos.append(gguf_str(name) + struct.pack("<I", len(dims)) +
                     struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", t, offset))
        plan.append((arr, "f32" if t == 0 else args.type, size))
        offset += size + pad(size)

    head = (b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)) +
            b"".join(gguf_kv(k, v) for k, v in meta.items()) + b"".join(infos))
    tmp = args.out + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(head + b"\0" * pad(len(head)))
            for arr, kind, size in plan:
                data = encode(arr, kind).tobytes()
                assert len(data) == size, (len(data), size)
                f.write(data + b"\0" * pad(size))
        os.replace(tmp, args.out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    print(f"make_gguf: wrote {args.out} ({args.type}, {len(tensors)} tensors, "
          f"{os.path.getsize(args.out) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
