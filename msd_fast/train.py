"""`python -m msd_fast.train`: train a multi-exit network (see `--help`; defaults: configs/fashion_mnist_cpu.yaml)."""
import sys

from .config import resolve_config
from .data import DataError
from .distributed import shutdown
from .trainer import Trainer, TrainingDiverged


def main(argv=None) -> int:
    cfg = resolve_config(argv)
    try:
        trainer = Trainer(cfg)
    except DataError as e:
        print(f"[msd_fast] data error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # bad settings found while building data or model
        print(f"[msd_fast] error: {e}", file=sys.stderr)
        return 2
    try:
        trainer.fit()
    except TrainingDiverged as e:
        print(f"[msd_fast] {e}", file=sys.stderr)
        return 1
    finally:
        shutdown(trainer.dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
