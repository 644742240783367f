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
import tempfile

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
    p = pathlib.Path(out_dir).absolute()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"--out-dir {out_dir}: {probe} is a file, not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".msd_fast-write-test-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RunDirError(f"--out-dir {out_dir}: cannot create files in {probe} ({_why(e)})") from None


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
