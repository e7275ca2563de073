"""A trainable CEPE model (LlamaForCausalContextLM) as a torch.nn.Module.

Its state_dict names are exactly the HuggingFace checkpoint's tensor names (see
../shared/reference/cepe-architecture.md), so export is a plain dump of the state_dict, and its
forward computes what tests/reference/cepe_reference.py computes (checked by
training/test_model.py on the same weights). Differences from that reference are all about
training: batches with padding, autograd, bf16 autocast, torch's fused attention when present,
and optional dropout (off in eval mode, so exported weights behave the same).

Batches: decoder ids [B, T] are right-padded (causal attention keeps padding out of the real
positions); context chunks are [B, C, L] with a bool mask, chunk-padding and whole padding chunks
allowed. Only real chunks are run through the encoder.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import common  # noqa: F401  (puts tests/reference on sys.path)
import cepe_reference as ref

_HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def stack_dict(vocab, hidden, layers, heads, kv_heads, ffn, max_pos, eps=1e-5, theta=10000.0):
    """A LLaMA config dict (HF key names) for one stack."""
    return dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=ffn,
                max_position_embeddings=max_pos, rms_norm_eps=eps, rope_theta=theta,
                rope_scaling=None, hidden_act="silu")


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        # LlamaRMSNorm: statistics in fp32 whatever autocast does, then back to the input dtype.
        dt = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dt)


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def attend(q, k, v, mask: Optional[torch.Tensor], causal: bool, dropout: float = 0.0):
    """q [B, H, T, d], k/v [B, Hkv, S, d]; mask bool, True = may attend, broadcastable to
    [B, H, T, S]. Query head h reads kv head h // (H / Hkv), as the official repeat_kv."""
    H, Hkv = q.shape[1], k.shape[1]
    if Hkv != H:
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    if _HAS_SDPA:
        if causal and mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            if causal:
                T, S = q.shape[2], k.shape[2]
                tri = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
                mask = tri if mask is None else mask & tri
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    else:  # torch 1.13: plain softmax attention in fp32
        d = q.shape[-1]
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(d)
        if causal:
            T, S = scores.shape[-2:]
            tri = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
            scores = scores.masked_fill(~tri, float("-inf"))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if dropout:
            probs = F.dropout(probs, dropout)
        out = torch.matmul(probs, v.float()).to(q.dtype)
    B, _, T, d = out.shape
    return out.transpose(1, 2).reshape(B, T, H * d)


class SelfAttention(nn.Module):
    def __init__(self, c: ref.StackConfig):
        super().__init__()
        hd = c.head_dim
        self.h, self.hkv, self.hd = c.num_attention_heads, c.num_key_value_heads, hd
        self.q_proj = nn.Linear(c.hidden_size, self.h * hd, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.hkv * hd, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.hkv * hd, bias=False)
        self.o_proj = nn.Linear(self.h * hd, c.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, causal, attn_dropout):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.hkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.hkv, self.hd).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        return self.o_proj(attend(q, k, v, mask, causal, attn_dropout))


class CrossAttention(nn.Module):
    """LlamaCrossAttention: q from the (own-normed) decoder stream, k/v from the encoder states as
    they are; no RoPE, no causal mask."""

    def __init__(self, c: ref.StackConfig, enc_hidden: int):
        super().__init__()
        hd = c.head_dim
        self.h, self.hkv, self.hd = c.num_attention_heads, c.num_key_value_heads, hd
        self.layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.q_proj = nn.Linear(c.hidden_size, self.h * hd, bias=False)
        self.k_proj = nn.Linear(enc_hidden, self.hkv * hd, bias=False)
        self.v_proj = nn.Linear(enc_hidden, self.hkv * hd, bias=False)
        self.o_proj = nn.Linear(self.h * hd, c.hidden_size, bias=False)

    def forward(self, x, enc, enc_mask, attn_dropout):
        B, T, _ = x.shape
        S = enc.shape[1]
        h = self.layernorm(x)
        q = self.q_proj(h).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(enc).view(B, S, self.hkv, self.hd).transpose(1, 2)
        v = self.v_proj(enc).view(B, S, self.hkv, self.hd).transpose(1, 2)
        return self.o_proj(attend(q, k, v, enc_mask, False, attn_dropout))


