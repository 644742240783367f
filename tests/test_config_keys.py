"""Each training-config key is declared once (a TrainConfig field, config_keys.py); the rest reads it."""
import ast
import dataclasses
import pathlib
import typing

import pytest

from msd_fast.train.config import build_parser
from msd_fast.train.config_keys import DEFAULTS, KEYS, RESUME_FLAGS, TrainConfig, flag_of

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_config_is_a_real_frozen_typed_dataclass_that_hashes():
    cfg = TrainConfig.from_mapping({"exit_layers": [1, 3], "task": "lm", "dataset": "python-stdlib",
                                    "model": "llama-tiny", "milestones": [2]})
    assert cfg.exit_layers == (1, 3) and cfg.milestones == (2,) and hash(cfg) == hash(dataclasses.replace(cfg))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    hints = typing.get_type_hints(TrainConfig)
    assert hints["exit_layers"] == typing.Tuple[int, ...] and hints["lr"] is float
    assert hints["val_size"] == typing.Optional[int] and set(KEYS) <= set(hints)
    plain = cfg.as_dict()
    assert plain["exit_layers"] == [1, 3] and TrainConfig.from_mapping(plain) == cfg  # the checkpoint form


def test_every_key_is_a_flag_with_its_help_and_choices():
    p = build_parser()
    flags = {a.dest: a for a in p._actions}
    for name, m in KEYS.items():
        a = flags[name]
        assert flag_of(name) in a.option_strings or name == "progress"
        if m["choices"] and name != "method":
            assert tuple(a.choices) == tuple(m["choices"])
        if m["help"]:
            assert a.help.startswith(m["help"][:40])
    assert set(RESUME_FLAGS) == {"epochs", "max_steps", "progress", "tensorboard", "log_interval", "num_threads",
                                 "eval_batch_size", "data_dir"}
    assert DEFAULTS["exit_layers"] == [] and DEFAULTS["alpha"] == TrainConfig.alpha


def test_no_module_declares_the_keys_a_second_time():
    """A dict literal naming five or more config keys outside config_keys.py would be a second table of them."""
    names, found = set(KEYS), []
    for path in sorted((ROOT / "msd_fast").rglob("*.py")):
        if path.name == "config_keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                if len(keys & names) >= 5:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, found
