"""Run directories: checked for writability before anything starts, created exclusively, and locked while a
run uses them, so two runs can never write into one directory.

- `check_output_dir(out_dir)`: the output directory (or the nearest folder above it that exists) must be a
  directory we can create files in; checked with a real temp file, nothing left behind.
- `create_run_dir(path)`: exclusive creation: a second run with the same --out-dir and --run-name is refused.
- `RunLock(path)`: an flock on <run>/.lock held for the life of the run (the kernel drops it when the
  process dies, even on kill -9, so a stale lock never blocks a resume).
"""
import errno
import os
import pathlib

from ..files import check_writable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; the exclusive create still applies
    fcntl = None

LOCK_NAME = ".lock"


class RunDirError(RuntimeError):
    """An output or run directory that cannot be used, with what to do about it."""


def _why(e: OSError) -> str:
    return {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
            errno.ENOENT: "no such file or directory"}.get(e.errno, e.strerror or str(e))


def check_output_dir(out_dir) -> None:
    """Raises RunDirError unless out_dir is (or can be created as) a directory we can write in."""
    check_writable(out_dir, "--out-dir", True, RunDirError)


def create_run_dir(path) -> pathlib.Path:
    """Creates the run directory; refuses one that already exists (another run's, or an earlier one)."""
    p = pathlib.Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir()
    except FileExistsError:
        raise RunDirError(f"run directory {p} already exists (another run, or an earlier one): choose another "
                          f"--run-name, or continue that run with --resume {p}") from None
    except OSError as e:
        raise RunDirError(f"cannot create run directory {p} ({_why(e)})") from None
    return p


class RunLock:
    """Exclusive lock on a run directory; `release()` (or process exit) frees it."""

    def __init__(self, run_dir):
        self.path = pathlib.Path(run_dir) / LOCK_NAME
        self._fh = None
        try:
            fh = open(self.path, "a+")
        except OSError as e:
            raise RunDirError(f"cannot lock run directory {self.path.parent} ({_why(e)})") from None
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                fh.close()
                raise RunDirError(f"run directory {self.path.parent} is in use by another running process "
                                  f"(pid {holder}); wait for it to finish or stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor drops the flock
            self._fh = None

    def __del__(self):
        self.release()


def remove_run_dir(path) -> bool:
    """Deletes a run directory this process created (a failed start); True when it is gone."""
    import shutil

    p = pathlib.Path(path)
    shutil.rmtree(p, ignore_errors=True)
    return not p.exists()


# ------------------------------------------------------------------------- a run's directory, whole
def new_run_dir(cfg) -> "tuple":  # cfg: a TrainConfig
    """Creates and locks the directory of a new run and writes its config.yaml: (run_dir, lock)."""
    import time

    from .config import save_config

    name = cfg.run_name or f"{cfg.dataset}-{cfg.model}-{cfg.method}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = create_run_dir(pathlib.Path(cfg.out_dir) / name)
    lock = None
    try:
        lock = RunLock(run_dir)
        save_config(cfg.as_dict(), run_dir / "config.yaml")
    except (OSError, RunDirError) as e:  # a full disk at the start: nothing is left behind
        if lock is not None:
            lock.release()
        remove_run_dir(run_dir)
        why = f"cannot write {run_dir / 'config.yaml'} ({_why(e)})" if isinstance(e, OSError) else str(e)
        raise RunDirError(f"{why}; the new run directory was removed") from None
    return run_dir, lock


def resumed_run_dir(cfg) -> "tuple":
    """Locks the directory of a run to resume, removes temp files of a killed save and records the flags
    that changed (config.RESUME_FLAGS) in its config.yaml: (run_dir, lock, checkpoint path or None when the
    run stopped before its first checkpoint)."""
    from ..checkpoint import remove_stale_temp_files
    from .config import DEFAULTS, RESUME_FLAGS, ConfigError, load_yaml, save_config

    p = pathlib.Path(cfg.resume)
    run_dir = p if p.is_dir() else p.parent
    lock = RunLock(run_dir)
    stale = remove_stale_temp_files(run_dir)
    if stale:
        print(f"[msd_fast] removed temp files of an interrupted save: {', '.join(stale)}")
    try:
        saved, _ = load_yaml(run_dir / "config.yaml", what="run config")
    except ConfigError:  # missing or unreadable: the checkpoint holds the config; the copy is rewritten
        saved = {}
    now = cfg.as_dict()
    changed = {k: (saved.get(k), now[k]) for k in RESUME_FLAGS if saved.get(k) != now[k]}
    if saved and changed:  # (no readable copy: nothing to compare with)
        print("[msd_fast] resuming with " + ", ".join(f"{k} = {new!r} (was {old!r})" for k, (old, new) in changed.items()))
    if any(saved.get(k) != now[k] for k in DEFAULTS):
        save_config(now, run_dir / "config.yaml")
    ckpt = p / "last.pt" if p.is_dir() else p
    if not ckpt.exists() and p.is_dir() and not (p / "best.pt").exists():
        print(f"[msd_fast] {p} has no checkpoint yet (the run stopped before its first one): "
              f"starting it from the beginning with its saved config")
        ckpt = None
    return run_dir, lock, ckpt


def reconcile_best(run_dir: pathlib.Path, last_path: pathlib.Path, best_epoch, epoch: int, step_in_epoch: int) -> None:
    """best.pt must hold the epoch that last.pt names as best. A kill between the two saves of an epoch
    (last.pt is written first) leaves an older best.pt: rewrite it from last.pt when last.pt is that epoch's
    end, else say so."""
    import shutil

    from ..checkpoint import CheckpointError, load_checkpoint

    best_path = run_dir / "best.pt"
    if best_epoch is None or last_path.name != "last.pt":
        return
    try:
        have = load_checkpoint(best_path)["epoch"] if best_path.exists() else None
    except CheckpointError:
        have = None
    if have == best_epoch:
        return
    what = "missing" if have is None else f"from epoch {have}"
    if best_epoch == epoch and step_in_epoch == 0:
        tmp = best_path.with_name(".best.pt.reconcile.tmp")
        shutil.copyfile(last_path, tmp)
        os.replace(tmp, best_path)
        print(f"[msd_fast] best.pt was {what}; the best epoch is {best_epoch}: rewritten from last.pt "
              f"(the run was stopped between its two saves)")
    else:
        print(f"[msd_fast] warning: best.pt is {what} but the best epoch is {best_epoch}; "
              f"it will be rewritten when a better epoch comes")
