"""The input preprocessing a model was trained with, travelling with it: every checkpoint and export holds the
training data's per-channel mean/std and image size, load_model / load_exported attach it to the model
(`preprocess_of(model)`), and EarlyExit / ExportableEarlyExit apply it to raw images, so a deployed model is
fed as it was trained.

Raw images are what the data readers hold: uint8 in 0..255, or floats in 0..1; the model sees
(x / 255 - mean) / std (uint8) or (x - mean) / std (float), in float32.
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

ATTR = "msd_preprocess"  # the attribute load_model / load_exported set on the model


@dataclass(frozen=True)
class Preprocess:
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    image_size: Optional[Tuple[int, int]] = None   # (H, W) the model was trained on; None: not recorded

    def __post_init__(self):
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(f"preprocess: mean and std need one value per channel, got {self.mean} and {self.std}")
        if not all(math.isfinite(m) for m in self.mean) or not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError(f"preprocess: mean must be finite and std finite and > 0, got {self.mean}, {self.std}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    def __call__(self, x: Tensor) -> Tensor:
        """Raw images [B, C, H, W] (uint8 0..255 or float 0..1) -> the normalised float32 input of the model."""
        from ..data import normalize

        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"input: expected raw images [B, {self.channels}, H, W] (uint8 0..255 or float 0..1), "
                             f"got {getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise ValueError(f"input: raw images are uint8 (0..255) or floating (0..1), got {x.dtype}")
        if self.image_size is not None and tuple(x.shape[2:]) != tuple(self.image_size):
            raise ValueError(f"input: the model was trained on {self.image_size[0]}x{self.image_size[1]} images, "
                             f"got {x.shape[2]}x{x.shape[3]}")
        return normalize(x, self.mean, self.std)

    def as_dict(self) -> Dict[str, Any]:
        return {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std],
                "image_size": list(self.image_size) if self.image_size is not None else None}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Preprocess":
        """From a checkpoint's or model.json's "preprocess" entry; a bad entry raises one line naming `where`."""
        try:
            size = d.get("image_size")
            return cls(tuple(float(m) for m in d["mean"]), tuple(float(s) for s in d["std"]),
                       tuple(int(v) for v in size) if size is not None else None)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: its 'preprocess' entry is not valid ({e})") from None


def preprocess_of(model) -> Optional[Preprocess]:
    """The preprocessing attached to a loaded model, or None (a model built in code: give it yourself)."""
    return getattr(model, ATTR, None)


def attach(model, pre: Optional[Preprocess]):
    if pre is not None:
        setattr(model, ATTR, pre)
    return model


def from_checkpoint(ckpt: Dict[str, Any], where: str) -> Optional[Preprocess]:
    """The checkpoint's preprocessing; for a checkpoint written before it was recorded, the dataset table's
    statistics when the run used a named dataset (None otherwise)."""
    if ckpt.get("preprocess") is not None:
        return Preprocess.from_dict(ckpt["preprocess"], where)
    from ..data.datasets import DATASET_TABLE

    info = DATASET_TABLE.get(ckpt.get("dataset"))
    return Preprocess(tuple(info.mean), tuple(info.std)) if info is not None else None
