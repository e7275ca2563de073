"""PyTorch baseline timings of CEPE inference, using the fp32 reference (tests/reference).

    /usr/bin/python3 bench/torch_bench.py --model /tmp/cepe-bench --threads 2 \
        [--chunks 32 --chunk-len 256 --prefill 512 --decode 64]

    --dtype bf16 --sdpa: weights and activations in bf16 with torch's scaled_dot_product_attention
    (flash / memory-efficient kernels on a GPU; torch >= 2.0): the official code's approach,
    the baseline the CUDA engine is compared with at 7B shapes.

Phases (each after a small warm-up of the same code path, under torch.no_grad):
  encode           all chunks in one padded batch through the encoder;
  prefill          --prefill decoder tokens in one forward, cross-attending to every chunk token;
  decode_reproject --decode greedy steps with the self-attention KV cache, cross-attention K/V
                   re-projected from the encoder states at every step (as the official code does);
  decode_cached    the same steps with the projected cross K/V kept in the state;
  decode_short     --decode greedy steps after a one-token prompt (BOS).
A plain LLaMA (no encoder) skips the encode phase (its figure is then meaningless).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "reference"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cepe_reference as ref  # noqa: E402


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def decode_steps(model, prompt, enc, steps, cache_cross_kv):
    """Prefill (untimed) then `steps` timed single-token forwards; returns seconds."""
    state = model.new_state()
    logits = model.forward(prompt, enc, state, cache_cross_kv)[-1]
    t0 = time.perf_counter()
    for _ in range(steps):
        tok = int(torch.argmax(logits))
        logits = model.forward([tok], enc, state, cache_cross_kv)[-1]
    return time.perf_counter() - t0


def use_bf16_and_sdpa(dtype: torch.dtype, sdpa: bool) -> None:
    """Adapts the fp32 reference for the baseline without touching the reference itself: RoPE
    tables follow the activations' dtype, and attention can go through SDPA."""
    plain_rope = ref.apply_rope

    def apply_rope(x, cos, sin):
        return plain_rope(x, cos.to(x.dtype), sin.to(x.dtype))
    ref.apply_rope = apply_rope
    if not sdpa:
        return
    if not hasattr(F, "scaled_dot_product_attention"):
        sys.exit(f"error: --sdpa needs torch >= 2.0 (this is {torch.__version__})")

    def attention(q, k, v, mask):
        B, H, T, d = q.shape
        if k.shape[1] != H:  # GQA: SDPA wants one kv head per query head
            k = k.repeat_interleave(H // k.shape[1], dim=1)
            v = v.repeat_interleave(H // v.shape[1], dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask: True = attend
        return out.transpose(1, 2).reshape(B, T, H * d)
    ref.attention = attention


def rate(tokens, seconds):
    return {"tokens": tokens, "seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description="PyTorch CEPE baseline")
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--chunk-len", type=int, default=256)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (TF32 off)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="weights and activations (the reference computes in fp32)")
    ap.add_argument("--sdpa", action="store_true",
                    help="attention through torch's scaled_dot_product_attention")
    a = ap.parse_args()
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    if dtype != torch.float32 or a.sdpa:
        use_bf16_and_sdpa(dtype, a.sdpa)

    torch.set_num_threads(a.threads)
    cuda = a.device == "cuda"
    if cuda:
        # Every tensor the reference creates lands on the GPU; weights are moved after loading.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_default_device("cuda")
    load_before = os.getloadavg()[0]  # other work on the machine skews the timings
    t0 = time.perf_counter()
    model = ref.Model(a.model)
    if cuda or dtype != torch.float32:
        model.w = {k: v.to("cuda" if cuda else "cpu", dtype) for k, v in model.w.items()}
    if cuda:
        torch.cuda.synchronize()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    load_s = time.perf_counter() - t0
    vocab = model.dec.vocab_size
    gen = torch.Generator().manual_seed(a.seed)
    chunks = torch.randint(3, vocab, (a.chunks, a.chunk_len), generator=gen, device="cpu").tolist()
    prompt = [1] + torch.randint(3, vocab, (a.prefill - 1,), generator=gen, device="cpu").tolist()

    with torch.no_grad():
        # Warm-up: same code paths, small sizes (allocator, thread pool, BLAS kernels).
        enc_small = model.encode(chunks[:2])
        model.forward(prompt[:16], enc_small)
        decode_steps(model, prompt[:16], enc_small, 2, False)
        decode_steps(model, prompt[:16], enc_small, 2, True)

        sync()
        t0 = time.perf_counter()
        enc = model.encode(chunks)
        sync()
        encode_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        model.forward(prompt, enc, model.new_state())
        sync()
        prefill_s = time.perf_counter() - t0

        dec_short_s = decode_steps(model, [1], enc, a.decode, cache_cross_kv=True)

        dec_reproj_s = decode_steps(model, prompt, enc, a.decode, cache_cross_kv=False)
        dec_cached_s = decode_steps(model, prompt, enc, a.decode, cache_cross_kv=True)

    n_params = sum(t.numel() for k, t in model.w.items()
                   if not (k == "lm_head.weight" and model.config.get("tie_word_embeddings")))
    print(json.dumps({
        "impl": f"pytorch-reference-{a.dtype}" + ("-sdpa" if a.sdpa else "") + ("-cuda" if cuda else ""),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 1048576.0, 1) if cuda else None,
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "threads": a.threads,
        "model": a.model,
        "params": n_params,
        "load_seconds": round(load_s, 3),
        "chunks": a.chunks, "chunk_len": a.chunk_len, "prefill_len": a.prefill, "decode_steps": a.decode,
        "encode": rate(a.chunks * a.chunk_len, encode_s),
        "prefill": rate(a.prefill, prefill_s),
        "decode_short": rate(a.decode, dec_short_s),
        "decode_reproject": rate(a.decode, dec_reproj_s),
        "decode_cached_cross_kv": rate(a.decode, dec_cached_s),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }, indent=2))


if __name__ == "__main__":
    main()
