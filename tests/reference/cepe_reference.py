"""Pure-PyTorch fp32 reference of CEPE (Yen, Gao & Chen 2024, "Long-Context Language Modeling with
Parallel Context Encoding"), written from the authors' `modeling_llama_flash.py`
(princeton-nlp/CEPE, class `LlamaForCausalContextLM`) to produce golden outputs for the C++ engine.

What it computes, all in fp32 whatever the stored dtype:
  * `Model.encode(chunks)`     -- encoder states of context chunks of unequal length;
  * `Model.forward(ids, enc)`  -- decoder logits for every position (or one incremental step when a
                                  `DecoderState` with a KV cache is passed);
  * `Model.generate(...)`      -- greedy decoding along the official incremental path.

A plain LLaMA checkpoint (no `encoder_config`, or `do_cross_attention` false) works too.

Statefulness: the official rotary embeddings are modules whose cos/sin cache only ever grows, and with
dynamic NTK scaling the cache contents depend on the longest sequence seen so far. This reference
models "a freshly loaded model per sequence": every `encode` call and every `DecoderState` starts a
new rotary cache of length max_position_embeddings (see `Rope`).

Needs only torch and numpy (the `safetensors` package is not assumed: files are read by hand).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------
# safetensors I/O: 8-byte little-endian header length, JSON header
# {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then raw data
# (offsets are relative to the start of the data section).
# --------------------------------------------------------------------------------------------------

_ST_NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}  # BF16 handled as raw bits
_ST_SIZE = {"F32": 4, "F16": 2, "BF16": 2}


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    # bf16 is the top half of an IEEE float32, so widening is exact.
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bf16 (round to nearest, ties to even, as torch does) and return the bits."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """All tensors of one .safetensors file, widened to float32."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data_start = 8 + header_len
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        dtype = info["dtype"]
        if dtype not in _ST_NUMPY:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        begin, end = info["data_offsets"]
        count = int(np.prod(info["shape"])) if info["shape"] else 1
        if end - begin != count * _ST_SIZE[dtype]:
            raise ValueError(f"{path}: tensor {name} size does not match its shape")
        raw = np.fromfile(path, dtype=_ST_NUMPY[dtype], count=count, offset=data_start + begin)
        if dtype == "BF16":
            arr = _bf16_bits_to_f32(raw)
        else:
            arr = raw.astype(np.float32)
        out[name] = torch.from_numpy(arr.reshape(info["shape"]))
    return out


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor], dtype: str = "F32",
                      metadata: Optional[Dict[str, str]] = None) -> None:
    """Write float tensors converted to `dtype` (F32/F16/BF16). Deterministic: names sorted, header
    padded with spaces to a multiple of 8 bytes (as the safetensors library does) so that every
    tensor's data stays aligned. Tensors are converted one at a time (large checkpoints)."""
    if dtype not in _ST_SIZE:
        raise ValueError(f"unsupported dtype {dtype}")
    header, offset = {}, 0
    for name in sorted(tensors):
        shape = list(tensors[name].shape)
        size = int(np.prod(shape)) * _ST_SIZE[dtype] if shape else _ST_SIZE[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)))
        f.write(hdr)
        for name in sorted(tensors):
            arr = tensors[name].detach().to(torch.float32).contiguous().numpy()
            if dtype == "F32":
                f.write(arr.astype("<f4").tobytes())
            elif dtype == "F16":
                f.write(arr.astype("<f2").tobytes())
            else:
                f.write(f32_to_bf16_bits(arr).astype("<u2").tobytes())


def load_weights(model_dir: str) -> Dict[str, torch.Tensor]:
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        weights = {}
        for shard in sorted(set(weight_map.values())):
            for name, t in read_safetensors(os.path.join(model_dir, shard)).items():
                if weight_map.get(name) != shard:
                    raise ValueError(f"{shard}: tensor {name} is not mapped to this shard")
                weights[name] = t
        missing = set(weight_map) - set(weights)
        if missing:
            raise ValueError(f"index names tensors absent from the shards: {sorted(missing)[:5]}")
        return weights
    return read_safetensors(os.path.join(model_dir, "model.safetensors"))


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

