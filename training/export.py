#!/usr/bin/env python3
"""Writes a model in the HuggingFace CEPE layout the engine loads:

  DIR/config.json                     LLaMA config + CEPE keys + encoder_config
  DIR/model.safetensors               (or model-0000k-of-0000n.safetensors + index, --max-shard-mb)
  DIR/tokenizer.model

  export.py --checkpoint RUN/ckpt.pt --out DIR [--dtype f16|bf16|f32] [--max-shard-mb N]
  export.py --from MODEL_DIR --out DIR ...       (re-shard or convert an exported dir)

train.py calls `export_model` at the end of each stage (RUN/final). Shards of at most 15 MB are
what the device machine can hand back (16 MiB a file); the engine reads the index either way.
The safetensors writer is the reference's (tests/reference/cepe_reference.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import common  # noqa: E402
import cepe_reference as ref  # noqa: E402

DTYPES = {"f32": ("F32", "float32"), "f16": ("F16", "float16"), "bf16": ("BF16", "bfloat16")}
_BYTES = {"F32": 4, "F16": 2, "BF16": 2}


def hf_config(config: dict, dtype: str) -> dict:
    """The model's config with the keys HF's LlamaConfig and CEPE's loader expect."""
    c = json.loads(json.dumps(config))
    c.update(architectures=["LlamaForCausalContextLM" if c.get("do_cross_attention")
                            else "LlamaForCausalLM"],
             model_type="llama", hidden_act="silu", tie_word_embeddings=False,
             bos_token_id=common.BOS_ID, eos_token_id=common.EOS_ID,
             torch_dtype=DTYPES[dtype][1])
    if c.get("do_cross_attention"):
        enc = c["encoder_config"]
        enc.update(model_type="llama", hidden_act="silu", is_decoder=False,
                   bos_token_id=common.BOS_ID, eos_token_id=common.EOS_ID)
        c.update(num_cross_attn_hidden_states=1, encoder_is_model=False,
                 encode_mode="context_only", encoder_hidden_size=enc["hidden_size"])
    return c


def _shards(names, tensors, st_dtype, max_bytes):
    """Greedy packing in name order, a new shard whenever the next tensor would overflow."""
    shards, cur, size = [], [], 0
    for n in names:
        b = tensors[n].numel() * _BYTES[st_dtype]
        if cur and max_bytes and size + b > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += b
    if cur:
        shards.append(cur)
    return shards


def export_model(config: dict, state_dict, tokenizer: bytes, out_dir: str, dtype: str = "f16",
                 max_shard_mb: float = 0, info: dict = None) -> str:
    """Writes the directory atomically (a sibling temp dir renamed into place)."""
    st_dtype = DTYPES[dtype][0]
    tensors = {k: v.detach().float().cpu() for k, v in state_dict.items()}
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf_config(config, dtype), f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(tmp, "tokenizer.model"), "wb") as f:
        f.write(tokenizer)
    names = sorted(tensors)
    shards = _shards(names, tensors, st_dtype, int(max_shard_mb * 1e6))
    meta = {"format": "pt"}
    if len(shards) == 1:
        ref.write_safetensors(os.path.join(tmp, "model.safetensors"), tensors, st_dtype, meta)
    else:
        weight_map, total = {}, 0
        for i, group in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            ref.write_safetensors(os.path.join(tmp, fname), {n: tensors[n] for n in group},
                                  st_dtype, meta)
            for n in group:
                weight_map[n] = fname
                total += tensors[n].numel() * _BYTES[st_dtype]
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
                      sort_keys=True)
            f.write("\n")
    if info:
        with open(os.path.join(tmp, "training_info.json"), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)
            f.write("\n")
    old = out_dir.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out_dir):
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a train.py checkpoint (RUN/ckpt.pt)")
    src.add_argument("--from", dest="from_dir", help="an exported model directory")
    ap.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f16")
    ap.add_argument("--max-shard-mb", type=float, default=0, help="0: one file")
    args = ap.parse_args(argv)
    if args.checkpoint:
        ck = torch.load(args.checkpoint, map_location="cpu")
        config, weights, tok = ck["config"], ck["model"], ck["tokenizer"]
        info = {"stage": ck["stage"], "step": ck["step"], "source": "checkpoint"}
    else:
        with open(os.path.join(args.from_dir, "config.json")) as f:
            config = json.load(f)
        weights = ref.load_weights(args.from_dir)
        with open(os.path.join(args.from_dir, "tokenizer.model"), "rb") as f:
            tok = f.read()
        info = None
    export_model(config, weights, tok, args.out, args.dtype, args.max_shard_mb, info)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"exported {args.out} ({total / 1e6:.1f} MB, {args.dtype})")


if __name__ == "__main__":
    main()
