"""Write the tiny random CEPE / LLaMA checkpoints and their expected outputs under tests/fixtures/.

    /usr/bin/python3 tests/reference/make_fixtures.py [--out tests/fixtures] [--only CASE ...]

Deterministic: every case draws its weights and token ids from its own seeded torch.Generator, the
reference runs single-threaded, and files are written with sorted keys, so regenerating on the same
machine and torch build gives byte-identical files. Each case directory holds config.json,
model.safetensors (or shards + model.safetensors.index.json) and expected.json; see
tests/fixtures/README.md for the format.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import cepe_reference as ref  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCH_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}

# Greedy steps whose top-1/top-2 logit gap is below this are too close to call for an engine whose
# arithmetic differs in the last bits; prompts are redrawn until every step clears it.
MIN_MARGIN = 0.02


# --------------------------------------------------------------------------------------------------
# Case definitions
# --------------------------------------------------------------------------------------------------

def stack(hidden, heads, kv, layers, ffn, vocab, max_pos, theta, scaling=None, eps=1e-5):
    return dict(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv,
                num_hidden_layers=layers, intermediate_size=ffn, vocab_size=vocab,
                max_position_embeddings=max_pos, rope_theta=theta, rope_scaling=scaling,
                rms_norm_eps=eps)


CASES = [
    dict(name="gqa_cross_last2", seed=101, dtype="F32", tie=False, shards=1,
         dec=stack(64, 4, 2, 3, 160, 96, 64, 50000.0),
         enc=stack(48, 4, 4, 2, 96, 96, 64, 10000.0, eps=1e-6), cross_layers=2,
         input_len=20, context_lens=[7, 13, 4],
         greedy=dict(prompt_len=12, context_lens=[7, 13, 4], max_new=10),
         # The same kind of prompt with NO context: cross-attention blocks are skipped entirely.
         extra=[dict(prompt_len=12, context_lens=[], max_new=8)]),
    dict(name="linear_tied", seed=202, dtype="F32", tie=True, shards=1,
         dec=stack(32, 4, 4, 2, 96, 96, 64, 10000.0, {"type": "linear", "factor": 2.0}),
         # The encoder has its own (different) linear scaling: it must read encoder_config.
         enc=stack(32, 4, 4, 2, 64, 96, 64, 10000.0, {"type": "linear", "factor": 4.0}, eps=1e-6),
         cross_layers=2, input_len=18, context_lens=[9, 6],
         greedy=dict(prompt_len=10, context_lens=[9, 6], max_new=10), extra=[]),
    dict(name="dynamic", seed=303, dtype="F32", tie=False, shards=1,
         dec=stack(48, 4, 2, 2, 96, 96, 16, 10000.0, {"type": "dynamic", "factor": 2.0}),
         enc=stack(32, 4, 4, 1, 64, 96, 64, 10000.0, eps=1e-6), cross_layers=2,
         # 24 > max_pos 16: the whole scored sequence uses base'(24).
         input_len=24, context_lens=[5, 11],
         # Prompt 10 <= 16, then kv length 11..23: the table is rebuilt at 17, 18, ... 23.
         greedy=dict(prompt_len=10, context_lens=[5, 11], max_new=14),
         # Prompt 20 > 16 (rotated with base'(20)), then 21, 22, ...
         extra=[dict(prompt_len=20, context_lens=[5, 11], max_new=6)]),
    dict(name="bf16", seed=404, dtype="BF16", tie=False, shards=1,
         dec=stack(64, 4, 2, 3, 128, 96, 64, 10000.0),
         enc=stack(48, 4, 4, 2, 96, 96, 64, 10000.0, eps=1e-6), cross_layers=1,
         input_len=20, context_lens=[8, 3, 12],
         greedy=dict(prompt_len=12, context_lens=[8, 3, 12], max_new=10), extra=[]),
    dict(name="plain_llama_sharded", seed=505, dtype="F16", tie=False, shards=2,
         dec=stack(64, 4, 2, 3, 160, 128, 64, 10000.0, eps=1e-6), enc=None, cross_layers=0,
         input_len=24, context_lens=[],
         greedy=dict(prompt_len=8, context_lens=[], max_new=12),
         extra=[dict(prompt_len=8, context_lens=[], max_new=40, want_eos=True)]),
    dict(name="mha_encoder_gqa", seed=606, dtype="F32", tie=False, shards=1,
         dec=stack(48, 4, 4, 2, 96, 96, 64, 10000.0),
         # Encoder: GQA with 3 query heads per kv head, head_dim 8, its own rope_theta, and a
         # max_position_embeddings (32) shorter than the long chunk (40): plain RoPE just extends.
         enc=stack(48, 6, 2, 2, 64, 96, 32, 500000.0, eps=1e-6), cross_layers=2,
         input_len=16, context_lens=[40, 1, 9],
         greedy=dict(prompt_len=10, context_lens=[40], max_new=10),
         extra=[dict(prompt_len=10, context_lens=[1], max_new=8)]),
    # Prompts and chunks longer than the CPU's few-row kernels take (32 F32 rows): the decoder's
    # prefill and the encoder run the blocked GEMMs, with partial 14-row panels (72 = 5 x 14 + 2)
    # and partial 32-row weight blocks (hidden 48, kv width 24; FFN 96 = 3 x 32).
    dict(name="long_prompt", seed=707, dtype="F32", tie=False, shards=1,
         dec=stack(48, 4, 2, 2, 96, 96, 128, 10000.0), enc=stack(32, 4, 4, 1, 64, 96, 64,
                                                                 10000.0, eps=1e-6),
         cross_layers=2, input_len=72, context_lens=[40, 30],
         greedy=dict(prompt_len=50, context_lens=[40, 30], max_new=8), extra=[]),
]


# --------------------------------------------------------------------------------------------------
# Configs and weights
# --------------------------------------------------------------------------------------------------

def llama_keys(s: dict, dtype: str) -> dict:
    return {
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": s["hidden_size"], "initializer_range": 0.02,
        "intermediate_size": s["intermediate_size"],
        "max_position_embeddings": s["max_position_embeddings"], "model_type": "llama",
        "num_attention_heads": s["num_attention_heads"],
        "num_hidden_layers": s["num_hidden_layers"],
        "num_key_value_heads": s["num_key_value_heads"], "pretraining_tp": 1,
        "rms_norm_eps": s["rms_norm_eps"], "rope_scaling": s["rope_scaling"],
        "rope_theta": s["rope_theta"], "torch_dtype": TORCH_DTYPE[dtype],
        "transformers_version": "4.34.0", "use_cache": True, "vocab_size": s["vocab_size"],
    }


def make_config(case: dict) -> dict:
    cfg = llama_keys(case["dec"], case["dtype"])
    cfg["tie_word_embeddings"] = case["tie"]
    if case["enc"] is None:
        cfg["architectures"] = ["LlamaForCausalLM"]
        return cfg
    enc = llama_keys(case["enc"], case["dtype"])
    # As in the authors' MLM encoder config (configs/mlm_config.json); its tie_word_embeddings is
    # about the MLM head, which CEPE does not load.
    enc.update({"architectures": ["LlamaForMLM"], "is_encoder": True, "pad_token_id": 0,
                "tie_word_embeddings": True})
    cfg.update({
        "architectures": ["LlamaForCausalContextLM"],
        "do_cross_attention": True,
        "num_cross_attn_layers": case["cross_layers"],
        "num_cross_attn_hidden_states": 1,
        "encoder_hidden_size": case["enc"]["hidden_size"],
        "encoder_is_model": False,
        "encode_mode": "context_only",
        "encoder_config": enc,
    })
    return cfg


def _normal(gen, shape, std):
    return torch.randn(*shape, generator=gen) * std


def stack_weights(gen, prefix: str, s: dict) -> dict:
    """Random weights scaled so activations stay O(1): linear std 1/sqrt(fan_in); norm weights
    around 1 but not 1, so an engine applying the wrong norm weight fails."""
    H, hd = s["hidden_size"], s["hidden_size"] // s["num_attention_heads"]
    q_out, kv_out, ffn = s["num_attention_heads"] * hd, s["num_key_value_heads"] * hd, s["intermediate_size"]
    w = {prefix + "embed_tokens.weight": _normal(gen, (s["vocab_size"], H), 1.0)}
    for i in range(s["num_hidden_layers"]):
        p = f"{prefix}layers.{i}."
        w[p + "input_layernorm.weight"] = 1.0 + _normal(gen, (H,), 0.2)
        w[p + "self_attn.q_proj.weight"] = _normal(gen, (q_out, H), 1.5 / math.sqrt(H))
        w[p + "self_attn.k_proj.weight"] = _normal(gen, (kv_out, H), 1.5 / math.sqrt(H))
        w[p + "self_attn.v_proj.weight"] = _normal(gen, (kv_out, H), 1.0 / math.sqrt(H))
        w[p + "self_attn.o_proj.weight"] = _normal(gen, (H, q_out), 1.0 / math.sqrt(q_out))
        w[p + "post_attention_layernorm.weight"] = 1.0 + _normal(gen, (H,), 0.2)
        w[p + "mlp.gate_proj.weight"] = _normal(gen, (ffn, H), 1.0 / math.sqrt(H))
        w[p + "mlp.up_proj.weight"] = _normal(gen, (ffn, H), 1.0 / math.sqrt(H))
        w[p + "mlp.down_proj.weight"] = _normal(gen, (H, ffn), 1.0 / math.sqrt(ffn))
    w[prefix + "norm.weight"] = 1.0 + _normal(gen, (H,), 0.2)
    return w


def make_weights(case: dict):
    """All tensors of the case, and the generator (which goes on to draw the token ids)."""
    gen = torch.Generator().manual_seed(case["seed"])
    d = case["dec"]
    H, hd = d["hidden_size"], d["hidden_size"] // d["num_attention_heads"]
    w = stack_weights(gen, "model.", d)
    if case["tie"]:
        # Tied: logits = norm(x) . embed; keep them a few units wide.
        w["model.embed_tokens.weight"] = _normal(gen, (d["vocab_size"], H), 3.0 / math.sqrt(H))
    else:
        w["lm_head.weight"] = _normal(gen, (d["vocab_size"], H), 3.0 / math.sqrt(H))
    if case["enc"] is not None:
        e = case["enc"]["hidden_size"]
        q_out, kv_out = d["num_attention_heads"] * hd, d["num_key_value_heads"] * hd
        for i in range(d["num_hidden_layers"] - case["cross_layers"], d["num_hidden_layers"]):
            p = f"model.layers.{i}.cross_attn."
            w[p + "layernorm.weight"] = 1.0 + _normal(gen, (H,), 0.2)
            w[p + "q_proj.weight"] = _normal(gen, (q_out, H), 1.5 / math.sqrt(H))
            w[p + "k_proj.weight"] = _normal(gen, (kv_out, e), 1.5 / math.sqrt(e))
            w[p + "v_proj.weight"] = _normal(gen, (kv_out, e), 1.0 / math.sqrt(e))
            w[p + "o_proj.weight"] = _normal(gen, (H, q_out), 1.5 / math.sqrt(q_out))
        w.update(stack_weights(gen, "encoder.", case["enc"]))
    return w, gen


def write_checkpoint(out_dir: str, case: dict, weights: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(make_config(case), f, indent=2, sort_keys=True)
        f.write("\n")
    dtype = case["dtype"]
    if case["shards"] == 1:
        ref.write_safetensors(os.path.join(out_dir, "model.safetensors"), weights, dtype)
        return
    # HF-style shards: contiguous runs of the sorted names, index maps every tensor to its file.
    names = sorted(weights)
    n = case["shards"]
    per = math.ceil(len(names) / n)
    weight_map, total = {}, 0
    for s in range(n):
        fname = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        part = {k: weights[k] for k in names[s * per:(s + 1) * per]}
        ref.write_safetensors(os.path.join(out_dir, fname), part, dtype)
        for k, t in part.items():
            weight_map[k] = fname
            total += t.numel() * (4 if dtype == "F32" else 2)
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
                  sort_keys=True)
        f.write("\n")


# --------------------------------------------------------------------------------------------------
# Expected outputs
# --------------------------------------------------------------------------------------------------

def f32_list(t: torch.Tensor):
    """Shortest decimal that round-trips each float32 (JSON floats parse back to the same value)."""
    arr = t.detach().to(torch.float32).numpy()
    if not np.all(np.isfinite(arr)):
        raise ValueError("non-finite value in expected output")
    if arr.ndim == 1:
        return [float(str(np.float32(v))) for v in arr]
    return [f32_list(torch.from_numpy(r)) for r in arr]


def rand_ids(gen, n: int, vocab: int, bos: bool):
    # Ordinary tokens avoid the special ids 0 (pad), 1 (bos), 2 (eos).
    ids = torch.randint(3, vocab, (n - 1 if bos else n,), generator=gen).tolist()
    return [1] + ids if bos else ids


def greedy_run(model, gen, spec: dict, vocab: int, label: str):
    """Draw prompts until the greedy run is well-conditioned (clear argmax at every step, tokens
    not constant, and an eos stop when the spec asks for one)."""
    for attempt in range(200):
        prompt = rand_ids(gen, spec["prompt_len"], vocab, bos=True)
        ctx = [rand_ids(gen, n, vocab, bos=False) for n in spec["context_lens"]]
        tokens, steps = model.generate(prompt, ctx, spec["max_new"], return_step_logits=True)
        top2 = torch.topk(steps, 2, dim=-1).values
        margin = float((top2[:, 0] - top2[:, 1]).min())
        stopped = len(tokens) < spec["max_new"]
        ok = margin >= MIN_MARGIN and len(set(tokens)) >= min(3, len(tokens))
        ok = ok and (stopped if spec.get("want_eos") else not stopped)
        if ok:
            print(f"    {label}: prompt {len(prompt)}, ctx {spec['context_lens']}, "
                  f"{len(tokens)} tokens {tokens} (attempt {attempt + 1}, min margin {margin:.3f})")
            return {"input_ids": prompt, "context_ids": ctx, "max_new_tokens": spec["max_new"],
                    "tokens": tokens, "step_logits": f32_list(steps),
                    "min_margin": float(f"{margin:.4g}")}
    raise RuntimeError(f"{label}: no well-conditioned greedy prompt found")


def expected_outputs(model, case: dict, gen) -> dict:
    vocab = case["dec"]["vocab_size"]
    ids = rand_ids(gen, case["input_len"], vocab, bos=True)
    ctx = [rand_ids(gen, n, vocab, bos=False) for n in case["context_lens"]]
    enc = model.encode(ctx)
    logits = model.forward(ids, enc)
    nll = model.nll(ids, enc, logits)
    out = {"input_ids": ids, "context_ids": ctx, "logits": f32_list(logits),
           "nll": float(str(np.float32(nll)))}
    if enc is not None:
        out["encoder_states"] = f32_list(enc)
        # The context must matter, or a broken cross-attention would pass unnoticed.
        no_ctx = model.forward(ids, None)
        print(f"    cross-attention effect on logits: max |diff| "
              f"{float((logits - no_ctx).abs().max()):.3f}, logits std {float(logits.std()):.3f}")
    out["greedy"] = greedy_run(model, gen, case["greedy"], vocab, "greedy")
    extra = [greedy_run(model, gen, s, vocab, f"greedy_extra[{i}]")
             for i, s in enumerate(case["extra"])]
    if extra:
        out["greedy_extra"] = extra
    return out


def dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", help="case names to (re)generate")
    args = ap.parse_args()
    torch.set_num_threads(1)  # fixed summation order -> reproducible last bits

    for case in CASES:
        if args.only and case["name"] not in args.only:
            continue
        out_dir = os.path.join(args.out, case["name"])
        print(f"{case['name']}:")
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        weights, gen = make_weights(case)
        write_checkpoint(out_dir, case, weights)
        model = ref.Model(out_dir)  # expected values come from the weights as stored
        expected = expected_outputs(model, case, gen)
        with open(os.path.join(out_dir, "expected.json"), "w") as f:
            json.dump(expected, f, sort_keys=True, separators=(",", ":"))
            f.write("\n")
        print(f"    nll {expected['nll']:.4f}, {dir_size(out_dir) / 1024:.0f} KiB")
    total = sum(dir_size(os.path.join(args.out, c["name"])) for c in CASES
                if os.path.isdir(os.path.join(args.out, c["name"])))
    print(f"total {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
