"""The checkpoint format, written and read here only.

Safety: every load uses `torch.load(weights_only=True)`, so a checkpoint can hold tensors and plain Python
values (dicts, lists, str, int, float, bool, None) and nothing that runs code: a crafted pickle is refused
with one line naming the file, its payload never runs. RNG states are stored as tensors and plain values.

Format (FORMAT_VERSION 2): a dict with "format" = "msd_fast-checkpoint", "format_version", and the keys of
REQUIRED_KEYS with the types given there; load_checkpoint checks all of them and answers anything else with
a `CheckpointError` that names the file and what is wrong.

Atomic writes: the object is serialised in memory, written to a temp file in the same directory, fsynced,
then renamed over the target (os.replace), so a crash, a kill -9 or a full disk never leaves a torn or
missing checkpoint; a failed write says which file could not be written and that the previous one is intact.
"""
import errno
import io
import os
import pathlib
import random
import re
import tempfile
from typing import Any, Dict

import numpy as np
import torch

FORMAT = "msd_fast-checkpoint"
FORMAT_VERSION = 2
TMP_PREFIX = "."          # temp files: .<name>.<random>.tmp in the checkpoint's directory
TMP_SUFFIX = ".tmp"

# key -> accepted types (None: any value)
REQUIRED_KEYS: Dict[str, Any] = {
    "config": dict, "model_name": str, "num_classes": int, "in_channels": int, "width": (int, float),
    "dataset": str, "model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "epoch": int,
    "step_in_epoch": int, "global_step": int, "aug_state": (torch.Tensor, type(None)), "sums": (dict, type(None)),
    "rng": dict, "history": list, "best": dict, "wall_s": (int, float), "cost": dict,
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is not a msd_fast checkpoint of a known format."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions, ...); the previous one is intact."""


# ------------------------------------------------------------------------------------------ writing
def pack(**fields) -> Dict[str, Any]:
    """A checkpoint dict of the current format from the REQUIRED_KEYS fields (plus optional extras)."""
    missing = [k for k in REQUIRED_KEYS if k not in fields]
    if missing:
        raise ValueError(f"checkpoint.pack: missing fields {missing}")
    from . import __version__

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__, **fields}


def model_spec(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """What rebuilds the checkpoint's model: create_model(**model_spec(ckpt))."""
    return {"name": ckpt["model_name"], "num_classes": ckpt["num_classes"], "in_channels": ckpt["in_channels"],
            "width": ckpt["width"]}


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def atomic_save(obj: Any, path: pathlib.Path) -> None:
    """Writes `obj` to `path` atomically; raises CheckpointWriteError with one clear line on failure."""
    path = pathlib.Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)  # in memory first: a full disk then surfaces as a plain OSError with its errno
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        try:
            _write_all(fd, buf.getbuffer())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        reason = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                  errno.EROFS: "read-only file system", errno.EFBIG: "file too large"}.get(e.errno, e.strerror or str(e))
        intact = "the previous checkpoint there is intact" if path.exists() else "no earlier checkpoint existed"
        raise CheckpointWriteError(e.errno, f"could not write checkpoint {path}: {reason}; {intact}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def remove_stale_temp_files(directory: pathlib.Path) -> list:
    """Deletes temp files left by a save that was killed (kill -9, power loss); returns their names.
    Call only while holding the run directory's lock (no save of ours can be in flight)."""
    removed = []
    for p in pathlib.Path(directory).glob(f"{TMP_PREFIX}*.pt.*{TMP_SUFFIX}"):
        try:
            p.unlink()
            removed.append(p.name)
        except OSError:
            pass
    return removed


# --------------------------------------------------------------------------------------- RNG states
def rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain values (weights_only-loadable)."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------ reading
def resolve_checkpoint_path(path) -> pathlib.Path:
    """A run directory means its last.pt; a file is taken as it is."""
    p = pathlib.Path(path)
    return p / "last.pt" if p.is_dir() else p


def load_checkpoint(path) -> Dict[str, Any]:
    """Loads and checks a checkpoint (a .pt file, or a run directory's last.pt) without running any code
    from it. Raises FileNotFoundError when it is missing, CheckpointError for anything else."""
    path = resolve_checkpoint_path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint (a save that was killed?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the unpickler says, one line naming the file
        text = str(e)
        found = re.search(r"(unsupported GLOBAL [^\s]+|Unsupported global: GLOBAL [^\s]+)", text, re.I)
        if found:  # a pickled callable or class: the way a checkpoint smuggles code
            raise CheckpointError(f"{path} was refused: it asks to import {found.group(1).split()[-1]}, which "
                                  f"could run code when loaded. msd_fast checkpoints hold only tensors and plain "
                                  f"values; do not load this file.") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        msg = detail.group(1).strip() if detail else (text.strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {msg[:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a msd_fast checkpoint (no '{FORMAT}' format marker)")
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this msd_fast reads version "
                              f"{FORMAT_VERSION} (written by msd_fast {ckpt.get('version', '?')})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {', '.join(missing)}")
    for key, types in REQUIRED_KEYS.items():
        if types is not None and (not isinstance(ckpt[key], types) or isinstance(ckpt[key], bool)):
            raise CheckpointError(f"{path}: '{key}' has type {type(ckpt[key]).__name__}, expected "
                                  f"{getattr(types, '__name__', None) or ' or '.join(t.__name__ for t in types)}")
    return ckpt
