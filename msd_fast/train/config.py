"""Training configuration: code defaults < YAML preset (-c) < command-line flags.

Every key of DEFAULTS is a CLI flag (`--key-name`); a YAML file's keys are the flags' defaults; the
resolved config is saved as config.yaml in the run directory and restored by --resume.

One validator (`validate_config`) checks the whole resolved config before anything else happens: types,
ranges, choices, finite numbers, for preset values and flags alike. Errors are `ConfigError`s that name the
key, the value and where it came from (the flag, or the preset file and line).
"""
import argparse
import importlib.resources
import math
import pathlib
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .config_keys import (DEFAULT_PRESET, DEFAULTS, KEYS, RESUME_FLAGS, ConfigError, choices,  # noqa: F401
                          flag_of, validate_config)  # (ConfigError re-exported)


# ------------------------------------------------------------------------------------ YAML presets
def _preset_path(name: str) -> pathlib.Path:
    p = pathlib.Path(name)
    if p.exists():
        return p
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    res = importlib.resources.files("msd_fast.configs") / f"{stem}.yaml"
    if res.is_file():
        return pathlib.Path(str(res))
    available = sorted(q.name[:-5] for q in importlib.resources.files("msd_fast.configs").iterdir()
                       if q.name.endswith(".yaml"))
    raise ConfigError(f"config {name!r} not found (a path, or one of: {', '.join(available)})")