@dataclass
class StackConfig:
    """One LLaMA stack (the decoder, or CEPE's encoder), with LlamaConfig's defaults."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope_theta: float
    rope_scaling: Optional[dict]
    causal: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @staticmethod
    def from_dict(d: dict, causal: bool) -> "StackConfig":
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError("only hidden_act silu is supported")
        # pretraining_tp > 1 only splits the matmuls in the official code (same result up to
        # summation order), so it is accepted and ignored.
        heads = d.get("num_attention_heads", 32)
        cfg = StackConfig(
            vocab_size=d.get("vocab_size", 32000),
            hidden_size=d.get("hidden_size", 4096),
            intermediate_size=d.get("intermediate_size", 11008),
            num_hidden_layers=d.get("num_hidden_layers", 32),
            num_attention_heads=heads,
            # LlamaConfig: num_key_value_heads None (or absent) means multi-head attention.
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            rope_theta=float(d.get("rope_theta", 10000.0)),
            rope_scaling=d.get("rope_scaling"),
            causal=causal,
        )
        if cfg.head_dim * heads != cfg.hidden_size or heads % cfg.num_key_value_heads:
            raise ValueError("hidden_size must be heads * head_dim and heads a multiple of kv heads")
        if cfg.rope_scaling is not None and cfg.rope_scaling.get("type") not in ("linear", "dynamic"):
            raise ValueError(f"unknown rope_scaling {cfg.rope_scaling}")
        return cfg


# --------------------------------------------------------------------------------------------------
# Rotary embeddings
# --------------------------------------------------------------------------------------------------

class Rope:
    """State of one official rotary-embedding module (`LlamaRotaryEmbedding`,
    `LlamaLinearScalingRotaryEmbedding`, `LlamaDynamicNTKScalingRotaryEmbedding`).

    Every decoder layer owns such a module in the official code, but all of them see the same
    seq_len sequence, so one shared instance per stack is equivalent.

    The rule followed (official `forward(x, seq_len)` / `_set_cos_sin_cache`):
      * at construction the cos/sin table covers max_position_embeddings positions, built from the
        ORIGINAL base (for dynamic scaling too: seq_len == max_pos is not "> max_pos");
      * attention asks for `seq_len` = kv length (cached + new tokens); when that exceeds the cached
        length the table is rebuilt for exactly seq_len positions:
          - none:    inv_freq = 1 / base ** (arange(0, d, 2) / d),  angle = t * inv_freq
          - linear:  same inv_freq, angle = (t / factor) * inv_freq
          - dynamic: if seq_len > max_pos,
                       base' = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (d / (d - 2))
                     (base is always the ORIGINAL rope_theta), inv_freq recomputed from base'.
      * the table is never shrunk; q and the NEW keys are rotated with the current table at their
        absolute positions, keys already in the KV cache keep the rotation they got when computed.
    Numerics as in the official code: inv_freq and angles in float32 (python-float base raised to
    a float32 tensor), cos/sin of the float32 angles.
    """

    def __init__(self, cfg: StackConfig):
        self.dim = cfg.head_dim
        self.base = cfg.rope_theta
        self.max_pos = cfg.max_position_embeddings
        scaling = cfg.rope_scaling or {}
        self.kind = scaling.get("type", "none")
        self.factor = float(scaling.get("factor", 1.0))
        self.inv_freq = self._inv_freq(self.base)
        self._build(self.max_pos)

    def _inv_freq(self, base: float) -> torch.Tensor:
        return 1.0 / (base ** (torch.arange(0, self.dim, 2).float() / self.dim))

    def _build(self, seq_len: int) -> None:
        self.cached_len = seq_len
        if self.kind == "dynamic" and seq_len > self.max_pos:
            base = self.base * ((self.factor * seq_len / self.max_pos) - (self.factor - 1)) ** (
                self.dim / (self.dim - 2))
            self.inv_freq = self._inv_freq(base)
        t = torch.arange(seq_len, dtype=torch.float32)
        if self.kind == "linear":
            t = t / self.factor
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # rotate_half layout: pair (i, i + d/2)
        self.cos, self.sin = emb.cos(), emb.sin()

    def table(self, seq_len: int):
        """cos, sin of shape [>= seq_len, head_dim]; rebuilds as the official forward does."""
        if seq_len > self.cached_len:
            self._build(seq_len)
        return self.cos, self.sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., T, d]; cos/sin [T, d] already indexed by the positions of the T tokens."""
    return x * cos + _rotate_half(x) * sin


