"""Small causal LMs built from a config (random init, nothing downloaded), one per supported family, for the
LM task and its tests: `create_lm(name, vocab_size, seq_len, width, exit_layers, heads)` -> LMExits.

Each has 8 decoder layers, hidden size 128 x width (a multiple of 64), 4 attention heads and no dropout;
Llama and Qwen2 use grouped-query attention (2 KV heads) and untied heads, GPT-2 ties its head to the
token embedding, as those families do. `pretrained_lm` adds the exits to a Hugging Face model folder instead."""
import pathlib
from typing import Any, Dict, Sequence

from .exits import LMExits, even_exit_layers
from .names import LM_MODELS

NUM_LAYERS = 8


def lm_config(name: str, vocab_size: int, seq_len: int, width: float = 1.0):
    """The transformers config of a model of LM_MODELS."""
    from .hf import transformers

    tf = transformers()

    if name not in LM_MODELS:
        raise ValueError(f"model must be one of {', '.join(LM_MODELS)}, got {name!r}")
    H = max(64, int(round(128 * width / 64)) * 64)
    common: Dict[str, Any] = dict(vocab_size=vocab_size, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if name == "gpt2-tiny":
        return tf.GPT2Config(n_embd=H, n_layer=NUM_LAYERS, n_head=4, n_positions=seq_len, resid_pdrop=0.0,
                             embd_pdrop=0.0, attn_pdrop=0.0, **common)
    cls = tf.LlamaConfig if name == "llama-tiny" else tf.Qwen2Config
    return cls(hidden_size=H, intermediate_size=(8 * H // 3 + 63) // 64 * 64, num_hidden_layers=NUM_LAYERS,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=seq_len,
               tie_word_embeddings=False, attention_dropout=0.0, **common)


def create_lm(name: str, vocab_size: int, seq_len: int, width: float = 1.0, exit_layers: Sequence[int] = (),
              heads: str = "shared", num_exits: int = 4) -> LMExits:
    """A randomly initialised model of LM_MODELS with exits (exit_layers empty: num_exits spread evenly)."""
    from .hf import transformers

    tf = transformers()

    lm = tf.AutoModelForCausalLM.from_config(lm_config(name, vocab_size, seq_len, width))
    layers = list(exit_layers) or even_exit_layers(NUM_LAYERS, num_exits)
    return LMExits(lm, layers, heads)


def check_seq_len(config, seq_len: int, where) -> None:
    """A model's positions cover seq_len (GPT-2's learned positions end at n_positions)."""
    top = getattr(config, "max_position_embeddings", None)
    if isinstance(top, int) and seq_len > top:
        raise ValueError(f"{where}: the model has {top} positions, fewer than --seq-len {seq_len}")


def pretrained_lm(folder, seq_len: int, exit_layers: Sequence[int] = (), heads: str = "shared",
                  num_exits: int = 4, meta: bool = False) -> LMExits:
    """A Hugging Face model folder (config.json + safetensors, read by hf_folder.load_hf_causal_lm: no code
    run) with exits added (exit_layers empty: num_exits spread evenly). meta: the model on the meta device
    from its config alone (a shell to check a checkpoint's shapes against)."""
    import torch

    from ..files import read_json_object
    from .hf_folder import causal_lm_config, causal_lm_of, load_hf_causal_lm

    where = pathlib.Path(folder) / "config.json"
    config = causal_lm_config(read_json_object(where, "Hugging Face config.json"), where)
    check_seq_len(config, seq_len, where)
    if meta:
        with torch.device("meta"):
            lm = causal_lm_of(config)
    else:
        lm = load_hf_causal_lm(folder)
    n = config.num_hidden_layers
    return LMExits(lm, list(exit_layers) or even_exit_layers(n, num_exits), heads)


def lm_of_config(hf_config: Dict[str, Any], exit_layers: Sequence[int], heads: str, where) -> LMExits:
    """An LMExits, randomly initialised, of the config.json dict a checkpoint of a pretrained run records."""
    from .hf_folder import causal_lm_config, causal_lm_of

    return LMExits(causal_lm_of(causal_lm_config(hf_config, where)), list(exit_layers), heads)
