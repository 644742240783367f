"""An LM run's model, loaded with every check done before anything is allocated: `load_lm(path)` takes a run
directory (its best.pt, else last.pt), a checkpoint file or an export folder (export.py).

A checkpoint's LM fields (the model, vocabulary, width, sequence length, exits, heads, corpus record) are
checked for type and bounds; the model they describe is then built on the meta device (no memory) and its
tensor names and shapes compared with the checkpoint's weights, so a tampered size (a vocabulary of 1e9, a
width the weights do not have) is refused in one line instead of attempting the allocation. NaN or infinite
weights are refused too.

An export folder (export.py writes it) is read without running anything from it: every file read must have its
SHA-256 record in exits.json and match it; config.json is read as JSON by msd_fast (no `auto_map`, a supported
`model_type`) and the model is built from it with transformers' own classes (no remote code); the weights are
read from safetensors only, their names and shapes compared with the model built on the meta device before
anything is allocated, and NaN weights refused."""
import pathlib
from typing import Any, Dict, Tuple

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from ..files import check_finite, check_schema, check_sha256, check_shapes, is_sha256, read_format_file, shapes_of
from .hf_folder import load_exit_heads, load_hf_causal_lm
from .names import LM_HEADS, LM_MODELS, MAX_SEQ_LEN, MAX_VOCAB

LM_RECORD = {"seq_len": int, "exit_layers": list, "heads": str}  # a checkpoint's "lm" and an export's exits.json
EXPORT_FORMAT, EXPORT_VERSION = "msd_fast-lm-export", 2  # 2: exits.json records the corpus trained on
EXPORT_KEYS = {"format": str, "format_version": int, "model": str, "exit_layers": list, "heads": str, "seq_len": int,
               "method": (str, type(None)), "epoch": int, "trained_on": dict, "sha256": dict}


def check_lm_record(rec: Dict[str, Any], where: str, error=CheckpointError) -> None:
    """seq_len in [2, MAX_SEQ_LEN], exit_layers increasing integers >= 0, heads one of LM_HEADS."""
    check_schema(rec, LM_RECORD, where, error, extra_ok=True)
    if not 2 <= rec["seq_len"] <= MAX_SEQ_LEN:
        raise error(f"{where}: seq_len must be in [2, {MAX_SEQ_LEN}], got {rec['seq_len']}")
    layers = rec["exit_layers"]
    if not layers or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in layers) \
            or any(a >= b for a, b in zip(layers, layers[1:])):
        raise error(f"{where}: exit_layers must be increasing layer indices >= 0, got {layers!r:.80}")
    if rec["heads"] not in LM_HEADS:
        raise error(f"{where}: heads must be one of {', '.join(LM_HEADS)}, got {rec['heads']!r:.40}")


def check_vocab_size(V: Any, where: str, error=CheckpointError) -> None:
    if isinstance(V, bool) or not isinstance(V, int) or not 2 <= V <= MAX_VOCAB:
        raise error(f"{where}: a vocabulary must be an integer in [2, {MAX_VOCAB}], got {V!r:.40}")


def checkpoint_model(ckpt: Dict[str, Any], where: str):
    """The LMExits a checkpoint's fields describe, checked against its weights on the meta device first;
    CheckpointError naming `where` for anything that does not fit."""
    from .models import create_lm, lm_of_config

    name, V, width, lm = ckpt["model_name"], ckpt["num_classes"], ckpt["width"], ckpt.get("lm")
    if not isinstance(lm, dict):
        raise CheckpointError(f"{where}: is not a language-model checkpoint (it has no 'lm' record)")
    hf_config = lm.get("hf_config")  # a run from a Hugging Face model folder records the folder's config
    if name not in LM_MODELS and not isinstance(hf_config, dict):
        raise CheckpointError(f"{where}: model {name!r:.40} is not one of {', '.join(LM_MODELS)} and the "
                              f"checkpoint records no hf_config of a pretrained model")
    check_vocab_size(V, f"{where}: num_classes")
    if not 0 < width <= 64:
        raise CheckpointError(f"{where}: width must be in (0, 64], got {width!r}")
    check_lm_record(lm, f"{where}: its 'lm' record")
    if isinstance(hf_config, dict):
        build = lambda: lm_of_config(hf_config, lm["exit_layers"], lm["heads"], f"{where}'s hf_config")  # noqa: E731
        what = f"the model of its hf_config ({hf_config.get('model_type')!r:.20})"
    else:
        build = lambda: create_lm(name, V, lm["seq_len"], width, lm["exit_layers"], lm["heads"])  # noqa: E731
        what = f"a {name} of width {width} with a vocabulary of {V}"
    try:
        with torch.device("meta"):
            shell = build()
    except ValueError as e:  # exit layers past the model's depth, an unsupported config, ...
        raise CheckpointError(f"{where}: {e}") from None
    check_shapes(shapes_of(shell.state_dict()), shapes_of(ckpt["model"]), where, what, CheckpointError)
    check_finite(ckpt["model"], where, CheckpointError)
    model = build()
    model.load_state_dict(ckpt["model"])
    return model