def load_yaml(path: pathlib.Path, what: str = "preset") -> Tuple[Dict[str, Any], Dict[str, str]]:
    """A YAML config file -> (values, key -> "preset FILE, line N")."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path}: cannot be read ({e.strerror if isinstance(e, OSError) else e})") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config {path}{where}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of keys to values, got a {type(data).__name__}")
    unknown = sorted(str(k) for k in set(data) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"config {path}: unknown keys {unknown}; known keys: {sorted(DEFAULTS)}")
    lines: Dict[Any, int] = {}
    for k, _ in (node.value if isinstance(node, yaml.MappingNode) else ()):
        if k.value in lines:  # safe_load keeps the last silently; a preset must say one thing per key
            raise ConfigError(f"config {path}, line {k.start_mark.line + 1}: key {k.value!r} given twice (first on "
                              f"line {lines[k.value]})")
        lines[k.value] = k.start_mark.line + 1
    return data, {k: f"{what} {path}, line {lines.get(k, '?')}" for k in data}


# ------------------------------------------------------------------------------------- the CLI parser
def _parse_bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def _tristate(v: str):
    return "auto" if v == "auto" else _parse_bool(v)


def _finite_float(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {v!r}")
    return x


def build_parser(shown: Optional[Dict[str, Any]] = None, preset: Optional[str] = None) -> argparse.ArgumentParser:
    """The CLI parser; `shown` are the defaults --help prints (the preset's values when one is loaded)."""
    from .methods import METHODS

    shown = shown or DEFAULTS
    p = argparse.ArgumentParser(prog="python -m msd_fast.train",
                                description="Train a multi-exit network with MSD / BYOT / joint / plain training. "
                                f"Defaults shown are {'the preset ' + repr(preset) + chr(39) + 's' if preset else 'the code defaults'}.")
    p.add_argument("-c", "--config", default=None,
                   help=f"YAML preset: a path or a name under msd_fast/configs/ (default: {DEFAULT_PRESET})")
    p.add_argument("--resume", default=None, help="run directory (or checkpoint file) to continue; flags allowed "
                   f"with it: {', '.join(flag_of(k) for k in RESUME_FLAGS)} (others must match the run)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar or progress lines")
    types = {"tristate": _tristate, "bool": _parse_bool, "int_list": int, "float": _finite_float, "int": int}
    for key, default in DEFAULTS.items():
        if key == "progress":
            continue
        m = KEYS[key]
        text = m["help"]
        if key == "method":
            text = "; ".join(f"{x.name}: {x.help}" for x in METHODS.values())
        kw: Dict[str, Any] = dict(default=None, help=f"{text + '; ' if text else ''}default: {shown.get(key, default)!r}")
        if m["kind"] == "choice":
            kw["choices"] = choices(key)
        if m["kind"] in types:
            kw["type"] = types[m["kind"]]
        if m["kind"] == "int_list":
            kw["nargs"] = "*"
        p.add_argument(flag_of(key), **kw)
    return p


def resolve_config(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Parses the command line, merges defaults < preset (or the resumed run's config) < flags, and
    validates the result. Raises ConfigError; nothing is created on disk."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", default=None)
    pre.add_argument("--resume", default=None)
    known, _ = pre.parse_known_args(argv)
    shown, preset = dict(DEFAULTS), None
    if not known.resume:  # --help shows the preset's values as the defaults
        try:
            preset = known.config or DEFAULT_PRESET
            shown.update(load_yaml(_preset_path(preset))[0])
        except ConfigError:
            preset = None  # reported below, after argparse has had its say
    args = build_parser(shown, preset).parse_args(argv)
    cfg = dict(DEFAULTS)
    sources = {k: "the code default" for k in DEFAULTS}
    flags = {key: getattr(args, key) for key in DEFAULTS if getattr(args, key, None) is not None}
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own config; -c/--config cannot be given with it")
        values, src = resumed_config(args.resume)
        cfg.update(values)
        sources.update(src)
        refused = [k for k, v in flags.items() if k not in RESUME_FLAGS and v != cfg.get(k)]
        if refused:
            k = refused[0]
            raise ConfigError(f"--resume: {flag_of(k)} {flags[k]!r} would change the run (it has {k} = {cfg.get(k)!r}); "
                              f"only {', '.join(flag_of(x) for x in RESUME_FLAGS)} may change when resuming. "
                              f"Start a new run to change {flag_of(k)}.")
    else:
        values, src = load_yaml(_preset_path(args.config or DEFAULT_PRESET))
        cfg.update(values)
        sources.update(src)
    for key, v in flags.items():
        cfg[key] = v
        sources[key] = f"flag {flag_of(key)}"
    cfg["resume"] = args.resume
    cfg["config_file"] = args.config or (None if args.resume else DEFAULT_PRESET)
    cfg["_sources"] = sources
    validate_config({k: v for k, v in cfg.items() if k != "_sources"}, sources)
    return cfg


def resumed_config(resume: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The config a resumed run continues with: the one stored in its checkpoint (config.yaml is a copy for
    people; where it was edited, a note says what differs and that the checkpoint's is used; only the flags a
    resume may change, RESUME_FLAGS, are taken from it), or config.yaml when the run stopped before its first
    checkpoint. Raises ConfigError, or CheckpointError for a bad
    checkpoint."""
    from ..checkpoint import load_checkpoint

    p = pathlib.Path(resume)
    if not p.exists():
        raise ConfigError(f"--resume {resume}: no such file or directory")
    run_cfg = (p if p.is_dir() else p.parent) / "config.yaml"
    ckpt_path = p / "last.pt" if p.is_dir() else p
    if not ckpt_path.exists():
        if not run_cfg.exists():
            raise ConfigError(f"--resume {resume}: no checkpoint and no config.yaml there; is it a msd_fast run "
                              f"directory?")
        return load_yaml(run_cfg, what="run config")
    stored = load_checkpoint(ckpt_path)["config"]
    unknown = sorted(str(k) for k in set(stored) - set(DEFAULTS) - {"resume", "config_file"})
    if unknown:
        raise ConfigError(f"--resume {resume}: the config stored in {ckpt_path} has keys this msd_fast does not "
                          f"know: {unknown}")
    values = {k: stored[k] for k in DEFAULTS if k in stored}
    if run_cfg.exists():
        try:
            copy, _ = load_yaml(run_cfg, what="run config")
        except ConfigError as e:
            copy = {}
            print(f"[msd_fast] note: {e}; resuming with the config stored in {ckpt_path}")
        # The flags a resume may change are recorded in config.yaml when they change (run_dir.resumed_run_dir)
        # and may not have reached a checkpoint yet: those come from the copy, everything else from the checkpoint.
        values.update({k: copy[k] for k in RESUME_FLAGS if k in copy})
        edited = [k for k in values if k in copy and copy[k] != values[k]]
        if edited:
            print(f"[msd_fast] note: {run_cfg} differs from the config stored in {ckpt_path} ("
                  + ", ".join(f"{k}: {copy[k]!r} there, {values[k]!r} in the checkpoint" for k in edited[:4])
                  + "); resuming with the checkpoint's (config.yaml is rewritten from it)")
    return values, {k: f"the config stored in {ckpt_path}" for k in values}


def save_config(cfg: Dict[str, Any], path: pathlib.Path) -> None:
    keep = {k: cfg[k] for k in DEFAULTS}
    path.write_text(yaml.safe_dump(keep, sort_keys=True))
