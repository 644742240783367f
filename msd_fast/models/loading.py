"""Trained models out of run directories, and a weights export that needs no pickle.

    model = load_model("runs/my-run")                      # best.pt (else last.pt), eval mode, on the CPU
    model = load_model("runs/my-run", model=my_net)        # a custom model: its weights are loaded into my_net
    export_weights("runs/my-run", "export/")               # export/model.safetensors + export/model.json
    model = load_exported("export/")

Checkpoints are read with msd_fast.checkpoint.load_checkpoint (weights_only: nothing in them can run code).
The export is a safetensors file (tensors only) and a JSON file (model name, classes, input channels, width,
the data's normalisation, the per-exit FLOPs), so any tool can read it without Python pickles.
"""
import json
import pathlib
from typing import Any, Dict

import torch

from .. import checkpoint as ckpt_format


def _run_checkpoint(path, which: str) -> pathlib.Path:
    p = pathlib.Path(path)
    if p.is_dir():
        if which not in ("best", "last"):
            raise ValueError(f"which must be 'best' or 'last', got {which!r}")
        best, last = p / "best.pt", p / "last.pt"
        return best if which == "best" and best.exists() else last
    return p


def _build(spec: Dict[str, Any], model, where: str):
    if model is not None:
        return model
    from . import create_model, list_models

    if spec["name"] not in list_models():
        raise ValueError(f"{where}: its model {spec['name']!r} is not registered here; register its factory with "
                         f"msd_fast.models.register_model({spec['name']!r}, factory) or pass model=")
    return create_model(**spec)


def _load_weights(model, state: Dict[str, torch.Tensor], where: str):
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{where}: its weights do not fit {type(model).__name__} ({str(e)[:300]})") from None
    return model


def load_model(path, model=None, device="cpu", which: str = "best"):
    """The trained model of a run directory (best.pt, else last.pt; which="last" for the last epoch) or of a
    checkpoint file, in eval mode on `device`."""
    file = _run_checkpoint(path, which)
    ckpt = ckpt_format.load_checkpoint(file)
    net = _build(ckpt_format.model_spec(ckpt), model, str(file))
    return _load_weights(net, ckpt["model"], str(file)).to(device).eval()


def export_weights(path, out_dir, which: str = "best") -> Dict[str, str]:
    """Writes out_dir/model.safetensors and out_dir/model.json from a run (or checkpoint); returns the paths."""
    from safetensors.torch import save_file

    file = _run_checkpoint(path, which)
    ckpt = ckpt_format.load_checkpoint(file)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in ckpt["model"].items()}
    save_file(state, str(out / "model.safetensors"))
    cfg = ckpt["config"]
    meta = {"format": "msd_fast-export", "format_version": 1, "model": ckpt_format.model_spec(ckpt),
            "dataset": ckpt["dataset"], "epoch": ckpt["epoch"], "method": cfg.get("method"),
            "exit_flops": ckpt["cost"].get("exit_flops"), "params": ckpt["cost"].get("params"),
            "source": str(file)}
    (out / "model.json").write_text(json.dumps(meta, indent=1))
    return {"weights": str(out / "model.safetensors"), "config": str(out / "model.json")}


def load_exported(out_dir, model=None, device="cpu"):
    """The model of an export_weights folder, in eval mode on `device` (no pickle is read)."""
    from safetensors.torch import load_file

    d = pathlib.Path(out_dir)
    try:
        meta = json.loads((d / "model.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{d / 'model.json'}: not a msd_fast export ({e})") from None
    if meta.get("format") != "msd_fast-export":
        raise ValueError(f"{d / 'model.json'}: not a msd_fast export (format {meta.get('format')!r})")
    net = _build(meta["model"], model, str(d))
    return _load_weights(net, load_file(str(d / "model.safetensors")), str(d)).to(device).eval()
