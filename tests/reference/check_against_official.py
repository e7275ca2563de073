"""Optional: run the authors' own modeling code on the committed fixtures and compare.

    /usr/bin/python3 tests/reference/check_against_official.py PATH/TO/modeling_llama_flash.py

PATH is the file from the public princeton-nlp/CEPE repository (not vendored here). It imports
`transformers` 4.34 and `flash_attn`; neither is needed: this script installs a minimal stand-in
for the few `transformers` names the file uses (config object, output dataclasses, no-op
decorators), and switches the encoder's flash-attention modules to the file's own eager
`LlamaAttention` (same weights, same masks; the flash path would also cast fp32 to fp16). Everything
then runs in fp32 on CPU.

Checks, for every fixture: full-forward logits with the context chunks padded on the LEFT (as the
official QA evaluation pads them, position ids not shifted) and on the right; and greedy decoding
driven like HF `generate` (prompt forward with use_cache, then one token per forward with
past_key_values and the returned encoder_hidden_states), one freshly built model per sequence.
Exit status 1 if any logit differs by more than 1e-4 or any token differs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import types
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import cepe_reference as ref  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")


# --------------------------------------------------------------------------------------------------
# Minimal stand-in for the parts of `transformers` the official file imports.
# --------------------------------------------------------------------------------------------------

class _ModelOutput(OrderedDict):
    """Attribute + key + index access over the non-None fields, like transformers.ModelOutput."""

    def __post_init__(self):
        for k, v in self.__dict__.items():
            if v is not None:
                self[k] = v

    def __getitem__(self, k):
        return super().__getitem__(k) if isinstance(k, str) else tuple(self.values())[k]


@dataclass
class _Output(_ModelOutput):
    loss: Any = None
    logits: Any = None
    last_hidden_state: Any = None
    past_key_values: Any = None
    hidden_states: Any = None
    attentions: Any = None


class _LlamaConfig:
    _defaults = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=None, hidden_act="silu",
                     max_position_embeddings=2048, initializer_range=0.02, rms_norm_eps=1e-6,
                     use_cache=True, pad_token_id=None, bos_token_id=1, eos_token_id=2, pretraining_tp=1,
                     tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, is_decoder=False,
                     output_attentions=False, output_hidden_states=False, use_return_dict=True)

    def __init__(self, **kw):
        for k, v in {**self._defaults, **kw}.items():
            setattr(self, k, v)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


class _PreTrainedModel(nn.Module):
    def __init__(self, config, *args, **kwargs):
        super().__init__()
        self.config = config

    def post_init(self):
        pass


def _install_transformers_stub() -> None:
    def identity_decorator(*args, **kwargs):
        return lambda f: f

    def get_logger(name):
        logger = logging.getLogger(name)
        logger.warning_once = lambda *a, **k: None
        return logger

    mods = {
        "transformers": {},
        "transformers.activations": {"ACT2FN": {"silu": nn.SiLU()}},
        "transformers.modeling_outputs": {n: _Output for n in (
            "BaseModelOutputWithPast", "CausalLMOutputWithPast", "SequenceClassifierOutputWithPast",
            "MaskedLMOutput")},
        "transformers.modeling_utils": {"PreTrainedModel": _PreTrainedModel},
        "transformers.pytorch_utils": {"ALL_LAYERNORM_LAYERS": []},
        "transformers.utils": {
            "add_start_docstrings": identity_decorator,
            "add_start_docstrings_to_model_forward": identity_decorator,
            "replace_return_docstrings": identity_decorator,
            "is_flash_attn_available": lambda: False,
            "logging": types.SimpleNamespace(get_logger=get_logger),
            "ModelOutput": _ModelOutput,
        },
        "transformers.models": {},
        "transformers.models.llama": {},
        "transformers.models.llama.configuration_llama": {"LlamaConfig": _LlamaConfig},
    }
    for name, attrs in mods.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m


# --------------------------------------------------------------------------------------------------

def build(official, model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg_dict = json.load(f)
    cfg = official.LlamaConfig(**cfg_dict)
    cfg.is_decoder = True  # as eval_downstream.py sets it
    cepe = "encoder_config" in cfg_dict
    model = (official.LlamaForCausalContextLM if cepe else official.LlamaForCausalLM)(cfg)
    if cepe:
        for layer in model.encoder.layers:
            layer.self_attn.__class__ = official.LlamaAttention  # flash -> eager, same module
    weights = ref.load_weights(model_dir)
    if cfg_dict.get("tie_word_embeddings"):
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def encoder_inputs(chunks, pad_left):
    if not chunks:
        return {}
    L = max(map(len, chunks))
    ids = torch.full((1, len(chunks), L), 2, dtype=torch.long)  # the eval pads with eos
    mask = torch.zeros(1, len(chunks), L, dtype=torch.long)
    for i, c in enumerate(chunks):
        sl = slice(L - len(c), L) if pad_left else slice(0, len(c))
        ids[0, i, sl] = torch.tensor(c)
        mask[0, i, sl] = 1
    return {"encoder_input_ids": ids, "encoder_attention_mask": mask}


def main() -> int:
    if len(sys.argv) != 2 or not os.path.isfile(sys.argv[1]):
        print(__doc__)
        return 2
    _install_transformers_stub()
    spec = importlib.util.spec_from_file_location("official_cepe", sys.argv[1])
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)
    torch.set_num_threads(1)

    ok = True

    def report(label, diff, same_tokens=True):
        nonlocal ok
        good = diff < 1e-4 and same_tokens
        ok &= good
        print(f"{label:48s} max|diff| {diff:.2e}{'' if same_tokens else '  TOKENS DIFFER'}"
              f"{'' if good else '  FAIL'}")

    with torch.no_grad():
        for case in sorted(os.listdir(FIXTURES)):
            d = os.path.join(FIXTURES, case)
            if not os.path.isfile(os.path.join(d, "expected.json")):
                continue
            with open(os.path.join(d, "expected.json")) as f:
                exp = json.load(f)
            if "greedy" not in exp:  # not a CEPE fixture (e.g. the BERT embedder's)
                continue
            for pad_left in (True, False):
                model = build(official, d)
                out = model(input_ids=torch.tensor([exp["input_ids"]]),
                            **encoder_inputs(exp["context_ids"], pad_left))
                diff = float((out.logits[0].double() - torch.tensor(exp["logits"]).double()).abs().max())
                report(f"{case} logits ({'left' if pad_left else 'right'}-padded chunks)", diff)
            for gi, g in enumerate([exp["greedy"]] + exp.get("greedy_extra", [])):
                model = build(official, d)  # fresh rotary caches per sequence
                enc = encoder_inputs(g["context_ids"], pad_left=True)
                out = model(input_ids=torch.tensor([g["input_ids"]]), use_cache=True, **enc)
                tokens, steps = [], []
                while True:
                    steps.append(out.logits[0, -1])
                    tokens.append(int(steps[-1].argmax()))
                    if tokens[-1] == 2 or len(tokens) >= g["max_new_tokens"]:
                        break
                    more = {}
                    if enc:
                        more = {"encoder_hidden_states": out.encoder_hidden_states,
                                "encoder_attention_mask": enc["encoder_attention_mask"]}
                    out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values,
                                use_cache=True, **more)
                diff = float((torch.stack(steps).double() - torch.tensor(g["step_logits"]).double()).abs().max())
                report(f"{case} greedy[{gi}] step logits", diff, tokens == g["tokens"])
    print("all match" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