# --------------------------------------------------------------------------------------------------
# Building blocks (official LlamaRMSNorm, LlamaMLP, attention with repeat_kv GQA)
# --------------------------------------------------------------------------------------------------

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # LlamaRMSNorm: normalise in fp32, then multiply by the weight (no bias, no mean subtraction).
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def mlp(x: torch.Tensor, w: dict, prefix: str) -> torch.Tensor:
    # LlamaMLP: down(silu(gate(x)) * up(x)).
    return F.linear(F.silu(F.linear(x, w[prefix + "gate_proj.weight"])) *
                    F.linear(x, w[prefix + "up_proj.weight"]), w[prefix + "down_proj.weight"])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Softmax attention with grouped-query heads.

    q [B, H, T, d]; k, v [B, Hkv, S, d]; mask: bool, True = may attend, broadcastable to
    [B, 1, T, S] (or None). Query head h reads kv head h // (H / Hkv), as the official `repeat_kv`
    (kv head i serves query heads i*g .. i*g+g-1). Scores are scaled by 1/sqrt(d) after the matmul,
    softmax in fp32. Returns [B, T, H * d].
    """
    B, H, T, d = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    g = H // Hkv
    # Group the g query heads of each kv head along the row axis so no kv copy is materialised.
    qg = q.reshape(B, Hkv, g * T, d)
    scores = torch.matmul(qg, k.transpose(-1, -2)).div_(math.sqrt(d))  # in place: big for long S
    scores = scores.view(B, Hkv, g, T, S)
    if mask is not None:
        scores.masked_fill_(~mask.unsqueeze(2), float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(B, Hkv, g * T, S)
    out = torch.matmul(probs, v).view(B, H, T, d)
    return out.transpose(1, 2).reshape(B, T, H * d)


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, T, n * d] -> [B, n, T, d], contiguous (torch's CPU bmm on the strided view is about
    twice as slow for long K/V)."""
    B, T, _ = x.shape
    return x.view(B, T, n, -1).transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------------
# Decoder state (self-attention KV cache + rotary cache + optional cached cross K/V)
# --------------------------------------------------------------------------------------------------

class DecoderState:
    """What a fresh official model carries between `forward` calls of one sequence."""

    def __init__(self, cfg: StackConfig):
        self.rope = Rope(cfg)
        self.k: List[Optional[torch.Tensor]] = [None] * cfg.num_hidden_layers  # [1, Hkv, S, d]
        self.v: List[Optional[torch.Tensor]] = [None] * cfg.num_hidden_layers
        self.cross_kv: Dict[int, tuple] = {}  # only used when cache_cross_kv=True
        self.length = 0


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------

