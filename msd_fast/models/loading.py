"""Trained models out of run directories, and a weights export that needs no pickle.

    model = load_model("runs/my-run")                      # best.pt (else last.pt), eval mode, on the CPU
    model = load_model("runs/my-run", model=my_net)        # a custom model: its weights are loaded into my_net
    export_weights("runs/my-run", "export/")               # export/model.safetensors + export/model.json
    model = load_exported("export/")

Checkpoints are read with msd_fast.checkpoint.load_checkpoint (weights_only: nothing in them can run code).
The export is a safetensors file (tensors only) and a JSON file (model name, classes, input channels, width,
the input preprocessing (the training data's mean/std and image size), the per-exit FLOPs, and the SHA-256
of the weights file), so any tool can read it
without Python pickles. Every loader checks what it reads: the checksum (a weights file changed after export
is refused), model.json's schema, and finite weights (a NaN or inf weight is refused, naming the tensor).
Both loaders attach the preprocessing to the model (msd_fast.models.preprocess.preprocess_of), which
EarlyExit applies to raw images.
"""
import json
import pathlib
from typing import Any, Dict

import torch

from .. import checkpoint as ckpt_format
from ..files import check_finite, check_schema, read_format_file, sha256_of
from .preprocess import Preprocess, attach, from_checkpoint


def _run_checkpoint(path, which: str) -> pathlib.Path:
    p = pathlib.Path(path)
    if p.is_dir():
        if which not in ("best", "last"):
            raise ValueError(f"which must be 'best' or 'last', got {which!r}")
        best, last = p / "best.pt", p / "last.pt"
        return best if which == "best" and best.exists() else last
    return p


EXPORT_FORMAT = "msd_fast-export"
EXPORT_VERSION = 3  # 2: model.json carries the weights file's SHA-256; 3: and the input preprocessing
EXPORT_KEYS = {"format": str, "format_version": int, "model": dict, "dataset": str, "epoch": int,
               "method": (str, type(None)), "exit_flops": (list, type(None)), "params": (int, type(None)),
               "source": str, "weights_sha256": str, "preprocess": (dict, type(None))}
SPEC_KEYS = {"name": str, "num_classes": int, "in_channels": int, "width": (int, float)}


def _check_model_arg(model):
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a model instance (an nn.Module) to load the weights into, got "
                        f"{type(model).__name__} {model!r}; the registry name comes from the file itself")


def build_model(spec: Dict[str, Any], model, where: str):
    if model is not None:
        return model
    from . import create_model, list_models

    if spec["name"] not in list_models():
        raise ValueError(f"{where}: its model {spec['name']!r} is not registered here; register its factory with "
                         f"msd_fast.models.register_model({spec['name']!r}, factory) or pass model=")
    return create_model(**spec)


def describe(spec: Dict[str, Any]) -> str:
    return f"a {spec['name']} with {spec['num_classes']} classes and {spec['in_channels']} input channels"


def load_weights(model, state: Dict[str, torch.Tensor], where: str, what: str = ""):
    """Loads `state` into `model`; NaN/inf weights or weights of another shape raise one ValueError line."""
    check_finite(state, where)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        more = f"; {len(lines) - 1} more" if len(lines) > 1 else ""
        raise ValueError(f"{where}: its weights do not fit {what or type(model).__name__} "
                         f"({lines[0][:200]}{more})") from None
    return model


def load_model(path, model=None, device="cpu", which: str = "best"):
    """The trained model of a run directory (best.pt, else last.pt; which="last" for the last epoch) or of a
    checkpoint file, in eval mode on `device`."""
    _check_model_arg(model)
    file = _run_checkpoint(path, which)
    ckpt = ckpt_format.load_checkpoint(file)
    spec = ckpt_format.model_spec(ckpt)
    net = build_model(spec, model, str(file))
    net = load_weights(net, ckpt["model"], str(file), "" if model is not None else describe(spec))
    return attach(net, from_checkpoint(ckpt, str(file))).to(device).eval()


def export_weights(path, out_dir, which: str = "best") -> Dict[str, str]:
    """Writes out_dir/model.safetensors and out_dir/model.json from a run (or checkpoint); returns the paths."""
    from safetensors.torch import save_file

    file = _run_checkpoint(path, which)
    ckpt = ckpt_format.load_checkpoint(file)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in ckpt["model"].items()}
    check_finite(state, str(file))
    weights, config = out / "model.safetensors", out / "model.json"
    save_file(state, str(weights))
    cfg = ckpt["config"]
    meta = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "model": ckpt_format.model_spec(ckpt),
            "dataset": ckpt["dataset"], "epoch": ckpt["epoch"], "method": cfg.get("method"),
            "exit_flops": ckpt["cost"].get("exit_flops"), "params": ckpt["cost"].get("params"),
            "source": str(file), "weights_sha256": sha256_of(weights)}
    pre = from_checkpoint(ckpt, str(file))
    meta["preprocess"] = pre.as_dict() if pre is not None else None
    config.write_text(json.dumps(meta, indent=1))
    return {"weights": str(weights), "config": str(config)}


def load_exported(out_dir, model=None, device="cpu"):
    """The model of an export_weights folder, in eval mode on `device` (no pickle is read). Raises
    ValueError naming the file for a corrupt, edited or incomplete export."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_model_arg(model)
    d = pathlib.Path(out_dir)
    config, weights = d / "model.json", d / "model.safetensors"
    meta = read_format_file(config, "msd_fast export", EXPORT_FORMAT, EXPORT_VERSION,
                            "with a checksum of the weights", EXPORT_KEYS)
    check_schema(meta["model"], SPEC_KEYS, f"{config} 'model'")
    if not weights.is_file():
        raise ValueError(f"{weights}: missing (an export is model.json and model.safetensors side by side)")
    if sha256_of(weights) != meta["weights_sha256"]:
        raise ValueError(f"{weights}: its SHA-256 does not match the one in {config.name}: the file changed or was "
                         f"damaged after export")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights}: not a readable safetensors file ({e})") from None
    pre = Preprocess.from_dict(meta["preprocess"], str(config)) if meta["preprocess"] is not None else None
    net = build_model(meta["model"], model, str(d))
    net = load_weights(net, state, str(weights), "" if model is not None else describe(meta["model"]))
    return attach(net, pre).to(device).eval()
