"""Hugging Face model folders, read without running anything from them.

`load_hf_causal_lm(folder)`: config.json is read as JSON by msd_fast (no `auto_map`, a `model_type` of a
supported family) and the model is built from it with transformers' own classes (no remote code); the
weights come from safetensors only (model.safetensors, or the shards model.safetensors.index.json names),
their names and shapes compared with the model built on the meta device before anything is allocated, and
NaN weights refused. A pytorch_model.bin is a pickle, which could run code, and is never read.

`load_lm_exits(folder)`: a folder `LMExits.save_pretrained` wrote (the base model's files, plain transformers
loads them as the base model, plus exit_heads.safetensors and msd_exits.json): every file msd_exits.json
records must be there and match its SHA-256, a missing record is an error; the exits, heads and the loss's
settings come back as they were saved."""
import pathlib
from typing import Dict, Optional

import torch

from ..files import (check_finite, check_schema, check_sha256, check_shapes, is_sha256, read_format_file,
                     read_json_object)
from .names import EXITS_FILE, EXITS_FORMAT, EXITS_VERSION, MODEL_TYPES

WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
EXITS_KEYS = {"format": str, "format_version": int, "exit_layers": list, "heads": str, "loss": dict, "sha256": dict}
LOSS_KEYS = {"alpha": float, "temperature": float, "beta": float, "teacher": str, "detach_teacher": bool,
             "ignore_index": (int, type(None)), "feature_reduction": str, "chunk_tokens": (int, type(None)),
             "exit_weights": (list, type(None))}


def safetensors_header(path: pathlib.Path) -> Dict[str, tuple]:
    """name -> shape of a safetensors file, from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError and the parser's others: one line naming the file
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {str(e)[:160]})") from None


def weight_files(folder: pathlib.Path):
    """The safetensors files of a folder's weights: model.safetensors, or the shards its index names."""
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        index = read_json_object(folder / INDEX, "safetensors index")
        shards = index.get("weight_map")
        if not isinstance(shards, dict) or not all(isinstance(v, str) and "/" not in v and "\\" not in v
                                                   and v not in ("", ".", "..") for v in shards.values()):
            raise ValueError(f"{folder / INDEX}: 'weight_map' must map tensor names to shard files in the folder")
        return [folder / v for v in sorted(set(shards.values()))]
    raise ValueError(f"{folder / WEIGHTS}: missing; msd_fast reads LM weights from safetensors only (a "
                     f"pytorch_model.bin is a pickle, which could run code, and is never read)")


def causal_lm_config(cfg: Dict, where):
    """The transformers config of a config.json's dict, checked: no `auto_map`, a supported `model_type`, and a
    model transformers' own classes can build from it (tried on the meta device: nothing allocated)."""
    from .hf import transformers

    tf = transformers()
    if "auto_map" in cfg:
        raise ValueError(f"{where}: has an auto_map (code shipped with the model); msd_fast never runs a model "
                         f"folder's code: it reads the supported families only ({', '.join(MODEL_TYPES)})")
    if cfg.get("model_type") not in MODEL_TYPES:
        raise ValueError(f"{where}: model_type {cfg.get('model_type')!r:.40} is not one of {', '.join(MODEL_TYPES)}")
    try:
        config = tf.CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)
        with torch.device("meta"):
            tf.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
        raise ValueError(f"{where}: not a usable {cfg['model_type']} config ({type(e).__name__}: {str(e)[:160]})") \
            from None
    return config


def causal_lm_of(config):
    """A causal LM of a checked config (causal_lm_config), randomly initialised; on the meta device when built
    under `torch.device("meta")`."""
    from .hf import transformers

    return transformers().AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def load_hf_causal_lm(folder, vocab_size: Optional[int] = None):
    """The causal LM of folder/config.json with its safetensors weights, checked (module docstring);
    vocab_size: the vocabulary the caller's record expects (None: any)."""
    from safetensors.torch import load_file

    folder = pathlib.Path(folder)
    where = folder / "config.json"
    cfg = read_json_object(where, "Hugging Face config.json")
    config = causal_lm_config(cfg, where)
    if vocab_size is not None and cfg.get("vocab_size") != vocab_size:
        raise ValueError(f"{where}: vocab_size {cfg.get('vocab_size')!r:.40}, but the record beside it says "
                         f"{vocab_size}")
    with torch.device("meta"):
        shell = causal_lm_of(config)
    files = weight_files(folder)
    names = {}  # parameter object -> the names it goes by (a tied head and embedding: two names, one tensor)
    for name, param in shell.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    tied = frozenset(n for group in names.values() if len(group) > 1 for n in group)
    have = {}
    for f in files:
        have.update(safetensors_header(f))
    want = {k: tuple(v.shape) for k, v in shell.state_dict().items()}
    weights = str(files[0]) if len(files) == 1 else f"{folder}'s {len(files)} shards"
    check_shapes(want, have, weights, f"the model of {where.name}", may_miss=tied)
    for group in names.values():
        if len(group) > 1 and not set(group) & set(have):
            raise ValueError(f"{weights}: its weights do not fit the model of {where.name}: missing {group[0]!r}")
    lm = causal_lm_of(config)
    for f in files:
        state = load_file(str(f))
        check_finite(state, str(f))
        lm.load_state_dict(state, strict=False)  # the names were checked above; a tied weight arrives once
    return lm


def load_lm_exits(folder, device: str = "cpu"):
    """The LMExits `LMExits.save_pretrained(folder)` wrote, in eval mode; ValueError naming the file for a
    changed, incomplete or unsafe folder."""
    from ..loss import FusedLinearMSDLoss
    from .exits import LMExits

    d = pathlib.Path(folder)
    where = d / EXITS_FILE
    meta = read_format_file(where, f"msd_fast {EXITS_FILE}", EXITS_FORMAT, EXITS_VERSION, "the first", EXITS_KEYS)
    check_schema(meta["loss"], LOSS_KEYS, f"{where} 'loss'")
    if not all(isinstance(k, str) and "/" not in k and "\\" not in k and k not in ("", ".", "..") and is_sha256(v)
               for k, v in meta["sha256"].items()):
        raise ValueError(f"{where}: 'sha256' must map the folder's file names to SHA-256 digests")
    needed = {"config.json", *(f.name for f in weight_files(d)), *([INDEX] if (d / INDEX).is_file() else []),
              *(["exit_heads.safetensors"] if meta["heads"] == "per_exit" else [])}
    for name in sorted(needed | set(meta["sha256"])):
        check_sha256(d / name, meta["sha256"].get(name), f"{where.name}'s sha256 record")
    lm = load_hf_causal_lm(d)
    try:
        model = LMExits(lm, meta["exit_layers"], meta["heads"], FusedLinearMSDLoss(**meta["loss"]))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
    if meta["heads"] == "per_exit":
        load_exit_heads(model, d / "exit_heads.safetensors")
    return model.to(device).eval()


def load_exit_heads(model, f: pathlib.Path) -> None:
    """A per_exit model's shallower heads from f (exit_0, exit_1, ...), names, shapes and values checked."""
    from safetensors.torch import load_file

    want = {f"exit_{n}": tuple(p.shape) for n, p in enumerate(model.exit_heads)}
    check_shapes(want, safetensors_header(f), str(f), f"the {len(want)} per-exit heads of {model.vocab_size} x "
                                                      f"{model.head(-1)[0].shape[1]}")
    heads = load_file(str(f))
    check_finite(heads, str(f))
    with torch.no_grad():
        for n, p in enumerate(model.exit_heads):
            p.copy_(heads[f"exit_{n}"])