class Model:
    """LlamaForCausalContextLM (or plain LlamaForCausalLM) loaded from a HuggingFace-style dir."""

    def __init__(self, model_dir: str):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.config = json.load(f)
        c = self.config
        # LlamaForCausalContextLM forces is_decoder=True on the decoder.
        self.dec = StackConfig.from_dict(c, causal=True)
        self.w = load_weights(model_dir)
        eos = c.get("eos_token_id", 2)
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

        enc_cfg = c.get("encoder_config")
        self.do_cross = bool(c.get("do_cross_attention", False)) and enc_cfg is not None
        if self.do_cross:
            if c.get("encoder_is_model", False):
                raise ValueError("encoder_is_model=true (decoder reused as encoder) is not supported")
            if c.get("encode_mode", "context_only") != "context_only":
                raise ValueError("only encode_mode context_only is supported")
            if c.get("num_cross_attn_hidden_states", 1) != 1:
                raise ValueError("only num_cross_attn_hidden_states=1 is supported")
            # LlamaEncoder(LlamaConfig.from_dict(encoder_config)): its own rope_theta, rope_scaling,
            # max_position_embeddings, heads and eps. PretrainedConfig.is_decoder defaults to False,
            # so the encoder builds no causal mask (and its flash attention runs is_causal=False).
            self.enc = StackConfig.from_dict(enc_cfg, causal=bool(enc_cfg.get("is_decoder", False)))
            n_cross = c.get("num_cross_attn_layers", 0)
            # LlamaModel.__init__: layer i gets cross-attention iff i >= L - num_cross_attn_layers.
            self.cross_layers = {i for i in range(self.dec.num_hidden_layers)
                                 if i >= self.dec.num_hidden_layers - n_cross}
            # LlamaCrossAttention: k/v_proj read encoder_hidden_size (default: decoder hidden).
            self.enc_hidden = c.get("encoder_hidden_size", self.dec.hidden_size)
            if self.enc_hidden != self.enc.hidden_size:
                raise ValueError("encoder_hidden_size differs from encoder_config.hidden_size")
        else:
            self.enc = None
            self.cross_layers = set()

        if c.get("tie_word_embeddings", False):
            # The official model ties lm_head to the DECODER's embed_tokens (the encoder keeps its own).
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]
        self._check_shapes()

    # ---- weights ---------------------------------------------------------------------------------

    def _check_shapes(self) -> None:
        d, expect = self.dec, {}

        def stack(prefix, cfg, in_ffn=True):
            hd = cfg.head_dim
            expect[prefix + "embed_tokens.weight"] = (cfg.vocab_size, cfg.hidden_size)
            expect[prefix + "norm.weight"] = (cfg.hidden_size,)
            for i in range(cfg.num_hidden_layers):
                p = f"{prefix}layers.{i}."
                expect[p + "input_layernorm.weight"] = (cfg.hidden_size,)
                expect[p + "post_attention_layernorm.weight"] = (cfg.hidden_size,)
                expect[p + "self_attn.q_proj.weight"] = (cfg.num_attention_heads * hd, cfg.hidden_size)
                expect[p + "self_attn.k_proj.weight"] = (cfg.num_key_value_heads * hd, cfg.hidden_size)
                expect[p + "self_attn.v_proj.weight"] = (cfg.num_key_value_heads * hd, cfg.hidden_size)
                expect[p + "self_attn.o_proj.weight"] = (cfg.hidden_size, cfg.num_attention_heads * hd)
                expect[p + "mlp.gate_proj.weight"] = (cfg.intermediate_size, cfg.hidden_size)
                expect[p + "mlp.up_proj.weight"] = (cfg.intermediate_size, cfg.hidden_size)
                expect[p + "mlp.down_proj.weight"] = (cfg.hidden_size, cfg.intermediate_size)

        stack("model.", d)
        expect["lm_head.weight"] = (d.vocab_size, d.hidden_size)
        hd = d.head_dim
        for i in sorted(self.cross_layers):
            p = f"model.layers.{i}.cross_attn."
            expect[p + "layernorm.weight"] = (d.hidden_size,)
            expect[p + "q_proj.weight"] = (d.num_attention_heads * hd, d.hidden_size)
            expect[p + "k_proj.weight"] = (d.num_key_value_heads * hd, self.enc_hidden)
            expect[p + "v_proj.weight"] = (d.num_key_value_heads * hd, self.enc_hidden)
            expect[p + "o_proj.weight"] = (d.hidden_size, d.num_attention_heads * hd)
        if self.enc is not None:
            stack("encoder.", self.enc)
        for name, shape in expect.items():
            if name not in self.w:
                raise ValueError(f"missing tensor {name}")
            if tuple(self.w[name].shape) != shape:
                raise ValueError(f"{name}: shape {tuple(self.w[name].shape)}, expected {shape}")
        extra = set(self.w) - set(expect)
        if extra:
            raise ValueError(f"unexpected tensors: {sorted(extra)[:5]}")

    # ---- encoder ---------------------------------------------------------------------------------

    def encode(self, chunks: Sequence[Sequence[int]]) -> Optional[torch.Tensor]:
        """Encoder states of all chunks, concatenated in chunk order over their REAL tokens:
        [sum(len(chunk)), encoder_hidden]. None when there are no chunks (or no encoder).

        Official path (LlamaForCausalContextLM.forward -> LlamaEncoder = LlamaModel): the chunks are
        one padded batch [n_ctx, L]; positions are arange(L) for every row, padded keys are masked,
        attention is bidirectional, and `last_hidden_state` is AFTER the encoder's final RMSNorm
        (`encoder.norm`). The decoder then sees the [1, n_ctx * L] concatenation with padded
        positions masked, which equals attending to the real tokens only.

        Padding here is on the right (positions 0..len-1 per chunk). The official QA evaluation
        pads on the LEFT (padding_side="left") without shifting position ids, so a short chunk's
        tokens sit at positions L-len..L-1 there; RoPE depends only on position differences, so
        both give the same states up to rounding, EXCEPT under dynamic NTK scaling of the encoder,
        where the base depends on L: like the official batch, the rotary table here is built for
        L = the longest chunk (one fresh rotary cache per call).
        """
        if self.enc is None or not chunks:
            return None
        cfg, w = self.enc, self.w
        lens = [len(c) for c in chunks]
        if min(lens) < 1:
            raise ValueError("empty context chunk")
        B, L = len(chunks), max(lens)
        ids = torch.zeros(B, L, dtype=torch.long)
        valid = torch.zeros(B, L, dtype=torch.bool)
        for b, c in enumerate(chunks):
            ids[b, :len(c)] = torch.tensor(list(c), dtype=torch.long)
            valid[b, :len(c)] = True
        # Key mask [B, 1, 1, S]: padded keys are never attended (bidirectional otherwise).
        mask = valid[:, None, None, :]
        if cfg.causal:
            mask = mask & torch.ones(L, L, dtype=torch.bool).tril()
        rope = Rope(cfg)
        cos, sin = rope.table(L)
        cos, sin = cos[:L], sin[:L]

        x = F.embedding(ids, w["encoder.embed_tokens.weight"])
        for i in range(cfg.num_hidden_layers):
            x = self._block(x, f"encoder.layers.{i}.", cfg, cos, sin, mask)
        x = rms_norm(x, w["encoder.norm.weight"], cfg.rms_norm_eps)
        return x[valid]  # [sum(lens), H_enc], chunk-major order

    def _block(self, x, p, cfg, cos, sin, mask):
        """Encoder layer (no cache, no cross-attention)."""
        w = self.w
        h = rms_norm(x, w[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        q = apply_rope(_heads(F.linear(h, w[p + "self_attn.q_proj.weight"]), cfg.num_attention_heads), cos, sin)
        k = apply_rope(_heads(F.linear(h, w[p + "self_attn.k_proj.weight"]), cfg.num_key_value_heads), cos, sin)
        v = _heads(F.linear(h, w[p + "self_attn.v_proj.weight"]), cfg.num_key_value_heads)
        x = x + F.linear(attention(q, k, v, mask), w[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        return x + mlp(h, w, p + "mlp.")

    # ---- decoder ---------------------------------------------------------------------------------

    def new_state(self) -> DecoderState:
        return DecoderState(self.dec)

    def _cross_kv(self, i: int, enc: torch.Tensor):
        # LlamaCrossAttention: K/V are projections of the encoder's final (normed) states as they
        # are -- no extra norm, no RoPE, no scaling or gating.
        p, cfg = f"model.layers.{i}.cross_attn.", self.dec
        k = _heads(F.linear(enc[None], self.w[p + "k_proj.weight"]), cfg.num_key_value_heads)
        v = _heads(F.linear(enc[None], self.w[p + "v_proj.weight"]), cfg.num_key_value_heads)
        return k, v

    @torch.no_grad()
    def forward(self, input_ids: Sequence[int], enc: Optional[torch.Tensor] = None,
                state: Optional[DecoderState] = None, cache_cross_kv: bool = False) -> torch.Tensor:
        """Logits [T, vocab] for the T new tokens.

        Without `state` this is a full forward on a fresh model. With `state`, the tokens continue
        the sequence held in its KV cache (positions state.length ..), and the cache is extended.
        `enc` (from `encode`) is cross-attended in the cross-attention layers; with enc None or
        empty the cross-attention blocks are skipped entirely (the official decoder layer runs them
        only when encoder_hidden_states is not None).
        `cache_cross_kv` keeps the projected cross K/V in the state instead of re-projecting them
        from `enc` at each call as the official generation does (same result, less work).
        """
        cfg, w = self.dec, self.w
        state = state if state is not None else self.new_state()
        T = len(input_ids)
        past = state.length
        kv_len = past + T
        use_cross = self.do_cross and enc is not None and enc.shape[0] > 0

        cos, sin = state.rope.table(kv_len)
        cos, sin = cos[past:kv_len], sin[past:kv_len]
        # Causal mask over [cached keys | new keys]: token t (absolute past+t) sees keys <= past+t.
        mask = None
        if T > 1:
            mask = torch.ones(T, kv_len, dtype=torch.bool).tril(diagonal=past)[None, None]

        x = F.embedding(torch.tensor(list(input_ids), dtype=torch.long)[None],
                        w["model.embed_tokens.weight"])
        H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            # 1) x += SelfAttn(input_layernorm(x)), RoPE on q and the new k only.
            h = rms_norm(x, w[p + "input_layernorm.weight"], cfg.rms_norm_eps)
            q = apply_rope(_heads(F.linear(h, w[p + "self_attn.q_proj.weight"]), H), cos, sin)
            k = apply_rope(_heads(F.linear(h, w[p + "self_attn.k_proj.weight"]), Hkv), cos, sin)
            v = _heads(F.linear(h, w[p + "self_attn.v_proj.weight"]), Hkv)
            if state.k[i] is not None:
                k = torch.cat([state.k[i], k], dim=2)
                v = torch.cat([state.v[i], v], dim=2)
            state.k[i], state.v[i] = k, v
            x = x + F.linear(attention(q, k, v, mask), w[p + "self_attn.o_proj.weight"])

            # 2) x += CrossAttn(q = cross_attn.layernorm(x), k/v = encoder states): no RoPE, no
            #    causal mask, same head layout (GQA) and 1/sqrt(head_dim) scaling as self-attention
            #    (LlamaDecoderLayer.forward, LlamaCrossAttention.forward).
            if use_cross and i in self.cross_layers:
                pc = p + "cross_attn."
                if cache_cross_kv:
                    if i not in state.cross_kv:
                        state.cross_kv[i] = self._cross_kv(i, enc)
                    ck, cv = state.cross_kv[i]
                else:
                    ck, cv = self._cross_kv(i, enc)
                h = rms_norm(x, w[pc + "layernorm.weight"], cfg.rms_norm_eps)
                cq = _heads(F.linear(h, w[pc + "q_proj.weight"]), H)
                x = x + F.linear(attention(cq, ck, cv, None), w[pc + "o_proj.weight"])

            # 3) x += MLP(post_attention_layernorm(x)).
            h = rms_norm(x, w[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
            x = x + mlp(h, w, p + "mlp.")

        state.length = kv_len
        x = rms_norm(x, w["model.norm.weight"], cfg.rms_norm_eps)
        return F.linear(x, w["lm_head.weight"])[0]

    # ---- scoring and generation ------------------------------------------------------------------

    @torch.no_grad()
    def nll(self, input_ids: Sequence[int], enc: Optional[torch.Tensor] = None,
            logits: Optional[torch.Tensor] = None) -> float:
        """Mean NLL of input_ids[1:] given the prefix (CrossEntropyLoss on shifted logits)."""
        if logits is None:
            logits = self.forward(input_ids, enc)
        targets = torch.tensor(list(input_ids[1:]), dtype=torch.long)
        return float(F.cross_entropy(logits[:-1], targets))

    @torch.no_grad()
    def generate(self, input_ids: Sequence[int], context_ids: Sequence[Sequence[int]] = (),
                 max_new_tokens: int = 16, cache_cross_kv: bool = False,
                 return_step_logits: bool = False):
        """Greedy decoding as HF `generate(do_sample=False, use_cache=True)` with the official
        model: one fresh state, the prompt in one forward, then one token per forward with the
        self-attention KV cache. Stops after max_new_tokens, or right after emitting an eos token
        (which is included in the output, as HF includes it). Ties go to the lowest id (argmax).
        Returns the generated ids (and the last-position logits of every forward if asked).
        """
        if max_new_tokens <= 0:
            return ([], torch.empty(0, self.dec.vocab_size)) if return_step_logits else []
        enc = self.encode(context_ids) if context_ids else None
        state = self.new_state()
        logits = self.forward(input_ids, enc, state, cache_cross_kv)[-1]
        tokens, step_logits = [], []
        while True:
            step_logits.append(logits)
            tok = int(torch.argmax(logits))
            tokens.append(tok)
            if tok in self.eos_ids or len(tokens) >= max_new_tokens:
                break
            logits = self.forward([tok], enc, state, cache_cross_kv)[-1]
        if return_step_logits:
            return tokens, torch.stack(step_logits)
        return tokens
