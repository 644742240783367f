"""An LM run's weights as a Hugging Face model folder plus its exits: `export_lm(run, out)` writes
out/hf/ (the trunk and head by `save_pretrained`: config.json + model.safetensors), out/exit_heads.safetensors
(per-exit heads, when the run has them), out/tokenizer.json (the corpus's BPE) and out/exits.json (exit
layers, heads, the corpus trained on, and the SHA-256 of every file; written last, so a half-written export
has none and is not read).

`load_lm_export(out)` reads it back without running anything from the folder: every file it reads must have
its SHA-256 record and match it; config.json is read as JSON by msd_fast (no `auto_map`, a supported
`model_type`) and the model is built from it with transformers' own classes (no remote code); the weights are
read from safetensors only, their names and shapes compared with the model built on the meta device before
anything is allocated, and NaN weights refused."""
import pathlib
import shutil
from typing import Any, Dict, Tuple

import torch

from ..files import (check_finite, check_schema, check_sha256, check_shapes, check_writable, is_sha256,
                     read_format_file, read_json_object, sha256_of)

EXPORT_FORMAT, EXPORT_VERSION = "msd_fast-lm-export", 2  # 2: exits.json records the corpus trained on
EXPORT_KEYS = {"format": str, "format_version": int, "model": str, "exit_layers": list, "heads": str, "seq_len": int,
               "method": (str, type(None)), "epoch": int, "trained_on": dict, "sha256": dict}
MODEL_TYPES = ("llama", "qwen2", "gpt2")  # config.json model_type values an export may have (family.py's families)


def export_lm(run, out_dir, data_dir=None) -> Dict[str, str]:
    """Exports a run (directory or checkpoint). The corpus (data_dir, else the run's) must be the one it was
    trained on; its tokenizer goes along when it is there."""
    from safetensors.torch import save_file

    from .corpus import CorpusError, check_same_corpus, load_corpus
    from .load import load_lm
    from .task import corpus_dir

    check_writable(out_dir, "out", True)
    model, rec = load_lm(run)
    try:
        corpus = load_corpus(corpus_dir(data_dir or rec["config"].get("data_dir")))
    except CorpusError:
        if data_dir is not None:
            raise
        corpus = None  # the run's corpus is elsewhere: the weights still export, without a tokenizer
    if corpus is not None:
        check_same_corpus(corpus, rec["trained_on"], str(run))
        corpus.tokenizer()  # checked before it is copied
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "exits.json").unlink(missing_ok=True)
    model.lm.save_pretrained(out / "hf", safe_serialization=True)
    files = sorted(p for p in (out / "hf").iterdir() if p.is_file())
    if model.heads == "per_exit":
        save_file({f"exit_{n}": p.detach().contiguous() for n, p in enumerate(model.exit_heads)},
                  str(out / "exit_heads.safetensors"))
        files.append(out / "exit_heads.safetensors")
    (out / "tokenizer.json").unlink(missing_ok=True)
    if corpus is not None:
        shutil.copyfile(corpus.path / "tokenizer.json", out / "tokenizer.json")
        files.append(out / "tokenizer.json")
    meta = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "model": rec["model_name"],
            "exit_layers": list(model.exit_layers), "heads": model.heads, "seq_len": rec["lm"]["seq_len"],
            "method": rec["config"].get("method"), "epoch": rec["epoch"], "trained_on": rec["trained_on"],
            "sha256": {p.relative_to(out).as_posix(): sha256_of(p) for p in files}}
    import json

    (out / "exits.json").write_text(json.dumps(meta, indent=1))
    return {"dir": str(out), "exits": str(out / "exits.json")}


