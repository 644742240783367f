"""Per-exit loss weights: loss = sum_n e_n * (exit n's CE, KD and hint terms). One declaration of the depth
schedules (uniform and the depth-weighted ones of early-exit LM training), of the curricula that switch
exits on and off during training, and of what a weight may be."""
import itertools
import math
from typing import List, Optional, Sequence, Tuple

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


_SCHEDULES = {  # raw weights from the exits' 1-based depths d_1 < ... < d_N, before scaling to sum to N
    "uniform": lambda d: [1.0] * len(d),
    "linear_l": lambda d: [float(x) for x in d],
    "sum_l": lambda d: list(itertools.accumulate(float(x) for x in d)),
    "sqrt_l": lambda d: [math.sqrt(x) for x in d],
    "inv_l": lambda d: [1.0 / x for x in d],
    "inv_sqrt_l": lambda d: [1.0 / math.sqrt(x) for x in d],
}
EXIT_WEIGHT_SCHEDULES = tuple(_SCHEDULES)


def exit_weight_schedule(kind: str, depths: Sequence[int]) -> List[float]:
    """Per-exit loss weights for exits at 1-based layer depths d_n, scaled to sum to N (uniform: all 1):
    uniform, linear_l (d), sum_l (d_1 + ... + d_n), sqrt_l (sqrt d), inv_l (1/d), inv_sqrt_l (1/sqrt d): the
    depth schedules of early-exit LM training (deeper exits weigh more under linear_l / sum_l / sqrt_l,
    shallower under inv_*)."""
    if kind not in _SCHEDULES:
        raise ValueError(f"exit weight schedule must be one of {', '.join(_SCHEDULES)}, got {kind!r}")
    if not depths or any(int(d) < 1 for d in depths):
        raise ValueError(f"depths: expected 1-based layer depths >= 1, got {list(depths)}")
    raw = _SCHEDULES[kind]([int(d) for d in depths])
    return [len(raw) * r / sum(raw) for r in raw]


EXIT_CURRICULA = ("none", "rotational", "gradual", "warmup_linear", "warmup_cosine")
CURRICULUM_FRACTION = 0.5  # gradual / warmup_*: every exit trains at its full weight from this fraction of training


class ExitCurriculum:
    """Which exits train at each step, and how much, as multipliers on the shallower exits' weights; the last
    exit always trains at its weight. LayerSkip's curricula switch exits on and off: none (every exit, always);
    rotational (one shallower exit per step, in turn: step s trains exit s mod (N - 1)); gradual (from the
    deepest down: the exit after 0-based layer j of L switches on at CURRICULUM_FRACTION * (L - j) / L of
    training, the shallowest last). EE-LLM's warm-ups raise every shallower exit's weight from 0 to its full
    value by CURRICULUM_FRACTION of training: warmup_linear, warmup_cosine (half a cosine). An exit at weight
    0 is not trained by its own terms; under MSD it still teaches the others.

    `at(step, progress)` -> (pattern k, scale a): step `step`'s weights are base_last + a * base_early * mask_k
    (`patterns`). The host picks them from the step alone, so a resumed run continues the curriculum, and the
    task writes them to a device tensor without a host sync."""

    def __init__(self, kind: str, exit_layers: Sequence[int], num_layers: int):
        if kind not in EXIT_CURRICULA:
            raise ValueError(f"exit curriculum must be one of {', '.join(EXIT_CURRICULA)}, got {kind!r}")
        self.kind, self.n = kind, len(exit_layers)
        if kind == "rotational":
            self.masks = [[float(n == k or n == self.n - 1) for n in range(self.n)] for k in range(self.n - 1)]
        elif kind == "gradual":  # pattern k: the k deepest shallower exits on
            self.masks = [[float(n >= self.n - 1 - k) for n in range(self.n)] for k in range(self.n)]
            self.starts = sorted(CURRICULUM_FRACTION * (num_layers - j) / num_layers for j in exit_layers[:-1])
        else:
            self.masks = [[1.0] * self.n]

    def at(self, step: int, progress: float) -> Tuple[int, float]:
        """(pattern, scale of the shallower exits) of optimizer step `step` (0-based) at `progress` (fraction
        of the planned training)."""
        if self.kind == "rotational":
            return step % (self.n - 1), 1.0
        if self.kind == "gradual":
            return sum(progress >= s for s in self.starts), 1.0
        ramp = min(1.0, max(0.0, progress) / CURRICULUM_FRACTION)
        if self.kind == "warmup_linear":
            return 0, ramp
        if self.kind == "warmup_cosine":
            return 0, 0.5 * (1.0 - math.cos(math.pi * ramp))
        return 0, 1.0

    def patterns(self, base: Sequence[float], device, dtype=torch.float32) -> torch.Tensor:
        """[patterns, N]: the base weights times each mask."""
        return torch.tensor([[b * m for b, m in zip(base, mask)] for mask in self.masks], dtype=dtype, device=device)

    def parts(self, base: Sequence[float], device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the last exit's part [N], the shallower exits' part of each pattern [patterns, N]) on `device`:
        the weights of `at(...) = (k, a)` are last + a * shallower[k], one op."""
        pat = self.patterns(base, "cpu")
        last, shallower = torch.zeros_like(pat[0]), pat.clone()
        last[-1], shallower[:, -1] = pat[0, -1], 0.0
        return last.to(device), shallower.to(device)