class MLP(nn.Module):
    def __init__(self, c: ref.StackConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c: ref.StackConfig, enc_hidden: Optional[int]):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = SelfAttention(c)
        if enc_hidden is not None:
            self.cross_attn = CrossAttention(c, enc_hidden)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)
        self.causal = c.causal

    def forward(self, x, cos, sin, mask, enc, enc_mask, dropout):
        drop = (lambda t: F.dropout(t, dropout, True)) if dropout else (lambda t: t)
        x = x + drop(self.self_attn(self.input_layernorm(x), cos, sin, mask, self.causal, dropout))
        if enc is not None and hasattr(self, "cross_attn"):
            x = x + drop(self.cross_attn(x, enc, enc_mask, dropout))
        return x + drop(self.mlp(self.post_attention_layernorm(x)))


class Stack(nn.Module):
    """LlamaModel: embed_tokens, layers, norm (the decoder as `model.`, the encoder as `encoder.`)."""

    def __init__(self, c: ref.StackConfig, cross_layers=(), enc_hidden=None):
        super().__init__()
        self.cfg = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(
            [Layer(c, enc_hidden if i in cross_layers else None) for i in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        # The official rotary table (no scaling is trained here), computed by the reference's own
        # code so that both agree to the last bit; not a parameter, not saved.
        cos, sin = ref.Rope(c).table(c.max_position_embeddings)
        self.register_buffer("rope_cos", cos.clone(), persistent=False)
        self.register_buffer("rope_sin", sin.clone(), persistent=False)

    def forward(self, ids, mask=None, enc=None, enc_mask=None, dropout=0.0):
        T = ids.shape[1]
        if T > self.rope_cos.shape[0]:
            # Past max_position_embeddings the official module rebuilds its table for the longer
            # length (same formula, no scaling here), and so does the reference: follow it.
            cos, sin = ref.Rope(self.cfg).table(T)
            self.rope_cos, self.rope_sin = cos.to(ids.device), sin.to(ids.device)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, enc, enc_mask, dropout)
        return self.norm(x)


class CepeLM(nn.Module):
    """Decoder (`model.*`, `lm_head`) plus, for CEPE, the encoder (`encoder.*`) and cross-attention
    in the last `num_cross_attn_layers` decoder layers."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = json.loads(json.dumps(config))  # private copy
        self.dec = ref.StackConfig.from_dict(config, causal=True)
        enc_cfg = config.get("encoder_config") if config.get("do_cross_attention") else None
        self.is_cepe = enc_cfg is not None
        if self.is_cepe:
            self.enc = ref.StackConfig.from_dict(enc_cfg, causal=False)
            n = config["num_cross_attn_layers"]
            L = self.dec.num_hidden_layers
            self.cross_layers = set(range(L - n, L))
            self.model = Stack(self.dec, self.cross_layers, self.enc.hidden_size)
            self.encoder = Stack(self.enc)
        else:
            self.model = Stack(self.dec)
        self.lm_head = nn.Linear(self.dec.hidden_size, self.dec.vocab_size, bias=False)
        if config.get("tie_word_embeddings"):
            raise ValueError("tied embeddings are not used by this recipe")

    # ---- initialisation ---------------------------------------------------------------------

    def init_weights(self, seed: int, std: float = 0.02) -> None:
        """LLaMA-style N(0, 0.02) init, norms at one; output projections of every residual branch
        scaled by 1/sqrt(2 * layers) (GPT-2), which keeps deep-ish stacks stable from the start."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    layers = self.enc.num_hidden_layers if name.startswith("encoder.") \
                        else self.dec.num_hidden_layers
                    s = std / math.sqrt(2 * layers) if name.endswith(("o_proj.weight",
                                                                      "down_proj.weight")) else std
                    p.copy_(torch.randn(p.shape, generator=g) * s)

    def init_cross_attention(self, seed: int, std: float = 0.02) -> None:
        """Cross-attention starts as a no-op on the frozen decoder, with useful structure behind
        the zero: o_proj is zero (the first outputs are exactly the pretrained decoder's), and
        q/k/v are copies of the layer's self-attention projections, as CEPE's init_mode 'copy'
        does (k/v only where the encoder is as wide as the decoder; random otherwise). Copied
        projections make the first gradients of o_proj informative at once; a random start
        learned far more slowly in CPU trials (see README.md)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for i in sorted(self.cross_layers):
                layer = self.model.layers[i]
                ca = layer.cross_attn
                ca.layernorm.weight.copy_(layer.input_layernorm.weight)
                ca.q_proj.weight.copy_(layer.self_attn.q_proj.weight)
                for name in ("k_proj", "v_proj"):
                    dst, src = getattr(ca, name).weight, getattr(layer.self_attn, name).weight
                    dst.copy_(src if dst.shape == src.shape else
                              torch.randn(dst.shape, generator=g) * std)
                ca.o_proj.weight.zero_()

    def init_encoder_from_decoder(self) -> None:
        """The encoder starts as the pretrained decoder's embeddings, first layers and final
        norm, run bidirectionally. CEPE starts from a pretrained (MLM) encoder; the pretrained
        decoder is the only pretrained stack this recipe has, and its token representations are
        what the cross-attention has to match against."""
        e, d = self.enc, self.dec
        same = (e.hidden_size, e.num_attention_heads, e.num_key_value_heads, e.intermediate_size,
                e.vocab_size) == (d.hidden_size, d.num_attention_heads, d.num_key_value_heads,
                                  d.intermediate_size, d.vocab_size)
        if not same or e.num_hidden_layers > d.num_hidden_layers:
            raise ValueError("copying the decoder into the encoder needs the same widths, heads "
                             "and vocabulary, and no more encoder than decoder layers")
        src = self.model.state_dict()
        with torch.no_grad():
            for name, p in self.encoder.named_parameters():
                p.copy_(src[name])

    def decoder_param_names(self):
        """The pretrained decoder's parameters (frozen in the CEPE stages)."""
        return [n for n, _ in self.named_parameters()
                if not n.startswith("encoder.") and ".cross_attn." not in n]

    # ---- forward ----------------------------------------------------------------------------

    def encode(self, chunks, chunk_mask, dropout=0.0):
        """chunks [N, L] long, chunk_mask [N, L] bool (every row has a real token) ->
        states [N, L, H_enc] after the encoder's final norm."""
        key_mask = chunk_mask[:, None, None, :]
        return self.encoder(chunks, key_mask, dropout=dropout)

    def context_states(self, chunks, chunk_mask, dropout=0.0):
        """chunks [B, C, L], chunk_mask [B, C, L] -> (enc [B, C*L, H_enc], enc_mask [B, 1, 1, C*L]).
        Padding chunks (no real token) are not encoded."""
        B, C, L = chunks.shape
        real = chunk_mask.any(-1)
        states = self.encode(chunks[real], chunk_mask[real], dropout)
        full = states.new_zeros(B, C, L, states.shape[-1])
        full[real] = states
        return full.view(B, C * L, -1), chunk_mask.reshape(B, 1, 1, C * L)

    def forward(self, ids, chunks=None, chunk_mask=None, dropout=0.0):
        """Logits [B, T, V]. With chunks (and a CEPE model) the decoder cross-attends to them;
        every example must then have at least one real chunk token."""
        enc = enc_mask = None
        if chunks is not None and self.is_cepe:
            enc, enc_mask = self.context_states(chunks, chunk_mask, dropout)
        h = self.model(ids, None, enc, enc_mask, dropout)
        return self.lm_head(h)

    # ---- weights ----------------------------------------------------------------------------

    def hf_state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items()}

    @staticmethod
    def from_pretrained(model_dir: str, config_override: Optional[dict] = None) -> "CepeLM":
        """Loads an HF-layout directory (as export.py writes it), widening weights to fp32. With
        config_override (a CEPE config whose decoder is this dir's model) the decoder weights
        are loaded into a bigger model and the rest is left to the caller to initialise."""
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
        weights = ref.load_weights(model_dir)
        model = CepeLM(config_override or config)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected:
            raise ValueError(f"{model_dir}: unexpected tensors {unexpected[:5]}")
        if config_override is None and missing:
            raise ValueError(f"{model_dir}: missing tensors {missing[:5]}")
        if config_override is not None:
            dec = set(model.decoder_param_names())
            if dec & set(missing):
                raise ValueError(f"{model_dir}: decoder tensors missing: {sorted(dec & set(missing))[:5]}")
        return model
