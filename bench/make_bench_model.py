"""Write a random CEPE checkpoint (HF layout, like the fixtures) for benchmarking.

    /usr/bin/python3 bench/make_bench_model.py --out /tmp/cepe-bench [--dtype f32|bf16] [--seed 0]

Default shape (~150M parameters, ~0.6 GB in f32): decoder 8 layers x 768 hidden, 12 heads, FFN 2048,
vocab 32000, cross-attention in all 8 layers, max_position_embeddings 4096; encoder 4 layers x 512,
8 heads, FFN 1376, max_position_embeddings 512. Weights are random (timing only); write it outside
the repository.

    --plain: a plain LLaMA (no encoder, no cross-attention), the 134M shape of issue 14 with
    --dec-layers 12: dim 768, 12 heads, FFN 2048, vocab 32000, untied lm_head.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "reference"))

import torch  # noqa: E402

import cepe_reference as ref  # noqa: E402


def llama(hidden, heads, kv, layers, ffn, vocab, max_pos, dtype):
    return {"bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": hidden,
            "initializer_range": 0.02, "intermediate_size": ffn, "max_position_embeddings": max_pos,
            "model_type": "llama", "num_attention_heads": heads, "num_hidden_layers": layers,
            "num_key_value_heads": kv, "pretraining_tp": 1, "rms_norm_eps": 1e-5, "rope_scaling": None,
            "rope_theta": 10000.0, "torch_dtype": dtype, "transformers_version": "4.34.0",
            "use_cache": True, "vocab_size": vocab}


def main() -> None:
    ap = argparse.ArgumentParser(description="random CEPE checkpoint for benchmarks")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dec-layers", type=int, default=8)
    ap.add_argument("--dec-hidden", type=int, default=768)
    ap.add_argument("--dec-heads", type=int, default=12)
    ap.add_argument("--dec-kv-heads", type=int, default=12)
    ap.add_argument("--dec-ffn", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--enc-layers", type=int, default=4)
    ap.add_argument("--enc-hidden", type=int, default=512)
    ap.add_argument("--enc-heads", type=int, default=8)
    ap.add_argument("--enc-ffn", type=int, default=1376)
    ap.add_argument("--plain", action="store_true", help="plain LLaMA: no encoder, no cross-attention")
    a = ap.parse_args()

    torch_dtype = {"f32": "float32", "bf16": "bfloat16"}[a.dtype]
    cfg = llama(a.dec_hidden, a.dec_heads, a.dec_kv_heads, a.dec_layers, a.dec_ffn, a.vocab, 4096, torch_dtype)
    enc = llama(a.enc_hidden, a.enc_heads, a.enc_heads, a.enc_layers, a.enc_ffn, a.vocab, 512, torch_dtype)
    enc.update({"architectures": ["LlamaForMLM"], "is_encoder": True, "pad_token_id": 0,
                "tie_word_embeddings": True})
    cfg.update({"architectures": ["LlamaForCausalContextLM"], "tie_word_embeddings": False,
                "do_cross_attention": True, "num_cross_attn_layers": a.dec_layers,
                "num_cross_attn_hidden_states": 1, "encoder_hidden_size": a.enc_hidden,
                "encoder_is_model": False, "encode_mode": "context_only", "encoder_config": enc})

    if a.plain:
        cfg = llama(a.dec_hidden, a.dec_heads, a.dec_kv_heads, a.dec_layers, a.dec_ffn, a.vocab, 4096,
                    torch_dtype)
        cfg.update({"architectures": ["LlamaForCausalLM"], "tie_word_embeddings": False})

    gen = torch.Generator().manual_seed(a.seed)

    def lin(out_f, in_f):
        return torch.randn(out_f, in_f, generator=gen) / math.sqrt(in_f)

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, generator=gen)

    def stack(prefix, hidden, heads, kv, layers, ffn, cross_in=None):
        hd = hidden // heads
        w = {prefix + "embed_tokens.weight": torch.randn(a.vocab, hidden, generator=gen),
             prefix + "norm.weight": norm(hidden)}
        for i in range(layers):
            p = f"{prefix}layers.{i}."
            w.update({p + "input_layernorm.weight": norm(hidden),
                      p + "post_attention_layernorm.weight": norm(hidden),
                      p + "self_attn.q_proj.weight": lin(heads * hd, hidden),
                      p + "self_attn.k_proj.weight": lin(kv * hd, hidden),
                      p + "self_attn.v_proj.weight": lin(kv * hd, hidden),
                      p + "self_attn.o_proj.weight": lin(hidden, heads * hd),
                      p + "mlp.gate_proj.weight": lin(ffn, hidden),
                      p + "mlp.up_proj.weight": lin(ffn, hidden),
                      p + "mlp.down_proj.weight": lin(hidden, ffn)})
            if cross_in:
                c = p + "cross_attn."
                w.update({c + "layernorm.weight": norm(hidden),
                          c + "q_proj.weight": lin(heads * hd, hidden),
                          c + "k_proj.weight": lin(kv * hd, cross_in),
                          c + "v_proj.weight": lin(kv * hd, cross_in),
                          c + "o_proj.weight": lin(hidden, heads * hd)})
        return w

    w = stack("model.", a.dec_hidden, a.dec_heads, a.dec_kv_heads, a.dec_layers, a.dec_ffn,
              None if a.plain else a.enc_hidden)
    w["lm_head.weight"] = lin(a.vocab, a.dec_hidden)
    if not a.plain:
        w.update(stack("encoder.", a.enc_hidden, a.enc_heads, a.enc_heads, a.enc_layers, a.enc_ffn))

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    ref.write_safetensors(os.path.join(a.out, "model.safetensors"), w, {"f32": "F32", "bf16": "BF16"}[a.dtype])
    n = sum(t.numel() for t in w.values())
    n_enc = sum(t.numel() for k, t in w.items() if k.startswith("encoder."))
    print(json.dumps({"out": a.out, "dtype": a.dtype, "params": n, "encoder_params": n_enc,
                      "bytes": os.path.getsize(os.path.join(a.out, "model.safetensors"))}))


if __name__ == "__main__":
    main()
