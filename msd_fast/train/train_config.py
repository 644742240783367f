"""The training configuration as one typed, frozen value: `TrainConfig`, with one field per key of DEFAULTS
(config_keys.py: the defaults, and so the CLI's flags) typed by the validator's SCHEMA (config_schema.py),
plus where a run continues from (`resume`) and which preset it came from (`config_file`).

It is validated once, when it is made (`TrainConfig.from_mapping`), and cannot change afterwards: every part
of training reads the same values. `as_dict()` is its plain form (the checkpoint's "config", config.yaml).
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Union

from .config_keys import DEFAULTS
from .config_schema import SCHEMA, validate_config

_KIND_TYPES = {"int": int, "float": float, "bool": bool, "tristate": Union[bool, str], "choice": str, "str": str,
               "int_list": tuple}
EXTRA_KEYS = ("resume", "config_file")  # keys of a resolved config that are not training settings


def _field(key: str):
    kind, _, _, nullable = SCHEMA[key]
    typ = _KIND_TYPES[kind]
    default = tuple(DEFAULTS[key]) if kind == "int_list" else DEFAULTS[key]
    return key, Optional[typ] if nullable else typ, dataclasses.field(default=default)


class _Methods:
    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], *, custom_model: bool = False,
                     custom_data: bool = False) -> "TrainConfig":
        """Validates a config dict (DEFAULTS' keys, resume, config_file and _sources: where each value came
        from, for the messages) and makes the frozen config; raises ConfigError naming the first bad key."""
        values = {**DEFAULTS, **{k: v for k, v in cfg.items() if k != "_sources"}}
        validate_config({k: v for k, v in values.items() if k not in EXTRA_KEYS}, cfg.get("_sources"),
                        custom_model=custom_model, custom_data=custom_data)
        values["milestones"] = tuple(values["milestones"])
        return cls(**values)

    def as_dict(self, extras: bool = True) -> Dict[str, Any]:
        """The plain form: DEFAULTS' keys (lists as lists), and resume / config_file unless extras=False."""
        out = {k: getattr(self, k) for k in DEFAULTS}
        out["milestones"] = list(out["milestones"])
        if extras:
            out.update({k: getattr(self, k) for k in EXTRA_KEYS})
        return out


TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [_field(k) for k in DEFAULTS] + [("resume", Optional[str], dataclasses.field(default=None)),
                                                    ("config_file", Optional[str], dataclasses.field(default=None))],
    bases=(_Methods,), frozen=True)
TrainConfig.__module__ = __name__  # (make_dataclass takes module= only from Python 3.12)
TrainConfig.__doc__ = __doc__.split("\n\n")[0]
