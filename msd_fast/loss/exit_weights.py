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


def exit_weight_schedule(kind: str, depths: Sequence[int], exit_scale: float = 1.0) -> List[float]:
    """Per-exit loss weights for exits at 1-based layer depths d_n, scaled to sum to N (uniform: all 1):
    uniform, linear_l (d), sum_l (d_1 + ... + d_n), sqrt_l (sqrt d), inv_l (1/d), inv_sqrt_l (1/sqrt d): the
    depth schedules of early-exit LM training (deeper exits weigh more under linear_l / sum_l / sqrt_l,
    shallower under inv_*). exit_scale: torchtune's e_scale, a factor on every exit's raw weight but the last
    one's, before the scaling. torchtune's weights sum to 1: at alpha 0 its loss is ours / N."""
    if kind not in _SCHEDULES:
        raise ValueError(f"exit weight schedule must be one of {', '.join(_SCHEDULES)}, got {kind!r}")
    if not depths or any(int(d) < 1 for d in depths):
        raise ValueError(f"depths: expected 1-based layer depths >= 1, got {list(depths)}")
    if isinstance(exit_scale, bool) or not isinstance(exit_scale, (int, float)) or not (
            math.isfinite(exit_scale) and exit_scale >= 0):
        raise ValueError(f"exit_scale must be a finite number >= 0, got {exit_scale!r}")
    raw = _SCHEDULES[kind]([int(d) for d in depths])
    raw = [r * exit_scale for r in raw[:-1]] + raw[-1:]
    return [len(raw) * r / sum(raw) for r in raw]


EXIT_CURRICULA = ("none", "rotational", "gradual", "round_robin", "warmup_linear", "warmup_cosine")
RENORMALISED = ("rotational", "gradual")  # torchtune's: the weights are the schedule over the exits that are on
CURRICULUM_FRACTION = 0.5  # gradual / warmup_*: every exit trains at its full weight from this fraction of training


class ExitCurriculum:
    """Which exits train at each step, and how much; the last exit always trains. LayerSkip's curricula as
    torchtune's early-exit recipe defines them (`rotational`, `gradual`: tested against a transcription of its
    definitions), ours, and EE-LLM's:

    - none: every exit, always, at its schedule weight.
    - rotational (torchtune's): a per-layer mask, True at the exits' layers, rolled by one layer per step: at
      step s the exit after 0-based layer j of L is on when layer (j - s) mod L has an exit.
    - gradual (torchtune's): from the deepest down, the exit after layer j switches on at
      CURRICULUM_FRACTION * (L - j) / L of training, the shallowest last.
    - Under both, as in torchtune, the weights are the schedule over the exits that are on (sum_l's running
      sum included), scaled to sum to N: N times torchtune's, which sum to 1.
    - round_robin (ours): one shallower exit per step, in turn (step s trains exit s mod (N - 1)), at the
      schedule's fixed weights.
    - warmup_linear, warmup_cosine (EE-LLM's): every shallower exit's weight rises from 0 to its full value by
      CURRICULUM_FRACTION of training.

    An exit at weight 0 is not trained by its own terms; under MSD it still teaches the others.
    `at(step, progress)` -> (pattern k, scale a): the weights are fixed + a * varying[k] (`parts`). The host
    picks them from the step alone, so a resumed run continues the curriculum, and the task writes them to a
    device tensor without a host sync."""

    def __init__(self, kind: str, exit_layers: Sequence[int], num_layers: int):
        if kind not in EXIT_CURRICULA:
            raise ValueError(f"exit curriculum must be one of {', '.join(EXIT_CURRICULA)}, got {kind!r}")
        self.kind, self.n, self.layers = kind, len(exit_layers), list(exit_layers)
        n, has = self.n, set(exit_layers)
        if kind == "round_robin":
            self.masks = [[float(i == k or i == n - 1) for i in range(n)] for k in range(n - 1)]
        elif kind == "rotational":
            self.masks = [[float((j - s) % num_layers in has or i == n - 1) for i, j in enumerate(exit_layers)]
                          for s in range(num_layers)]
            self.period = num_layers
        elif kind == "gradual":  # pattern k: the k deepest shallower exits on
            self.masks = [[float(i >= n - 1 - k) for i in range(n)] for k in range(n)]
            self.starts = sorted(CURRICULUM_FRACTION * (num_layers - j) / num_layers for j in exit_layers[:-1])
        else:
            self.masks = [[1.0] * n]

    def at(self, step: int, progress: float) -> Tuple[int, float]:
        """(pattern, scale) of optimizer step `step` (0-based) at `progress` (fraction of the planned training)."""
        if self.kind == "round_robin":
            return step % (self.n - 1), 1.0
        if self.kind == "rotational":
            return step % self.period, 1.0
        if self.kind == "gradual":
            return sum(progress >= s for s in self.starts), 1.0
        ramp = min(1.0, max(0.0, progress) / CURRICULUM_FRACTION)
        if self.kind == "warmup_linear":
            return 0, ramp
        if self.kind == "warmup_cosine":
            return 0, 0.5 * (1.0 - math.cos(math.pi * ramp))
        return 0, 1.0

    def weights(self, schedule: str, exit_scale: float = 1.0) -> List[List[float]]:
        """[patterns][N]: each pattern's weights at scale 1: the schedule over the exits that are on, scaled to
        sum to N (rotational, gradual), or the schedule's weights times the mask (the others)."""
        depths = [j + 1 for j in self.layers]
        base = exit_weight_schedule(schedule, depths, exit_scale)
        if self.kind not in RENORMALISED:
            return [[b * m for b, m in zip(base, mask)] for mask in self.masks]
        out = []
        for mask in self.masks:
            on = [i for i in range(self.n) if mask[i]]
            w = exit_weight_schedule(schedule, [depths[i] for i in on], exit_scale)
            row = [0.0] * self.n
            for i, x in zip(on, w):
                row[i] = x * self.n / len(on)
            out.append(row)
        return out

    def parts(self, schedule: str, exit_scale: float, device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(fixed [N], varying [patterns, N]) on `device`: the weights of `at(...) = (k, a)` are
        fixed + a * varying[k], one op. The warm-ups scale the shallower exits only, so the last exit's weight
        is the fixed part; elsewhere every weight is the pattern's."""
        pat = torch.tensor(self.weights(schedule, exit_scale), dtype=torch.float32)
        fixed = torch.zeros_like(pat[0])
        if self.kind in ("warmup_linear", "warmup_cosine"):
            fixed[-1], pat[:, -1] = pat[0, -1], 0.0
        return fixed.to(device), pat.to(device)
