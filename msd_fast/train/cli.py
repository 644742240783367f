"""`python -m msd_fast.train`: train a multi-exit network (see `--help`; defaults: configs/fashion_mnist_cpu.yaml).

Exit status: 0 done, 1 training diverged or a checkpoint/file could not be written, 2 bad configuration,
data or checkpoint (one line on stderr saying what and where), 130 interrupted by Ctrl-C after saving.
"""
import sys

from ..checkpoint import CheckpointError, CheckpointWriteError
from .config import ConfigError, resolve_config
from ..data import DataError
from ..distributed import shutdown
from .run_dir import RunDirError
from .trainer import Trainer, TrainingDiverged

EXIT_INTERRUPTED = 130


def _say(msg: str) -> None:
    print(f"[msd_fast] {msg}", file=sys.stderr)


def main(argv=None) -> int:
    try:
        cfg = resolve_config(argv)
    except ConfigError as e:
        _say(f"config error: {e}")
        return 2
    trainer = None
    try:
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
    except KeyboardInterrupt:  # a second Ctrl-C: abort without saving
        _say("aborted by a second Ctrl-C; the last checkpoint written before it is intact")
        return EXIT_INTERRUPTED
    except ValueError as e:  # bad settings found while building data or model
        _say(f"error: {e}")
        return 2
    finally:
        if trainer is not None:
            trainer.close()
            shutdown(trainer.dist)
    return EXIT_INTERRUPTED if result.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
