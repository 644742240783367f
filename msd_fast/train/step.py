"""One optimizer step: the batch assembled on the device, forward of the multi-exit model and the method's
criterion under autocast (compiled as one graph with compile=True), backward with gradient scaling,
micro-batches under accumulation / DDP, optimizer and LR-schedule step. No host sync anywhere: metrics
accumulate on the device. With cuda_graph on, the whole step is replayed from one CUDA graph (graph.py).

Each micro-batch's mean loss is weighted by its share of the whole step's loss items (Task.loss_items: samples,
or an LM's kept tokens, summed over micro-batches and all-reduced over ranks; DDP's gradient mean is undone by
the world size), so the gradient is the mean over every item of the step, as one big batch would give it:
padding, accumulation and world size change nothing (Hugging Face's num_items_in_batch fix)."""
import torch

from ..distributed import all_reduce_sum
from ..loss import CosineBeta
from .graph import GraphedStep
from .optim import build_optimizer, build_scheduler
from .sharding import no_grad_sync, wrap
from .speed import Speed
from .sums import accumulate
from .config_keys import TrainConfig


class TrainStep:
    def __init__(self, *, model, ddp, criterion, count_correct, loss_items, opt, sched, scaler, method, device,
                 amp_dtype, dist, accum_steps: int, parallel: str, compile: bool, make_batch, beta_sched: CosineBeta,
                 beta_t: torch.Tensor):
        self.model, self.ddp, self.criterion, self.method = model, ddp, criterion, method
        self.count_correct = count_correct  # (out, y) -> correct per computed exit: Task.correct
        self.loss_items = loss_items  # y -> items the criterion's mean is over: Task.loss_items
        self.make_batch = make_batch  # (idx, aug) -> (x, y): BatchSource.make
        self.opt, self.sched, self.scaler = opt, sched, scaler
        self.device, self.amp_dtype, self.dist, self.accum = device, amp_dtype, dist, accum_steps
        self.beta_sched, self.beta_t = beta_sched, beta_t
        self.forward_loss = torch.compile(self._forward_loss) if compile else self._forward_loss
        self.graph = None  # the GraphedStep replaying this step, while it can (build)
        self.parallel = parallel  # how self.ddp spreads the step over processes (sharding.py)

    @classmethod
    def build(cls, *, cfg: TrainConfig, task, method, device, dist, speed: Speed, amp_dtype, steps_per_epoch: int,
              make_batch) -> "TrainStep":
        """The step of a config: the method's criterion, SGD and its schedule, the grad scaler (fp16), the beta
        schedule with beta as a device scalar (changes without recompiles or host syncs), DDP when distributed,
        the CUDA graph of the whole step when speed.cuda_graph."""
        model = task.model
        wrapped = wrap(model, cfg.parallel, dist, device)  # before the optimizer: FSDP replaces the parameters
        opt = build_optimizer(model.parameters(), cfg)
        hint = method.uses_hint
        step = cls(model=model, ddp=wrapped,
                   criterion=task.criterion(method.build(cfg, model.num_exits)), count_correct=task.correct,
                   loss_items=task.loss_items, opt=opt,
                   sched=build_scheduler(opt, cfg, steps_per_epoch),
                   scaler=torch.amp.GradScaler(device.type, enabled=speed.amp == "fp16"), method=method, device=device,
                   amp_dtype=amp_dtype, dist=dist, accum_steps=cfg.accum_steps, parallel=cfg.parallel,
                   compile=speed.compile,
                   make_batch=make_batch,
                   beta_sched=CosineBeta(cfg.beta_begin if hint else 0.0, cfg.beta_end if hint else 0.0, cfg.epochs),
                   beta_t=torch.zeros((), device=device))
        if speed.cuda_graph:
            step.graph = GraphedStep(step, make_batch, required=cfg.cuda_graph is True)
        return step

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor, beta: torch.Tensor):
        """Forward, loss and per-exit correct counts: (loss, terms [3N-1], correct [N])."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            out = self.ddp(x, last_only=self.method.forward_exits == "last")
            loss, terms = self.criterion(out, y, beta)
        correct = self.count_correct(out, y)  # [computed exits]
        missing = self.model.num_exits - correct.shape[0]  # exits the method did not compute count as 0
        if missing:
            correct = torch.cat([correct.new_zeros(missing), correct])
        return loss, torch.cat([terms.ce.detach(), terms.kd.detach(), terms.feat.detach()]), correct

    def __call__(self, idx: torch.Tensor, aug: torch.Tensor, beta: torch.Tensor, sums) -> None:
        """One step on the batch `make_batch(idx, aug)`: self.forward_loss, backward, optimizer step."""
        if self.graph is not None:
            if self.graph(idx, aug, beta, sums):
                return
            self.graph = None  # capture failed (cuda_graph auto): this step and the next run eagerly
            self.opt.zero_grad(set_to_none=True)  # the graphed steps leave their last gradients in place
        x, y = self.make_batch(idx, aug)
        fwd = self.forward_loss
        accum = self.accum
        parts = [(x, y)] if accum == 1 else [(x[j::accum], y[j::accum]) for j in range(accum)]
        items = [self.loss_items(ys) for _, ys in parts]
        weights = self._item_weights(items)
        for j, ((xs, ys), w) in enumerate(zip(parts, weights)):
            with no_grad_sync(self.ddp, self.parallel, self.dist, last=j == accum - 1):
                loss, terms, correct = fwd(xs, ys, beta)
                self.scaler.scale(loss * w).backward()
            accumulate(sums, loss, terms, correct, items[j])
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()

    def _item_weights(self, items):
        """Per micro-batch: its items x world / the step's items (over micro-batches and ranks). Python ints
        (every rank holds equal micro-batches of samples) need no collective; device counts are all-reduced
        (no host sync). A step with no item at all weighs 0 rather than 0/0."""
        world = self.dist.world_size if self.dist.enabled else 1
        if all(isinstance(n, int) for n in items):
            return [n / sum(items) for n in items]
        counts = torch.stack([torch.as_tensor(n, device=self.device) for n in items]).double()
        total = all_reduce_sum(counts.sum(), self.dist).clamp(min=1)
        return list((counts * world / total).float().unbind())
