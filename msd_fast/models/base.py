"""What every multi-exit model shares: the output type, the staged forward that early exit needs,
and cost accounting measured with torch.utils.flop_counter on the real modules."""
from typing import Dict, List, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


class MultiExitOutput(NamedTuple):
    """Logits [B, C] and pre-FC features [B, D] of every exit, shallow to deep."""
    logits: List[Tensor]
    features: List[Tensor]


class MultiExitNet(nn.Module):
    """A multi-exit network as a sequence of stages: stage k (k = 0..N-1) advances the trunk state and
    exit head k turns that state into (logits, feature). `forward(x, upto=k)` stops after exit k, so a
    deployment can stop computing once a sample has left (msd_fast.inference)."""

    num_exits: int
    num_classes: int

    def stage(self, k: int, state):
        raise NotImplementedError

    def head(self, k: int, state):
        raise NotImplementedError

    def forward(self, x: Tensor, upto: Optional[int] = None, last_only: bool = False) -> MultiExitOutput:
        """Exits 1..upto (default all). last_only=True computes the trunk and only the final exit's head
        (single-exit "plain" training), returning one-element lists."""
        upto = self.num_exits if upto is None else upto
        if not 1 <= upto <= self.num_exits:
            raise ValueError(f"upto must be in [1, {self.num_exits}], got {upto}")
        logits, feats = [], []
        state = x
        for k in range(upto):
            state = self.stage(k, state)
            if last_only and k < upto - 1:
                continue
            z, f = self.head(k, state)
            logits.append(z)
            feats.append(f)
        return MultiExitOutput(logits, feats)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def exit_flops(self, input_size) -> List[int]:
        """Cumulative FLOPs of one image's forward pass up to and including exit k (k = 1..N): the trunk
        up to stage k plus the heads of exits 1..k (what an early-exit forward spends to reach exit k).
        Counted by FlopCounterMode (2 FLOPs per multiply-add) on a batch of one, in eval mode."""
        was_training = self.training
        self.eval()
        try:
            p = next(self.parameters())
            x = torch.zeros(1, *input_size, device=p.device, dtype=p.dtype)
            out = []
            for k in range(1, self.num_exits + 1):
                with FlopCounterMode(display=False) as counter:
                    self(x, upto=k)
                out.append(int(counter.get_total_flops()))
            return out
        finally:
            self.train(was_training)

    def cost(self, input_size) -> Dict[str, object]:
        return {"params": self.num_parameters(), "exit_flops": self.exit_flops(input_size)}


def check_multi_exit(model):
    """Returns model when it follows the MultiExitNet protocol (num_exits, stage, head, cost), else raises."""
    for attr in ("num_exits", "stage", "head", "cost"):
        if not hasattr(model, attr):
            raise TypeError(f"model: expected a multi-exit model with {attr} (the MultiExitNet protocol, "
                            f"msd_fast.models), got {type(model).__name__}")
    return model


def check_exit_outputs(model, x: Tensor, num_classes: int) -> None:
    """Runs model(x) once (eval mode, no grad) and checks the MultiExitNet output contract against the
    data: MultiExitOutput(logits, features) with num_exits tensors [B, num_classes] and num_exits tensors
    [B, D]. A model that breaks it is refused here, naming what it returned, instead of failing inside the
    loss (or, with a batch the size of the exit count, silently splitting the batch into exits)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        model.train(was_training)
    B, N = x.shape[0], model.num_exits
    if isinstance(out, Tensor) or not isinstance(out, tuple) or len(out) != 2:
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise TypeError(f"model: forward must return MultiExitOutput(logits, features), each a list of its "
                        f"{N} exits; got {got}")
    for what, items in (("logits", out[0]), ("features", out[1])):
        if not isinstance(items, (list, tuple)) or len(items) != N or not all(isinstance(t, Tensor) for t in items):
            got = f"a tensor of shape {tuple(items.shape)}" if isinstance(items, Tensor) else \
                f"a {type(items).__name__} of {len(items) if hasattr(items, '__len__') else '?'}"
            raise TypeError(f"model: its {what} must be a list of {N} tensors (one per exit, num_exits = {N}); "
                            f"got {got}")
    for k, z in enumerate(out[0]):
        if tuple(z.shape) != (B, num_classes):
            raise ValueError(f"model: exit {k + 1}'s logits have shape {tuple(z.shape)} for a batch of {B}; expected "
                             f"[{B}, {num_classes}] (the data has {num_classes} classes)")
    for k, f in enumerate(out[1]):
        if f.dim() != 2 or f.shape[0] != B:
            raise ValueError(f"model: exit {k + 1}'s features have shape {tuple(f.shape)} for a batch of {B}; "
                             f"expected [{B}, D]")
