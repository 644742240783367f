"""Per-exit loss weights: loss = sum_n e_n * (exit n's CE, KD and hint terms). One declaration of the depth
schedules (uniform and the depth-weighted ones of early-exit LM training) and of what a weight may be."""
import math
from typing import List, Optional, Sequence


def check_exit_weights(exit_weights, n: int) -> Optional[List[float]]:
    if exit_weights is None:
        return None
    try:
        ew = [float(x) for x in exit_weights]
    except (TypeError, ValueError):
        raise TypeError(f"exit_weights: expected None or {n} numbers, got {exit_weights!r}") from None
    if len(ew) != n or not all(math.isfinite(x) and x >= 0 for x in ew):
        raise ValueError(f"exit_weights: expected {n} finite numbers >= 0 (one per exit), got {exit_weights!r}")
    return None if all(x == 1.0 for x in ew) else ew  # all ones is the unweighted loss: no extra pass


def exit_weight_schedule(kind: str, depths: Sequence[int]) -> List[float]:
    """Per-exit loss weights for exits at 1-based layer depths d_n, scaled to sum to N (uniform: all 1):
    uniform, linear_l (d), sqrt_l (sqrt d), inv_l (1/d), inv_sqrt_l (1/sqrt d): the depth schedules of early-exit
    LM training (deeper exits weigh more under linear_l / sqrt_l, shallower under inv_*)."""
    f = {"uniform": lambda d: 1.0, "linear_l": float, "sqrt_l": math.sqrt, "inv_l": lambda d: 1.0 / d,
         "inv_sqrt_l": lambda d: 1.0 / math.sqrt(d)}
    if kind not in f:
        raise ValueError(f"exit weight schedule must be one of {', '.join(f)}, got {kind!r}")
    if not depths or any(int(d) < 1 for d in depths):
        raise ValueError(f"depths: expected 1-based layer depths >= 1, got {list(depths)}")
    raw = [f[kind](int(d)) for d in depths]
    return [len(raw) * r / sum(raw) for r in raw]


EXIT_WEIGHT_SCHEDULES = ("uniform", "linear_l", "sqrt_l", "inv_l", "inv_sqrt_l")
