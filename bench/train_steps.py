"""A benchmark and test hook kept out of the library: n training steps of a Trainer with no evaluation or
checkpoints."""
import torch

from msd_fast.train.sums import new_sums

_ORDERS = {}  # id(trainer) -> (epoch, permutation, augmentation generator): one order per epoch, no copy per call


def run_steps(t, n: int) -> None:
    """n optimizer steps of Trainer t on its epoch's order, wrapping around the epoch."""
    if t.sums is None:
        t.sums = new_sums(t.model.num_exits, t.device)
    t.model.train()
    order = _ORDERS.get(id(t))
    if order is None or order[0] != t.epoch:
        order = _ORDERS[id(t)] = (t.epoch, torch.randperm(t.task.train_size, generator=torch.Generator().manual_seed(t.epoch)),
                                  torch.Generator().manual_seed(t.epoch))
    _, perm, aug_gen = order
    for _ in range(n):
        if t.step_in_epoch >= t.steps_per_epoch:
            t.step_in_epoch = 0
        t._step_at(perm, aug_gen)
