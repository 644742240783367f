"""A Trainer's state as a checkpoint and back: model, optimizer, schedule, grad scaler, position in the data
order (epoch, step, augmentation generator), running sums, RNG states, history and the best epoch. The
format itself (keys, version, safe loading) is msd_fast.checkpoint's."""
from typing import Any, Dict

from .. import checkpoint as ckpt_format
from .sharding import load_model_state, load_optimizer_state, model_state, optimizer_state


def training_state(t) -> Dict[str, Any]:
    cfg = t.cfg
    return ckpt_format.pack(
        config=cfg.as_dict(), **t.task.checkpoint_fields(),
        model=model_state(t.model), optimizer=optimizer_state(t.model, t.opt), scheduler=t.sched.state_dict(),
        scaler=t.scaler.state_dict(), epoch=t.epoch, step_in_epoch=t.step_in_epoch, global_step=t.global_step,
        aug_state=t.aug_state, sums=None if t.sums is None else {k: v.cpu() for k, v in t.sums.items()},
        rng=ckpt_format.rng_state(), history=t.history, best=t.best, wall_s=t._wall(), cost=t.cost)


def _first_line(e: Exception) -> str:
    """The line of torch's message that says what does not fit (its first line is often only a heading)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
    return (lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0])[:200]


def restore_training_state(t, ckpt: Dict[str, Any], path) -> None:
    """Restores t from ckpt; a checkpoint of another model, or state that does not fit the model, optimizer,
    schedule or grad scaler, raises CheckpointError naming `path` and what differs (the Trainer's start then
    fails: nothing half-restored is trained on)."""
    why = t.task.differs(ckpt)
    if why:
        raise ckpt_format.CheckpointError(f"{path} belongs to another model: {why}")
    for what, obj, load, state in (
            ("model weights", t.model, lambda s: load_model_state(t.model, s), ckpt["model"]),
            ("optimizer state", t.opt, lambda s: load_optimizer_state(t.model, t.opt, s), ckpt["optimizer"]),
            ("schedule state", t.sched, t.sched.load_state_dict, ckpt["scheduler"]),
            ("grad-scaler state", t.scaler, t.scaler.load_state_dict, ckpt["scaler"])):
        try:
            load(state)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise ckpt_format.CheckpointError(f"{path}: its {what} do not fit this run's "
                                              f"{type(obj).__name__} ({_first_line(e)})") from None
    t.epoch, t.step_in_epoch, t.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
    t.aug_state = ckpt["aug_state"]
    t.sums = None if ckpt["sums"] is None else {k: v.to(t.device) for k, v in ckpt["sums"].items()}
    t.history, t.best, t.wall_before = ckpt["history"], ckpt["best"], ckpt["wall_s"]
    ckpt_format.set_rng_state(ckpt["rng"])
