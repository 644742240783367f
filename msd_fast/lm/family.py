"""Where a Hugging Face causal LM keeps its parts, per family: the trunk (`base_model`), the embeddings, the
decoder layers, the final norm, the rotary embedding and the head. One table, read by the exits
(exits.py) and by early-exit decoding (decode.py); a family not in it is refused with the families that are.

Families: Llama and Qwen2 (and models built like them: `embed_tokens`, `layers`, `norm`, `rotary_emb`) and
GPT-2 (`wte`, `wpe`, `h`, `ln_f`)."""
import inspect
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass(frozen=True)
class Family:
    name: str
    embed: str          # token embedding attribute of the trunk
    pos_embed: Optional[str]   # learned absolute positions (GPT-2), added to the token embedding
    layers: str         # the decoder layers (nn.ModuleList)
    norm: str           # the final norm, applied to every exit's hidden state (LayerSkip-style shared norm)
    rotary: Optional[str]      # rotary embedding module, called once per forward (Llama, Qwen2)


FAMILIES = (Family("llama", "embed_tokens", None, "layers", "norm", "rotary_emb"),
            Family("gpt2", "wte", "wpe", "h", "ln_f", None))
SUPPORTED = "Llama, Qwen2 and GPT-2 (and models with their module names)"


def family_of(lm: nn.Module) -> Family:
    """The family of a causal LM (an HF *ForCausalLM); ValueError naming the supported ones otherwise."""
    base = getattr(lm, "base_model", None)
    if base is None or base is lm or not callable(getattr(lm, "get_output_embeddings", None)):
        raise ValueError(f"model: expected a Hugging Face causal LM (e.g. LlamaForCausalLM), got "
                         f"{type(lm).__name__}; supported: {SUPPORTED}")
    for fam in FAMILIES:
        if all(getattr(base, a, None) is not None for a in (fam.embed, fam.layers, fam.norm)):
            return fam
    raise ValueError(f"model: {type(lm).__name__} is not a supported family; supported: {SUPPORTED}")


def check_plain_head(lm: nn.Module) -> None:
    """Exits share the model's own logits function: a head that is not one linear map (soft-capped or scaled
    logits) would make the exits' logits differ from the model's, so it is refused."""
    cfg = lm.config
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        v = getattr(cfg, key, None)
        if v not in (None, 0, 1, 1.0):
            raise ValueError(f"model: {type(lm).__name__} post-processes its logits ({key} = {v}); exits support "
                             f"a plain linear head only")
    if not isinstance(lm.get_output_embeddings(), nn.Linear):
        raise ValueError(f"model: the output embeddings of {type(lm).__name__} are not an nn.Linear")


def cache_kwarg(layer: nn.Module) -> str:
    """The name a decoder layer's forward takes its KV cache by (it changed across transformers versions)."""
    params = inspect.signature(layer.forward).parameters
    for name in ("cache", "past_key_values", "past_key_value", "layer_past"):
        if name in params:
            return name
    raise ValueError(f"{type(layer).__name__}.forward takes no KV cache argument this code knows")


def layer_output(out) -> torch.Tensor:
    """A decoder layer's hidden states (some transformers versions return a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def max_positions(lm: nn.Module) -> Optional[int]:
    """The positions a model is configured for (Llama / Qwen2: max_position_embeddings, GPT-2: n_positions)."""
    for key in ("max_position_embeddings", "n_positions"):
        v = getattr(lm.config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None
