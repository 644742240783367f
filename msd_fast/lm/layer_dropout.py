"""LayerSkip's layer dropout on an LMExits trunk, the way torchtune's early-exit recipe defines it: in training,
each sequence of the batch skips decoder layer l (its output is its input) with probability

    p_l = p_max * S(l),   S over l = 0 .. L-1 (torchtune's scale types; 0 at the first layer, 1 at the last):
    uniform 1, exp 2^(l/(L-1)) - 1, linear l/(L-1), log ln(l+1)/ln(L), sin sin(pi/2 l/(L-1)),
    sigmoid 1/(1 + e^(-10 (l/(L-1) - 1/2))).

Shapes stay fixed (torch.compile, CUDA graphs): every layer runs on every sequence and a skipped one's output is
replaced by its input (`torch.where`), so the kept sequences' values and every gradient equal those of running
the layer on the kept sequences alone (no compute is saved). The draws are a hash of (seed, optimizer step,
layer, row) computed on the device from a step counter the task writes before each step: no generator state,
no host sync, and a resumed run draws what the uninterrupted one would have. Off in eval mode."""
import math
from typing import List

import torch

from .names import LAYER_DROPOUT_SCALES

_M = 0x7FFFFFFF  # hashing in 31 bits: every product of two 31-bit values fits in int64


def layer_scale(kind: str, layer: int, num_layers: int) -> float:
    """S(l) of the module docstring."""
    if kind not in LAYER_DROPOUT_SCALES:
        raise ValueError(f"layer_dropout_scale must be one of {', '.join(LAYER_DROPOUT_SCALES)}, got {kind!r}")
    if num_layers < 2:
        return 1.0
    t = layer / (num_layers - 1)
    return {"uniform": 1.0, "exp": math.exp(t * math.log(2)) - 1, "linear": t,
            "log": math.log(layer + 1) / math.log(num_layers), "sin": math.sin(0.5 * math.pi * t),
            "sigmoid": 1 / (1 + math.exp(-10 * (t - 0.5)))}[kind]


def _mix(h: torch.Tensor) -> torch.Tensor:
    h = (h * 1103515245 + 12345) & _M
    h = h ^ (h >> 15)
    h = (h * 747796405 + 2891336453 % _M) & _M
    return h ^ (h >> 13)


def uniform_draws(seed: int, step: torch.Tensor, layer: int, rows: int) -> torch.Tensor:
    """[rows] floats in [0, 1) that depend only on (seed, step, layer, row); step: an int64 device scalar."""
    r = torch.arange(rows, device=step.device, dtype=torch.int64)
    h = _mix(_mix(_mix(torch.full_like(r, seed & _M)) ^ (step & _M)) ^ layer)
    return _mix(h ^ r).double() / (_M + 1)


class LayerDropout:
    """Installs layer dropout on `model` (an LMExits): forward hooks on its decoder layers. `set_step(step)`
    before each optimizer step; `remove()` takes the hooks off."""

    def __init__(self, model, p_max: float, scale: str = "exp", seed: int = 0):
        if isinstance(p_max, bool) or not isinstance(p_max, (int, float)) or not 0.0 <= p_max < 1.0:
            raise ValueError(f"layer_dropout must be a number in [0, 1), got {p_max!r}")
        L = model.num_layers
        self.probs: List[float] = [float(p_max) * layer_scale(scale, j, L) for j in range(L)]
        self.seed, self.model = int(seed), model
        self.step = torch.zeros((), dtype=torch.int64, device=next(model.parameters()).device)
        self.handles = [layer.register_forward_hook(self._hook(j), with_kwargs=True)
                        for j, layer in enumerate(model.trunk_layers) if self.probs[j] > 0]

    def set_step(self, step: int) -> None:
        self.step.fill_(step)  # a device write: no host sync, and the CUDA graph reads the same tensor

    def _hook(self, j: int):
        def hook(module, args, kwargs, out):
            if not module.training:
                return out
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            keep = uniform_draws(self.seed, self.step.to(x.device), j, x.shape[0]) >= self.probs[j]
            y = torch.where(keep.view(-1, *([1] * (x.dim() - 1))), y, x)
            return (y, *out[1:]) if isinstance(out, tuple) else y
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
