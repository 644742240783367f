"""Training: the configuration (config), the loop (trainer), methods as criteria (methods), device and
precision policy (speed), optimizer and schedule (optim), run directories (run_dir), logs and results
(run_log), and the command line (cli; `python -m msd_fast.train`)."""
from .cli import main
from .config import DEFAULTS, ConfigError, resolve_config
from .trainer import Trainer, TrainingDiverged

__all__ = ["Trainer", "TrainingDiverged", "main", "resolve_config", "ConfigError", "DEFAULTS"]
