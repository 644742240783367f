"""The checks every msd_fast reader and writer of files applies (checkpoints' neighbours, exports, corpora,
command outputs), declared once:

- `read_json_object`: a JSON object of bounded size; deep nesting, bad UTF-8 or a non-object is one line
  naming the file, never a RecursionError or a traceback.
- `check_schema`: exact keys and their types; `read_format_file`: a format's JSON description, marker and
  version included.
- `sha256_of` / `check_sha256`: the integrity record of a file; a record that should be there and is not is
  an error, never a skipped check.
- `check_finite`: no NaN or infinite weight is written or read.
- `check_writable`: an output path (a folder to create or a file to write) is checked before any work starts,
  so a refused start leaves nothing behind."""
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Dict, Mapping, Type

import torch

MAX_JSON_BYTES = 64 << 20  # the largest JSON file any reader here takes (exits.json, meta.json, config.json)


def read_json_object(path, what: str, error: Type[Exception] = ValueError, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """The JSON object in `path`; `error` naming the file and `what` it should be otherwise."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise error(f"{p}: missing ({what})")
    size = p.stat().st_size
    if size > max_bytes:
        raise error(f"{p}: {size:,} bytes, more than the {max_bytes:,} a {what} may have")
    try:
        obj = json.loads(p.read_bytes().decode("utf-8"))
    except RecursionError:
        raise error(f"{p}: not a {what}: its JSON is nested too deeply") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{p}: not a readable {what} ({e})") from None
    if not isinstance(obj, dict):
        raise error(f"{p}: not a {what}: expected a JSON object, got a {type(obj).__name__}")
    return obj


def read_format_file(path, what: str, fmt: str, version: int, since: str, keys: Mapping[str, Any]) -> dict:
    """A JSON description file of one of our formats: read_json_object, then its "format" marker, its
    "format_version" (`since`: what that version added, for the message to re-export) and its keys."""
    meta = read_json_object(path, what)
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: not a {what} (format {meta.get('format')!r:.40})")
    if meta.get("format_version") != version:
        raise ValueError(f"{path}: format version {meta.get('format_version')!r:.40}; this msd_fast reads version "
                         f"{version} ({since}): export the run again")
    check_schema(meta, keys, str(path))
    return meta


def check_schema(obj: Mapping[str, Any], keys: Mapping[str, Any], where: str, error: Type[Exception] = ValueError,
                 extra_ok: bool = False) -> None:
    """obj has exactly `keys` (more with extra_ok), each of its type(s); bool never passes for a number."""
    if not isinstance(obj, dict):
        raise error(f"{where}: expected a JSON object, got a {type(obj).__name__}")
    missing, extra = sorted(set(keys) - set(obj)), sorted(set(obj) - set(keys))
    if missing or (extra and not extra_ok):
        raise error(f"{where}: " + "; ".join(([f"missing keys {missing}"] if missing else [])
                                             + ([f"unknown keys {extra}"] if extra and not extra_ok else [])))
    for k, types in keys.items():
        if not isinstance(obj[k], types) or (isinstance(obj[k], bool) and bool not in _as_tuple(types)):
            raise error(f"{where}: {k!r} is {obj[k]!r:.80}, of the wrong type")


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def check_sha256(path, digest: Any, record: str, error: Type[Exception] = ValueError) -> None:
    """path's SHA-256 is `digest` (the record named `record`); a missing file or record is an error too."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise error(f"{p}: missing" + (f" ({record} records it)" if is_sha256(digest) else ""))
    if not is_sha256(digest):
        raise error(f"{p}: {record} has no SHA-256 for it (got {digest!r:.80}); an integrity record that is "
                    f"missing is refused, not skipped")
    if sha256_of(p) != digest:
        raise error(f"{p}: its SHA-256 does not match {record} (the file changed or was damaged)")


def check_finite(state: Mapping[str, torch.Tensor], where: str, error: Type[Exception] = ValueError) -> None:
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise error(f"{where}: weight {name!r} holds NaN or infinite values (a diverged run?); not used")


def check_writable(path, arg: str, is_dir: bool, error: Type[Exception] = ValueError) -> None:
    """`path` can be written: a folder (is_dir) that is not a file, or a file that is not a folder, under the
    nearest existing ancestor, which must be a folder we can create files in (probed with a temp file that is
    removed at once). Nothing is created."""
    p = pathlib.Path(path).absolute()
    if p.exists() and p.is_dir() != is_dir:
        raise error(f"{arg} {path}: is a {'file, not a directory' if is_dir else 'directory, not a file'}")
    probe = p if is_dir else p.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise error(f"{arg} {path}: {probe} is a file, not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".msd_fast-write-test-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise error(f"{arg} {path}: cannot create files in {probe} ({e.strerror or e})") from None


def shapes_of(state: Mapping[str, Any]) -> Dict[str, Any]:
    """name -> shape (None for a value that is not a tensor)."""
    return {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()}


def check_shapes(want: Mapping[str, tuple], have: Mapping[str, tuple], where: str, what: str,
                 error: Type[Exception] = ValueError, may_miss: frozenset = frozenset()) -> None:
    """The tensors `have` (name -> shape, read from a file's header or a checkpoint) are exactly those of the
    model `want` (built on the meta device: nothing allocated): same names, same shapes. may_miss: names that
    may be absent (a tied weight saved once)."""
    missing = sorted(set(want) - set(have) - set(may_miss))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        parts = ([f"missing {len(missing)} tensors ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"]
                 if missing else []) + ([f"{len(extra)} unknown ({', '.join(extra[:3])}"
                                         f"{', ...' if len(extra) > 3 else ''})"] if extra else [])
        raise error(f"{where}: its weights do not fit {what}: {'; '.join(parts)}")
    for k in sorted(set(want) & set(have)):
        if have[k] is None or tuple(want[k]) != tuple(have[k]):
            got = "no tensor" if have[k] is None else f"shape {list(have[k])}"
            raise error(f"{where}: its weights do not fit {what}: {k!r} has {got}, expected shape "
                        f"{list(want[k])}")