def trained_on(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """{"vocab_size", "train_sha256"}: the corpus a checkpoint was trained on."""
    return {"vocab_size": ckpt["num_classes"], "train_sha256": (ckpt.get("lm") or {}).get("corpus_train_sha256")}


def load_lm(path, device: str = "cpu") -> Tuple[Any, Dict[str, Any]]:
    """(model in eval mode, its record) of an LM run directory (best.pt, else last.pt), checkpoint file or
    export folder. The record has "lm" (seq_len, exit_layers, heads), "config" (the run's; {} for an export)
    and "trained_on" (the corpus's vocabulary size and train-split SHA-256)."""
    p = pathlib.Path(path)
    if p.is_dir() and (p / "exits.json").exists():
        return load_lm_export(p, device)
    if p.is_dir():
        if not any((p / n).exists() for n in ("best.pt", "last.pt")):
            raise FileNotFoundError(f"{p}: not an LM run or export (no best.pt, last.pt or exits.json in it)")
        p = p / "best.pt" if (p / "best.pt").exists() else p / "last.pt"
    ckpt = load_checkpoint(p)
    if ckpt["config"].get("task") != "lm" or not isinstance(ckpt.get("lm"), dict):
        raise CheckpointError(f"{p} is not a language-model checkpoint (task {ckpt['config'].get('task', 'image')!r})")
    model = checkpoint_model(ckpt, str(p))
    sha = ckpt["lm"].get("corpus_train_sha256")
    if not is_sha256(sha):
        raise CheckpointError(f"{p}: its 'lm' record has no corpus_train_sha256 (got {sha!r:.40})")
    return model.to(device).eval(), {"lm": ckpt["lm"], "config": ckpt["config"], "trained_on": trained_on(ckpt),
                                     "model_name": ckpt["model_name"], "epoch": ckpt["epoch"]}


def check_resume_fits(shell, path) -> None:
    """Before a resumed run allocates its model: the model its config describes (`shell`, built on the meta
    device) has the names and shapes of the checkpoint's weights, read lazily (mmap: no tensor data is read).
    A file that cannot be read so is left to load_checkpoint, which says what is wrong with it."""
    from ..checkpoint import resolve_checkpoint_path

    p = resolve_checkpoint_path(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        state = ckpt["model"]
        assert isinstance(state, dict)
    except Exception:  # noqa: BLE001 - missing, corrupt or not ours: load_checkpoint's message is the one to see
        return
    check_shapes(shapes_of(shell.state_dict()), shapes_of(state), str(p), "the model this run's config describes",
                 CheckpointError)


def _read_meta(d: pathlib.Path) -> Dict[str, Any]:
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


def load_lm_export(out_dir, device: str = "cpu") -> Tuple[Any, Dict[str, Any]]:
    """(LMExits in eval mode, its record as load.load_lm gives it) of an export_lm folder; ValueError naming
    the file for a changed, incomplete or unsafe export."""
    from .exits import LMExits

    d = pathlib.Path(out_dir)
    meta = _read_meta(d)
    lm = load_hf_causal_lm(d / "hf", meta["trained_on"]["vocab_size"])
    try:
        model = LMExits(lm, meta["exit_layers"], meta["heads"])
    except ValueError as e:
        raise ValueError(f"{d / 'exits.json'}: {e}") from None
    if meta["heads"] == "per_exit":
        load_exit_heads(model, d / "exit_heads.safetensors")
    rec = {"lm": {k: meta[k] for k in ("seq_len", "exit_layers", "heads")}, "config": {},
           "trained_on": meta["trained_on"], "model_name": meta["model"], "epoch": meta["epoch"]}
    return model.to(device).eval(), rec
