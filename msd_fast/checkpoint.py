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
With keep_previous, the file being replaced stays on as PREVIOUS_NAME (a hard link: no copy, no extra disk
until the next save), so a latest checkpoint corrupted later is not the end of a run.

Integrity: the file is torch's zip archive, whose every record (the pickle and each tensor's bytes) carries a
CRC-32 of its content. torch.load does not check them; load_checkpoint does, before unpickling, so a file
changed after it was written (bit rot, a bad copy) is refused with its name and the intact checkpoints that
remain beside it, instead of training on from wrong weights.
"""
import errno
import io
import os
import pathlib
import random
import re
import tempfile
import zipfile
from typing import Any, Dict

import numpy as np
import torch

FORMAT = "msd_fast-checkpoint"
FORMAT_VERSION = 2
TMP_PREFIX = "."          # temp files: .<name>.<random>.tmp in the checkpoint's directory
TMP_SUFFIX = ".tmp"
PREVIOUS_NAME = "last-prev.pt"  # the checkpoint last.pt replaced (atomic_save(..., keep_previous=...))
SIBLINGS = ("last.pt", PREVIOUS_NAME, "best.pt")  # where an intact checkpoint may remain in a run directory

# key -> accepted types (None: any value)
REQUIRED_KEYS: Dict[str, Any] = {
    "config": dict, "model_name": str, "num_classes": int, "width": (int, float),
    "dataset": str, "model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "epoch": int,
    "step_in_epoch": int, "global_step": int, "aug_state": (torch.Tensor, type(None)), "sums": (dict, type(None)),
    "rng": dict, "history": list, "best": dict, "wall_s": (int, float), "cost": dict,
}

# a task's own fields (Task.checkpoint_fields): checked for type where present
TASK_KEYS: Dict[str, Any] = {"in_channels": int, "lm": dict}


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
    """What rebuilds an image checkpoint's model: create_model(**model_spec(ckpt))."""
    if "in_channels" not in ckpt:
        raise CheckpointError(f"not an image model's checkpoint (no in_channels; task "
                              f"{ckpt['config'].get('task', 'image')!r}: python -m msd_fast.lm reads language models)")
    return {"name": ckpt["model_name"], "num_classes": ckpt["num_classes"], "in_channels": ckpt["in_channels"],
            "width": ckpt["width"]}


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _keep_as(path: pathlib.Path, previous: pathlib.Path) -> None:
    """Makes `previous` the file now at `path` (a hard link, else a copy), atomically replacing it."""
    tmp = previous.with_name(f"{TMP_PREFIX}{previous.name}.keep{TMP_SUFFIX}")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:  # a file system without hard links
            import shutil

            shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save(obj: Any, path: pathlib.Path, keep_previous: bool = False) -> None:
    """Writes `obj` to `path` atomically; raises CheckpointWriteError with one clear line on failure.
    keep_previous: the file `path` held until now stays on as PREVIOUS_NAME beside it."""
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
        if keep_previous and path.exists():
            _keep_as(path, path.with_name(PREVIOUS_NAME))
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
    for p in pathlib.Path(directory).glob(f"{TMP_PREFIX}*.pt.*{TMP_SUFFIX}"):  # also .<name>.keep.tmp
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


def _verify_archive(path: pathlib.Path) -> None:
    """Raises CheckpointError unless `path` is a zip archive whose every record matches its CRC-32."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            pickled = fh.read(1) == b"\x80"
        raise CheckpointError(f"{path} is a raw pickle (torch's legacy format), not a msd_fast checkpoint; it is "
                              f"not read, since a raw pickle can run code" if pickled else
                              f"{path} is not a readable checkpoint (truncated or corrupt): not a zip archive")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt): {e}") from None
    except Exception as e:  # noqa: BLE001 - zlib errors and the like: one line naming the file
        raise CheckpointError(f"{path} is corrupt: {type(e).__name__}: {e}") from None
    if bad is not None:
        raise CheckpointError(f"{path} is corrupt: its record {bad} does not match its CRC-32 checksum (the file "
                              f"changed after it was written)")


def intact_siblings(path: pathlib.Path) -> str:
    """'' or a phrase naming the checkpoints beside `path` that load cleanly, with their epoch and step."""
    found = []
    for name in SIBLINGS:
        other = path.with_name(name)
        if other.name == path.name or not other.exists():
            continue
        try:
            c = load_checkpoint(other, _siblings=False)
        except (CheckpointError, OSError):
            continue
        found.append(f"{other} (step {c['global_step']}, {c['epoch']} epochs done)")
    return ("; intact: " + ", ".join(found)) if found else "; no intact checkpoint remains beside it"


def load_checkpoint(path, _siblings: bool = True) -> Dict[str, Any]:
    """Loads and checks a checkpoint (a .pt file, or a run directory's last.pt) without running any code
    from it: the archive's CRC-32s first, then weights_only unpickling, then the format. Raises
    FileNotFoundError when it is missing, CheckpointError (naming the intact checkpoints beside a corrupt
    one) for anything else."""
    path = resolve_checkpoint_path(path)
    try:
        return _load_checked(path)
    except CheckpointError as e:
        if not _siblings:
            raise
        raise CheckpointError(f"{e}{intact_siblings(path)}") from None


def _load_checked(path: pathlib.Path) -> Dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint (a save that was killed?)")
    _verify_archive(path)
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
    for key, types in {**REQUIRED_KEYS, **{k: v for k, v in TASK_KEYS.items() if k in ckpt}}.items():
        if types is not None and (not isinstance(ckpt[key], types) or isinstance(ckpt[key], bool)):
            raise CheckpointError(f"{path}: '{key}' has type {type(ckpt[key]).__name__}, expected "
                                  f"{getattr(types, '__name__', None) or ' or '.join(t.__name__ for t in types)}")
    return ckpt
