"""The Python API's argument checks: Trainer(cfg, data, model) by type, each refused with what to pass."""
import pathlib

import torch

from ..data import Dataset


def check_trainer_args(cfg, data, model) -> None:
    """Trainer's arguments by type, each refused with what to pass instead."""
    if cfg is not None and not isinstance(cfg, dict):
        hint = (": to train from a YAML preset, build the config with msd_fast.train.resolve_config(['-c', "
                f"{cfg!r}]) or run `python -m msd_fast.train -c {cfg}`") if isinstance(cfg, (str, pathlib.Path)) else ""
        raise TypeError(f"cfg: expected a config dict (keys of msd_fast.train.DEFAULTS) or None, got "
                        f"{type(cfg).__name__}{hint}")
    if data is not None and not isinstance(data, Dataset):
        raise TypeError(f"data: expected a msd_fast Dataset, got {type(data).__name__}; make one with "
                        f"msd_fast.data.from_tensors(x_train, y_train, ...) or from_torch(dataset)")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a multi-exit nn.Module (msd_fast.models), got {type(model).__name__}")
