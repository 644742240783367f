"""`python -m msd_fast.train`: train a multi-exit network (see `--help`; defaults: configs/fashion_mnist_cpu.yaml).

Exit status: 0 done, 1 training diverged or a checkpoint/file could not be written, 2 bad configuration,
data or checkpoint (one line on stderr saying what and where), 130 interrupted by Ctrl-C after saving.
"""
import signal
import sys

from ..checkpoint import CheckpointError, CheckpointWriteError
from .config import ConfigError, resolve_config
from ..data import DataError
from ..distributed import shutdown
from ..interrupt import EXIT_INTERRUPTED, command_started
from .run_dir import RunDirError
from .trainer import Trainer, TrainingDiverged


def _say(msg: str) -> None:
    print(f"[msd_fast] {msg}", file=sys.stderr)


def _ignore_sigint() -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to install
        pass


def _interrupt_message(trainer) -> str:
    """What a Ctrl-C that reached the top left behind, true at whatever moment it came."""
    if trainer is None:
        return "interrupted by Ctrl-C before training started; nothing was written"
    second = "aborted by a second Ctrl-C" if trainer._stop_requested else "interrupted by Ctrl-C"
    last = trainer.run_dir / "last.pt"
    if last.exists():
        return f"{second}; the last checkpoint written before it is intact: {last} (continue with --resume {trainer.run_dir})"
    return f"{second}; no checkpoint had been written, so the run left nothing behind"


def main(argv=None) -> int:
    command_started()
    trainer, result = None, None
    try:
        cfg = resolve_config(argv)
        trainer = Trainer(cfg)
        result = trainer.fit()
    except ConfigError as e:
        _say(f"config error: {e}")
        return 2
    except DataError as e:
        _say(f"data error: {e}")
        return 2
    except (CheckpointError, FileNotFoundError, RunDirError) as e:
        _say(f"error: {e}")
        return 2
    except CheckpointWriteError as e:
        _say(f"error: {e.strerror}")
        return 1
    except TrainingDiverged as e:
        _say(str(e))
        return 1
    except OSError as e:  # a log or result file could not be written (disk full, permissions)
        _say(f"error: could not write {e.filename or 'a file'}: {e.strerror or e}")
        return 1
    except KeyboardInterrupt:  # Trainer has already removed a run directory that holds no checkpoint
        _say(_interrupt_message(trainer))
        return EXIT_INTERRUPTED
    except ValueError as e:  # bad settings found while building data or model
        _say(f"error: {e}")
        return 2
    finally:
        if trainer is not None:
            trainer.close()
            shutdown(trainer.dist)
    return EXIT_INTERRUPTED if result.get("interrupted") else 0


def run_and_exit(argv=None) -> None:
    """The process entry point: main(), then exit; after a Ctrl-C the exit itself (atexit hooks, worker
    shutdown) ignores further Ctrl-Cs, so the process ends with status 130 and no traceback."""
    rc = main(argv)
    if rc == EXIT_INTERRUPTED:
        _ignore_sigint()
    sys.exit(rc)


if __name__ == "__main__":
    run_and_exit()
