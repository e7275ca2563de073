"""How far two float32 evaluations of the same model may differ: the bound the fixture checks use.

Two runs of one float32 formula differ only by rounding, and the rounding depends on the order of the
sums (BLAS kernel, SIMD width, thread split): Intel and AMD, AVX2 and AVX-512 machines all differ. The
bound is derived from the arithmetic, not from one machine's result:

* One dot product of length n in float32 (unit roundoff u = 2^-24) has error at most
  lambda * sqrt(n) * u * sum_i |x_i y_i| with probability >= 1 - 2 exp(-lambda^2 / 2) for any summation
  order (Higham & Mary 2019, "A new approach to probabilistic rounding error analysis", Thm. 2.4).
  lambda = 6 makes a single failure a 3e-8 event.
* Errors made anywhere in the network reach a logit through the residual stream, so every
  accumulation on the way counts: n is the total length of the sums along one logit's path (the
  chain below), which over-counts rather than under-counts.
* sum_i |x_i y_i| of the final products is stood in for by the largest |logit| (at least 1).
* Two independent evaluations: twice one evaluation's error.

For the committed fixtures (3 layers of width <= 64, logits ~10) this gives ~4e-4; measured
differences between machines are ~1.5e-5, and any real defect (a wrong RoPE angle, mask, head map
or norm) moves logits by > 1e-2.
"""

from __future__ import annotations

import math

UNIT_ROUNDOFF_F32 = 2.0 ** -24
LAMBDA = 6.0


def _stack_chain(width: int, ffn: int, heads: int, keys: int) -> int:
    """Summation lengths in one transformer block: RMSNorm, q/k/v, scores, softmax + weighted sum, o, MLP."""
    head_dim = width // heads
    return width + 3 * width + head_dim + 2 * keys + width + 2 * width + ffn


def accumulation_chain(config: dict, tokens: int, longest_chunk: int, context_tokens: int) -> int:
    """Total length of the float32 sums on one logit's path through `config` (HF config.json dict)."""
    d, L = config["hidden_size"], config["num_hidden_layers"]
    n = L * _stack_chain(d, config["intermediate_size"], config["num_attention_heads"], tokens)
    enc = config.get("encoder_config")
    if config.get("do_cross_attention") and enc and context_tokens > 0:
        e = enc["hidden_size"]
        n += enc["num_hidden_layers"] * _stack_chain(e, enc["intermediate_size"],
                                                     enc["num_attention_heads"], longest_chunk)
        cross = config.get("num_cross_attn_layers", 0)
        head_dim = d // config["num_attention_heads"]
        n += cross * (d + d + 2 * e + head_dim + 2 * context_tokens + d)
    return n + d + d  # final norm and the LM head


def float32_logit_bound(config: dict, tokens: int, chunks: list, magnitude: float) -> float:
    """Largest |logit difference| two float32 evaluations may show (see the module docstring)."""
    longest = max((len(c) for c in chunks), default=0)
    total = sum(len(c) for c in chunks)
    n = accumulation_chain(config, tokens, longest, total)
    return 2.0 * LAMBDA * math.sqrt(n) * UNIT_ROUNDOFF_F32 * max(1.0, magnitude)


def float32_encoder_bound(config: dict, chunks: list, magnitude: float) -> float:
    """Largest |encoder state difference| two float32 evaluations may show."""
    enc = config["encoder_config"]
    longest = max((len(c) for c in chunks), default=0)
    n = enc["num_hidden_layers"] * _stack_chain(enc["hidden_size"], enc["intermediate_size"],
                                                enc["num_attention_heads"], longest) + enc["hidden_size"]
    return 2.0 * LAMBDA * math.sqrt(n) * UNIT_ROUNDOFF_F32 * max(1.0, magnitude)


def nll_bound(logit_bound: float) -> float:
    """A mean token NLL moves by at most 2x the largest logit change (log-softmax is 2-Lipschitz in max-norm)."""
    return 2.0 * logit_bound
