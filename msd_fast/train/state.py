"""A Trainer's state as a checkpoint and back: model, optimizer, schedule, grad scaler, position in the data
order (epoch, step, augmentation generator), running sums, RNG states, history and the best epoch. The
format itself (keys, version, safe loading) is msd_fast.checkpoint's."""
from typing import Any, Dict

from .. import checkpoint as ckpt_format


def training_state(t) -> Dict[str, Any]:
    cfg = t.cfg
    return ckpt_format.pack(
        config={k: v for k, v in cfg.items() if k != "_sources"}, model_name=cfg["model"],
        num_classes=t.data.num_classes, in_channels=t.data.in_channels, width=cfg["width"], dataset=cfg["dataset"],
        model=t.model.state_dict(), optimizer=t.opt.state_dict(), scheduler=t.sched.state_dict(),
        scaler=t.scaler.state_dict(), epoch=t.epoch, step_in_epoch=t.step_in_epoch, global_step=t.global_step,
        aug_state=t.aug_state, sums=None if t.sums is None else {k: v.cpu() for k, v in t.sums.items()},
        rng=ckpt_format.rng_state(), history=t.history, best=t.best, wall_s=t._wall(), cost=t.cost)


def restore_training_state(t, ckpt: Dict[str, Any]) -> None:
    t.model.load_state_dict(ckpt["model"])
    t.opt.load_state_dict(ckpt["optimizer"])
    t.sched.load_state_dict(ckpt["scheduler"])
    t.scaler.load_state_dict(ckpt["scaler"])
    t.epoch, t.step_in_epoch, t.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
    t.aug_state = ckpt["aug_state"]
    t.sums = None if ckpt["sums"] is None else {k: v.to(t.device) for k, v in ckpt["sums"].items()}
    t.history, t.best, t.wall_before = ckpt["history"], ckpt["best"], ckpt["wall_s"]
    ckpt_format.set_rng_state(ckpt["rng"])
