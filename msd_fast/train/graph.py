"""The whole training step as one CUDA graph: batch assembly (gather, crop, flip, normalise), forward, loss,
backward, the fused SGD update and the running metrics, replayed with one launch per step.

Why: at the recipes' batch sizes a step of these networks is hundreds of small kernels, and launching them
from Python takes longer than running them (the GPU idles between launches). A graph replays them all from
the device. What must hold, and how it is kept:
- Static memory: the step reads its inputs from fixed buffers (idx [B], aug [3, B], beta, lr), which are
  filled before each replay (two small copies and two fills, no host sync); the parameters, momentum
  buffers, gradients and metric sums are the same tensors at every replay.
- Nothing on the host inside the step: the learning rate is a device tensor while the step is captured
  (torch's fused SGD takes a tensor lr), so the schedule changes it with a fill, not a recapture.
- Warm-up before capture: the first steps run eagerly on a side stream (torch.compile compiles, cuDNN picks
  its algorithms, the momentum buffers are created); they are real training steps on real batches.
Used when speed.cuda_graph is on (CUDA, no fp16 grad scaler, no DDP, no accumulation: `graph_unsupported`).
A model that cannot be captured (a host sync or a data-dependent branch in its forward, say) fails at capture:
under cuda_graph auto the step then runs eagerly from that step on, with a warning saying why; under
cuda_graph true the failure is an error.
"""
import warnings
from typing import Callable, Dict, Optional

import torch

from .sums import accumulate

WARMUP_STEPS = 3


def graph_unsupported(device: torch.device, amp: str, distributed: bool, accum_steps: int,
                      data_on_gpu: bool = True) -> str:
    """'' when the training step can be one CUDA graph, else why not."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if not data_on_gpu:
        return "the training set is not held on the GPU (data_on_device false, or it did not fit)"
    if amp == "fp16":
        return "fp16's dynamic grad scaler checks for inf on the host every step (use bf16)"
    if distributed:
        return "DDP's gradient all-reduce is not captured here"
    if accum_steps != 1:
        return "gradient accumulation runs several micro-batches per step"
    return ""


class CudaGraphRunner:
    """Records a function once and replays it (torch.cuda.CUDAGraph). `EagerRunner` has the same interface and
    just calls the function: the CPU tests drive GraphedStep's bookkeeping through it."""

    def __init__(self):
        self.graph, self.stream = None, None

    def warm(self, fn: Callable[[], None]) -> None:
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            fn()
        torch.cuda.current_stream().wait_stream(self.stream)

    def capture(self, fn: Callable[[], None]) -> None:
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            fn()

    def replay(self) -> None:
        self.graph.replay()


class EagerRunner:
    def __init__(self):
        self.fn = None

    def warm(self, fn):
        fn()

    def capture(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


class GraphedStep:
    """step(idx, aug, beta, sums): one optimizer step of TrainStep `step` on the batch that `make_batch(idx,
    aug)` assembles, replayed from a CUDA graph after WARMUP_STEPS eager steps."""

    def __init__(self, step, make_batch: Callable, runner=None, warmup: int = WARMUP_STEPS, required: bool = False):
        self.step, self.make_batch = step, make_batch
        self.runner = runner if runner is not None else CudaGraphRunner()
        self.warmup, self.calls, self.required = warmup, 0, required
        self.idx: Optional[torch.Tensor] = None
        self.aug: Optional[torch.Tensor] = None
        self.sums: Optional[Dict[str, torch.Tensor]] = None
        self.beta: Optional[torch.Tensor] = None
        groups = step.opt.param_groups
        self.lr = torch.zeros(len(groups), dtype=torch.float32, device=step.device)

    def _bind(self, idx, aug, beta, sums) -> None:
        """Copies this step's inputs into the static buffers (first call: allocates them) and makes the caller's
        sums dict hold the static sums tensors (its values are copied in first), so the trainer reads, resets and
        checkpoints the very tensors the graph adds to."""
        if self.idx is None:
            self.idx, self.aug = torch.empty_like(idx), torch.empty_like(aug)
            self.sums = {k: torch.empty_like(v) for k, v in sums.items()}
            self.beta = beta
        if beta is not self.beta:
            self.beta.copy_(beta)
        self.idx.copy_(idx, non_blocking=True)
        self.aug.copy_(aug, non_blocking=True)
        for k, v in sums.items():
            if v is not self.sums[k]:
                self.sums[k].copy_(v)
                sums[k] = self.sums[k]
        for i, g in enumerate(self.step.opt.param_groups):
            self.lr[i].fill_(g["lr"])

    def _body(self) -> None:
        s = self.step
        s.opt.zero_grad(set_to_none=True)  # the grads are then allocated inside the graph: same memory each replay
        x, y = self.make_batch(self.idx, self.aug)
        loss, terms, correct = s.forward_loss(x, y, self.beta)
        loss.backward()
        accumulate(self.sums, loss, terms, correct, s.loss_items(y))
        groups = s.opt.param_groups
        floats = [g["lr"] for g in groups]
        for i, g in enumerate(groups):  # the fused SGD kernel reads lr from device memory
            g["lr"] = self.lr[i]
        try:
            s.opt.step()
        finally:
            for g, f in zip(groups, floats):
                g["lr"] = f

    def __call__(self, idx: torch.Tensor, aug: torch.Tensor, beta: torch.Tensor, sums) -> bool:
        """Runs the step; False (nothing run) when the capture failed and the caller must run it eagerly."""
        self._bind(idx, aug, beta, sums)
        if self.calls < self.warmup:
            self.runner.warm(self._body)
        else:
            if self.calls == self.warmup:
                try:
                    self.runner.capture(self._body)
                except RuntimeError as e:
                    why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    if self.required:
                        raise RuntimeError(f"--cuda-graph true: the training step could not be captured as a CUDA "
                                           f"graph: {why}") from e
                    warnings.warn(f"msd_fast: the training step could not be captured as a CUDA graph ({why}); it "
                                  f"runs eagerly from now on (--cuda-graph false skips the attempt)", RuntimeWarning)
                    return False
            self.runner.replay()
        self.calls += 1
        self.step.sched.step()
        return True
