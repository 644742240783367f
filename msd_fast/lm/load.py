"""An LM run's model, loaded with every check done before anything is allocated: `load_lm(path)` takes a run
directory (its best.pt, else last.pt), a checkpoint file or an export folder (export.py).

A checkpoint's LM fields (the model, vocabulary, width, sequence length, exits, heads, corpus record) are
checked for type and bounds; the model they describe is then built on the meta device (no memory) and its
tensor names and shapes compared with the checkpoint's weights, so a tampered size (a vocabulary of 1e9, a
width the weights do not have) is refused in one line instead of attempting the allocation. NaN or infinite
weights are refused too."""
import pathlib
from typing import Any, Dict, Tuple

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from ..files import check_finite, check_schema, check_shapes, is_sha256, shapes_of
from .names import LM_HEADS, LM_MODELS, MAX_SEQ_LEN, MAX_VOCAB

LM_RECORD = {"seq_len": int, "exit_layers": list, "heads": str}  # a checkpoint's "lm" and an export's exits.json


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


def checkpoint_model(ckpt: Dict[str, Any], where: str, real: bool = True):
    """The LMExits a checkpoint's fields describe, checked against its weights on the meta device first;
    real=False returns the meta model (shapes only). CheckpointError naming `where` for anything that does
    not fit."""
    from .models import create_lm

    name, V, width, lm = ckpt["model_name"], ckpt["num_classes"], ckpt["width"], ckpt.get("lm")
    if name not in LM_MODELS:
        raise CheckpointError(f"{where}: model {name!r:.40} is not one of {', '.join(LM_MODELS)}")
    check_vocab_size(V, f"{where}: num_classes")
    if not 0 < width <= 64:
        raise CheckpointError(f"{where}: width must be in (0, 64], got {width!r}")
    if not isinstance(lm, dict):
        raise CheckpointError(f"{where}: is not a language-model checkpoint (it has no 'lm' record)")
    check_lm_record(lm, f"{where}: its 'lm' record")
    args = (name, V, lm["seq_len"], width, lm["exit_layers"], lm["heads"])
    try:
        with torch.device("meta"):
            shell = create_lm(*args)
    except ValueError as e:  # exit layers past the model's depth, ...
        raise CheckpointError(f"{where}: {e}") from None
    what = f"a {name} of width {width} with a vocabulary of {V}"
    check_shapes(shapes_of(shell.state_dict()), shapes_of(ckpt["model"]), where, what, CheckpointError)
    if not real:
        return shell
    check_finite(ckpt["model"], where, CheckpointError)
    model = create_lm(*args)
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
        from .export import load_lm_export

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
