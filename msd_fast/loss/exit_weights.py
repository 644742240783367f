"""Per-exit loss weights: loss = sum_n e_n * (exit n's CE, KD and hint terms). One declaration of the depth
schedules (uniform and the depth-weighted ones of early-exit LM training), of the curricula that switch
exits on and off during training, and of what a weight may be."""
import math
from typing import List, Optional, Sequence

import torch


def check_exit_weights(exit_weights, n: int, device: torch.device, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The weights as a [n] tensor of `dtype` on `device`, or None for the unweighted loss (None or all ones).
    A tensor is taken as it is, unread (a schedule may change it in place between steps; no host sync)."""
    if exit_weights is None:
        return None
    if isinstance(exit_weights, torch.Tensor):
        t = exit_weights
        if t.shape != (n,) or not t.is_floating_point() or t.device != device or t.requires_grad:
            raise ValueError(f"exit_weights: expected a floating tensor of shape [{n}] on {device} that does not "
                             f"require grad (no gradient flows to the weights), got {t.dtype} {list(t.shape)} on "
                             f"{t.device}{' requiring grad' if t.requires_grad else ''}")
        return t.to(dtype)
    try:
        ew = [float(x) for x in exit_weights]
    except (TypeError, ValueError):
        raise TypeError(f"exit_weights: expected None, {n} numbers or a tensor [{n}], got {exit_weights!r}") from None
    if len(ew) != n or not all(math.isfinite(x) and x >= 0 for x in ew):
        raise ValueError(f"exit_weights: expected {n} finite numbers >= 0 (one per exit), got {exit_weights!r}")
    if all(x == 1.0 for x in ew):
        return None  # the unweighted loss: no extra pass
    return torch.tensor(ew, dtype=dtype, device=device)


def exit_weight_schedule(kind: str, depths: Sequence[int]) -> List[float]:
    """Per-exit loss weights for exits at 1-based layer depths d_n, scaled to sum to N (uniform: all 1):
    uniform, linear_l (d), sum_l (d_1 + ... + d_n), sqrt_l (sqrt d), inv_l (1/d), inv_sqrt_l (1/sqrt d): the
    depth schedules of early-exit LM training (deeper exits weigh more under linear_l / sum_l / sqrt_l,
    shallower under inv_*)."""
    f = {"uniform": lambda d: 1.0, "linear_l": float, "sum_l": None, "sqrt_l": math.sqrt, "inv_l": lambda d: 1.0 / d,
         "inv_sqrt_l": lambda d: 1.0 / math.sqrt(d)}
    if kind not in f:
        raise ValueError(f"exit weight schedule must be one of {', '.join(f)}, got {kind!r}")
    if not depths or any(int(d) < 1 for d in depths):
        raise ValueError(f"depths: expected 1-based layer depths >= 1, got {list(depths)}")
    raw = [float(sum(int(x) for x in depths[:n + 1])) for n in range(len(depths))] if kind == "sum_l" else \
        [f[kind](int(d)) for d in depths]
    return [len(raw) * r / sum(raw) for r in raw]


EXIT_WEIGHT_SCHEDULES = ("uniform", "linear_l", "sum_l", "sqrt_l", "inv_l", "inv_sqrt_l")
EXIT_CURRICULA = ("none", "rotational", "gradual")
GRADUAL_FRACTION = 0.5  # gradual: every exit is on by this fraction of training


class ExitCurriculum:
    """Which exits train at each step (LayerSkip's curricula), as 0/1 masks on the exit weights; the last exit
    always trains. none: every exit, always. rotational: one shallower exit per step, in turn (step s: exit
    s mod (N - 1)). gradual: exits switch on from the deepest down; the exit after 0-based layer j (of L)
    switches on at fraction GRADUAL_FRACTION * (L - j) / L of training, so the shallowest last. A switched-
    off exit has weight 0 in its own terms; under MSD it still teaches the others.

    The masks are a few patterns on the device (`weights(k)`), chosen by the host from the step alone
    (`index(step, progress)`), so a resumed run continues the curriculum and a step never syncs."""

    def __init__(self, kind: str, exit_layers: Sequence[int], num_layers: int):
        if kind not in EXIT_CURRICULA:
            raise ValueError(f"exit curriculum must be one of {', '.join(EXIT_CURRICULA)}, got {kind!r}")
        self.kind, self.n = kind, len(exit_layers)
        if kind == "rotational":
            self.masks = [[float(n == k or n == self.n - 1) for n in range(self.n)] for k in range(self.n - 1)]
        elif kind == "gradual":  # pattern k: the k deepest shallower exits on
            self.masks = [[float(n >= self.n - 1 - k) for n in range(self.n)] for k in range(self.n)]
            self.starts = sorted(GRADUAL_FRACTION * (num_layers - j) / num_layers for j in exit_layers[:-1])
        else:
            self.masks = [[1.0] * self.n]

    def index(self, step: int, progress: float) -> int:
        """The pattern of optimizer step `step` (0-based) at `progress` (fraction of the planned training)."""
        if self.kind == "rotational":
            return step % (self.n - 1)
        if self.kind == "gradual":
            return sum(progress >= s for s in self.starts)
        return 0

    def patterns(self, base: Sequence[float], device, dtype=torch.float32) -> torch.Tensor:
        """[patterns, N]: the base weights times each mask."""
        return torch.tensor([[b * m for b, m in zip(base, mask)] for mask in self.masks], dtype=dtype, device=device)
