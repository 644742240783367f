"""Running training metrics kept on the device (no host sync per step): loss, per-exit terms, per-exit
correct counts, sample count and non-finite losses, as float64 tensors in a dict (checkpointed as is)."""
from typing import Any, Dict

import torch

from ..distributed import DistInfo, all_reduce_sum

Sums = Dict[str, torch.Tensor]


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite; the last good checkpoint is kept."""


def check_finite(sums: Sums, epoch: int, step: int, last_checkpoint) -> None:
    """Raises TrainingDiverged when a non-finite loss was summed (one host sync: call at log points)."""
    if sums["nonfinite"].item() > 0:
        raise TrainingDiverged(
            f"the loss became non-finite (NaN/inf) in epoch {epoch + 1} before step {step}; stopping. "
            + (f"The last good checkpoint is kept at {last_checkpoint}. " if last_checkpoint.exists() else
               "No checkpoint had been written yet, so the run leaves nothing behind. ")
            + "Try a lower --lr, --amp none, or a smaller --beta-begin.")


def new_sums(num_exits: int, device: torch.device) -> Sums:
    z = lambda *s: torch.zeros(*s, device=device, dtype=torch.float64)  # noqa: E731
    return {"loss": z(()), "terms": z(3 * num_exits - 1), "correct": z(num_exits), "count": z(()), "nonfinite": z(())}


def accumulate(sums: Sums, loss: torch.Tensor, terms: torch.Tensor, correct: torch.Tensor, n: int) -> None:
    sums["loss"] += loss.detach() * n
    sums["terms"] += terms * n
    sums["correct"] += correct
    sums["count"] += n
    sums["nonfinite"] += (~torch.isfinite(loss.detach())).float()


def epoch_means(sums: Sums, num_exits: int, dist: DistInfo, train_acc: bool = True) -> Dict[str, Any]:
    """Per-epoch training metrics summed over ranks (one host sync); train_acc: whether correct counts exist."""
    s = {k: all_reduce_sum(v.clone(), dist) for k, v in sums.items()}
    cnt = s["count"].item()
    terms, n = (s["terms"] / cnt).tolist(), num_exits
    out = {"train_loss": (s["loss"] / cnt).item(), "train_ce": terms[:n], "train_kd": terms[n:2 * n],
           "train_feat": terms[2 * n:]}
    if train_acc:
        out["train_acc"] = (s["correct"] * 100.0 / cnt).tolist()
    return out