def _header(path: pathlib.Path) -> Dict[str, tuple]:
    """name -> shape of a safetensors file, from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError and the parser's others: one line naming the file
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {str(e)[:160]})") from None


def _read_meta(d: pathlib.Path) -> Dict[str, Any]:
    from .load import check_lm_record

    where = d / "exits.json"
    meta = read_format_file(where, "msd_fast LM export's exits.json", EXPORT_FORMAT, EXPORT_VERSION,
                            "it records the corpus trained on", EXPORT_KEYS)
    check_lm_record(meta, str(where), ValueError)
    check_schema(meta["trained_on"], {"vocab_size": int, "train_sha256": str}, f"{where} 'trained_on'")
    if not all(isinstance(k, str) and is_sha256(v) for k, v in meta["sha256"].items()):
        raise ValueError(f"{where}: 'sha256' must map file names to SHA-256 digests")
    needed = ["hf/config.json", "hf/model.safetensors"] + (["exit_heads.safetensors"] if meta["heads"] == "per_exit"
                                                           else []) + (["tokenizer.json"]
                                                                       if (d / "tokenizer.json").exists() else [])
    if not (d / "hf/model.safetensors").is_file():
        raise ValueError(f"{d / 'hf/model.safetensors'}: missing; msd_fast reads LM weights from safetensors only "
                         f"(a pytorch_model.bin is a pickle, which could run code, and is never read)")
    for rel in sorted(set(needed) | set(meta["sha256"])):
        parts = pathlib.PurePosixPath(rel).parts
        if rel not in needed and (pathlib.PurePosixPath(rel).is_absolute() or ".." in parts):
            raise ValueError(f"{where}: 'sha256' names {rel!r:.80}, outside the export")
        check_sha256(d / rel, meta["sha256"].get(rel), f"{where.name}'s sha256 record")
    return meta


def _build(d: pathlib.Path, vocab_size: int):
    """The causal LM of hf/config.json with the weights of hf/model.safetensors, checked (module docstring)."""
    from safetensors.torch import load_file

    from .hf import transformers

    tf = transformers()
    where = d / "hf" / "config.json"
    cfg = read_json_object(where, "Hugging Face config.json")
    if "auto_map" in cfg:
        raise ValueError(f"{where}: has an auto_map (code shipped with the model); msd_fast never runs a model "
                         f"folder's code: exports hold one of the supported families ({', '.join(MODEL_TYPES)})")
    if cfg.get("model_type") not in MODEL_TYPES:
        raise ValueError(f"{where}: model_type {cfg.get('model_type')!r:.40} is not one of {', '.join(MODEL_TYPES)}")
    if cfg.get("vocab_size") != vocab_size:
        raise ValueError(f"{where}: vocab_size {cfg.get('vocab_size')!r:.40}, but exits.json's corpus has {vocab_size}")
    try:
        config = tf.CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)
        with torch.device("meta"):
            shell = tf.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
        raise ValueError(f"{where}: not a usable {cfg['model_type']} config ({type(e).__name__}: {str(e)[:160]})") \
            from None
    weights = d / "hf" / "model.safetensors"
    names = {}  # parameter object -> the names it goes by (a tied head and embedding: two names, one tensor)
    for name, param in shell.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    tied = frozenset(n for group in names.values() if len(group) > 1 for n in group)
    have = _header(weights)
    want = {k: tuple(v.shape) for k, v in shell.state_dict().items()}
    check_shapes(want, have, str(weights), f"the model of {where.name}", may_miss=tied)
    for group in names.values():
        if len(group) > 1 and not set(group) & set(have):
            raise ValueError(f"{weights}: its weights do not fit the model of {where.name}: missing {group[0]!r}")
    state = load_file(str(weights))
    check_finite(state, str(weights))
    lm = tf.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    lm.load_state_dict(state, strict=False)  # the names were checked above; a tied weight arrives once
    return lm


def load_lm_export(out_dir, device: str = "cpu") -> Tuple[Any, Dict[str, Any]]:
    """(LMExits in eval mode, its record as load.load_lm gives it) of an export_lm folder; ValueError naming
    the file for a changed, incomplete or unsafe export."""
    from safetensors.torch import load_file

    from .exits import LMExits

    d = pathlib.Path(out_dir)
    meta = _read_meta(d)
    lm = _build(d, meta["trained_on"]["vocab_size"])
    try:
        model = LMExits(lm, meta["exit_layers"], meta["heads"])
    except ValueError as e:
        raise ValueError(f"{d / 'exits.json'}: {e}") from None
    if meta["heads"] == "per_exit":
        f = d / "exit_heads.safetensors"
        want = {f"exit_{n}": tuple(p.shape) for n, p in enumerate(model.exit_heads)}
        check_shapes(want, _header(f), str(f), f"the {len(want)} per-exit heads of {model.vocab_size} x "
                                               f"{model.head(-1)[0].shape[1]}")
        heads = load_file(str(f))
        check_finite(heads, str(f))
        for n, p in enumerate(model.exit_heads):
            p.data.copy_(heads[f"exit_{n}"])
    rec = {"lm": {k: meta[k] for k in ("seq_len", "exit_layers", "heads")}, "config": {},
           "trained_on": meta["trained_on"], "model_name": meta["model"], "epoch": meta["epoch"]}
    return model.to(device).eval(), rec
