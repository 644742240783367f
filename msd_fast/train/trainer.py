"""The training loop: epochs of steps, evaluation, checkpoints, resume, Ctrl-C and divergence handling.

What is computed comes from elsewhere: the task (task.py: images, or msd_fast.lm's language modelling) gives
the data, model, batches, evaluation, per-step schedules and checkpoint fields, the method (methods.py) builds
the criterion, step.py runs one optimizer step, speed.py the device policy, optim.py the optimizer and schedule,
run_dir.py the directory, run_log.py logs and results, state.py and msd_fast.checkpoint the checkpoint,
config_keys.py the frozen config (each key declared once). Library code raises; only cli.py turns
errors into exit codes. A resumed run continues with exactly the batches the uninterrupted run would have seen."""
import pathlib
import signal
import time
from dataclasses import replace
from typing import Any, Dict, Optional

import torch

from .. import checkpoint as ckpt_format
from ..distributed import DistInfo, barrier, init_distributed
from .args import check_trainer_args
from .config import DEFAULTS, ConfigError
from .graph import graph_unsupported
from .methods import get_method
from .run_dir import check_output_dir, new_run_dir, reconcile_best, remove_run_dir, resumed_run_dir
from .run_log import RunLogger, format_results_table, results_dict, write_results
from .speed import AMP_DTYPES, resolve_speed
from .sharding import is_sharded
from .state import restore_training_state, training_state
from .step import TrainStep
from .task import make_task
from .config_keys import TrainConfig
from .sums import TrainingDiverged, check_finite, epoch_means, new_sums  # noqa: F401 (TrainingDiverged re-exported)


class Trainer:
    def __init__(self, cfg: Optional[Dict[str, Any]] = None, data=None, model=None):
        """cfg: a config dict (keys of DEFAULTS; missing keys take the code defaults), validated into the
        frozen `self.cfg`. data: a msd_fast `Dataset` (from_tensors / from_torch); by default cfg's dataset.
        model: a MultiExitNet-protocol model (e.g. from `attach_exits`); by default cfg["model"] from the
        registry. Everything is checked before anything is created on disk."""
        check_trainer_args(cfg, data, model)
        raw = dict(cfg or {})
        if data is not None:
            raw["dataset"] = getattr(data, "name", None) or "custom"
        if model is not None and raw.get("model", DEFAULTS["model"]) == DEFAULTS["model"] \
                and "model" not in (raw.get("_sources") or {}):
            raw["model"] = type(model).__name__
        self.cfg = cfg = TrainConfig.from_mapping(raw, custom_model=model is not None, custom_data=data is not None)
        self.method = get_method(cfg.method)
        self.speed = resolve_speed(cfg)
        if not cfg.resume:
            check_output_dir(cfg.out_dir)
        self.device = torch.device(self.speed.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        torch.set_num_threads(cfg.num_threads) if cfg.num_threads else None
        self.amp_dtype = AMP_DTYPES[self.speed.amp]
        G, world, accum = cfg.batch_size, self.dist.world_size, cfg.accum_steps
        if G % (world * accum):
            raise ConfigError(f"--batch-size {G} must be divisible by world size x accum steps = {world * accum}")
        self.task = task = make_task(cfg, self.device, self.dist, self.speed, self.amp_dtype, data, model)
        self.model, self.batches, self.cost, self.input_size = task.model, task.batches, task.cost, task.input_size
        self.steps_per_epoch = task.train_size // G
        if self.steps_per_epoch < 1:
            raise ConfigError(f"--batch-size {G} is larger than the training set ({task.train_size} samples)")
        why_not = graph_unsupported(self.device, self.speed.amp, self.dist.enabled, cfg.accum_steps,
                                    self.batches.on_device)
        if cfg.cuda_graph is True and why_not:
            raise ConfigError(f"--cuda-graph true: {why_not}")
        self.speed = replace(self.speed, cuda_graph=cfg.cuda_graph in ("auto", True) and not why_not)
        self.step = TrainStep.build(cfg=cfg, task=task, method=self.method, device=self.device,
                                    dist=self.dist, speed=self.speed, amp_dtype=self.amp_dtype,
                                    steps_per_epoch=self.steps_per_epoch, make_batch=self.batches.make)
        self.opt, self.sched, self.scaler, self.beta_sched, self.beta_t = (
            self.step.opt, self.step.sched, self.step.scaler, self.step.beta_sched, self.step.beta_t)

        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.aug_state: Optional[torch.Tensor] = None
        self.history, self.best = [], {"value": None, "epoch": None, "val": None, "test": None}
        self.stop_val = None  # validation of a stop inside an epoch (--max-steps), for results.json
        self.sums = None
        self.wall_before, self._session_start = 0.0, None
        self.interrupted, self._stop_requested, self._lock = False, False, None
        self._last_is_ours = True  # last.pt (if any) is one this run wrote or resumed from
        ckpt_path, self._new_run_dir = None, None
        if self.dist.is_main:
            if cfg.resume:
                self.run_dir, self._lock, ckpt_path = resumed_run_dir(cfg)
            else:
                self.run_dir, self._lock = new_run_dir(cfg)
                self._new_run_dir = self.run_dir
        else:
            self.run_dir = pathlib.Path(cfg.resume or pathlib.Path(cfg.out_dir) / str(cfg.run_name))
        try:
            barrier(self.dist)
            self.log = RunLogger(self.run_dir, self.dist.is_main, cfg.tensorboard)
            if cfg.resume and (ckpt_path is not None or not self.dist.is_main):
                self._load(ckpt_path or (self.run_dir / "last.pt"))
        except BaseException:
            self.discard_if_unsaved()
            self.close()
            raise

    def speed_report(self) -> Dict[str, Any]:
        """The speed settings as run (results.json): cuda_graph false once a failed capture made the step eager."""
        return {**self.speed.as_dict(), "cuda_graph": self.step.graph is not None}

    def discard_if_unsaved(self) -> bool:
        """Removes the run directory this Trainer created when no checkpoint was written into it (a start
        or first epoch that failed leaves nothing behind); True when it was removed."""
        if self._new_run_dir is None or any(self._new_run_dir.glob("*.pt")):
            return False
        if getattr(self, "log", None) is not None:
            self.log.close()
        self.close()
        removed, self._new_run_dir = remove_run_dir(self._new_run_dir), None
        return removed

    def close(self) -> None:
        """Releases the run directory's lock (also released when the process exits). A failed new run whose
        directory holds no checkpoint leaves nothing behind: see discard_if_unsaved."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------------------------- the step
    def _train_step(self, idx: torch.Tensor, aug: torch.Tensor) -> None:  # the batch drawn as (idx, aug)
        self.step(idx, aug, self.beta_t, self.sums)

    def _check_finite(self) -> None:
        check_finite(self.sums, self.epoch, self.global_step, self.run_dir / "last.pt")  # host sync: log points only

    def _step_at(self, perm: torch.Tensor, aug_gen: torch.Generator) -> None:
        """One optimizer step on global batch number `step_in_epoch` of this epoch's permutation."""
        idx, aug = self.batches.draw(perm, self.step_in_epoch, aug_gen)
        done = self.epoch + self.step_in_epoch / self.steps_per_epoch  # epochs
        self.beta_t.fill_(self.beta_sched(done))
        self.task.before_step(self.global_step, done / self.cfg.epochs)
        self._train_step(idx, aug)
        self.step_in_epoch += 1
        self.global_step += 1

    # ----------------------------------------------------------------------------------- the loop
    def fit(self) -> Dict[str, Any]:
        """Trains to cfg.epochs (or cfg.max_steps); returns the results, or {"interrupted": True,
        "run_dir": ...} after Ctrl-C (a clean checkpoint is saved first)."""
        cfg = self.cfg
        try:  # Ctrl-C -> finish the step, save, stop (only the main thread may install handlers)
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:
            old_handler = None
        self._session_start = time.time()
        try:
            while self.epoch < cfg.epochs:
                if self._run_epoch():
                    return {"interrupted": True, "run_dir": str(self.run_dir)}
                if cfg.max_steps and self.global_step >= cfg.max_steps:
                    break
        except BaseException:
            self.close()  # diverged, a write failed, a second Ctrl-C: the run directory is free again
            self.discard_if_unsaved()
            raise
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        self._close_session()
        return self._finish()

    def _run_epoch(self) -> bool:
        """Trains the rest of the current epoch; True when stopped by Ctrl-C (checkpoint saved)."""
        cfg, G = self.cfg, self.cfg.batch_size
        perm, aug_gen = self.batches.epoch_order(cfg.seed, self.epoch)
        if self.aug_state is not None:
            aug_gen.set_state(self.aug_state)
            self.aug_state = None
        if self.sums is None:
            self.sums = new_sums(self.model.num_exits, self.device)
        self.model.train()
        t0, imgs0 = time.time(), self.step_in_epoch * G
        with self.log.progress(self.steps_per_epoch, self.step_in_epoch, f"epoch {self.epoch + 1}/{cfg.epochs}",
                               cfg.progress) as bar:
            while self.step_in_epoch < self.steps_per_epoch:
                self._step_at(perm, aug_gen)
                loss = None
                if self.global_step % cfg.log_interval == 0:  # the only host syncs of the loop
                    self._check_finite()
                    loss = (self.sums["loss"] / self.sums["count"]).item()
                bar.update(self.step_in_epoch, loss)
                if self._stop_requested or (cfg.max_steps and self.global_step >= cfg.max_steps):
                    break
        self._check_finite()
        if self._stop_requested:
            self.aug_state = aug_gen.get_state()
            self._save("last.pt")
            self.interrupted = True
            print(f"[msd_fast] interrupted: clean checkpoint at {self.run_dir / 'last.pt'} (epoch {self.epoch + 1}, "
                  f"step {self.step_in_epoch}); continue with --resume {self.run_dir}")
            self._close_session()
            self.close()
            return True
        if self.step_in_epoch < self.steps_per_epoch:  # --max-steps inside the epoch: keep the position
            self.aug_state = aug_gen.get_state()
            self._validate_stop()
            if self.dist.is_main:
                print(f"[msd_fast] stopped at --max-steps {cfg.max_steps} in epoch {self.epoch + 1}, step "
                      f"{self.step_in_epoch} of {self.steps_per_epoch}; the checkpoint keeps this position "
                      f"(--resume {self.run_dir} --max-steps 0 trains on from here)")
            return False
        epoch_time = time.time() - t0
        self._end_epoch((self.step_in_epoch * G - imgs0) / max(epoch_time, 1e-9), epoch_time)
        return False

    def _wall(self) -> float:
        """Training wall time over every session of this run, up to now."""
        return self.wall_before + (time.time() - self._session_start if self._session_start is not None else 0.0)

    def _close_session(self) -> None:
        self.wall_before, self._session_start = self._wall(), None

    def _on_sigint(self, signum, frame):
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        print("\n[msd_fast] Ctrl-C: finishing the current step and saving a checkpoint (Ctrl-C again to abort)")

    def _eval(self, split: str) -> Dict[str, Any]:  # "val" or "test"
        return self.task.evaluate(split)

    def _save_validated(self, val: Dict[str, Any], **where) -> None:
        """Saves last.pt, and best.pt when `val`'s score (task.score) beats the best so far (recorded with the
        test split's figures and `where`: the step of a stop inside an epoch). last.pt first: it records which
        epoch is best, so a kill between the two saves is repaired on resume (run_dir.reconcile_best) and
        best.pt is never newer than last.pt."""
        score = self.task.score(val["exits"], self.cfg.best_metric)
        improved = self.best["value"] is None or score > self.best["value"]
        if improved:
            self.best = {"value": score, "epoch": self.epoch, **where, "val": val, "test": self._eval("test")}
        self._save("last.pt")
        if improved:
            self._save("best.pt")

    def _end_epoch(self, samples_per_s: float, epoch_time: float) -> None:
        train = epoch_means(self.sums, self.model.num_exits, self.dist, self.task.train_acc)
        val = self._eval("val")
        m, rate = self.task.metric, f"{self.task.throughput_unit}_per_s"
        row = {
            "epoch": self.epoch + 1, "step": self.global_step, "lr": self.opt.param_groups[0]["lr"],
            "beta": float(self.beta_t), **train, f"val_{m}": val["exits"],
            "val_ensemble": val["ensemble"], rate: samples_per_s * self.task.units_per_sample * self.dist.world_size,
            "epoch_time_s": epoch_time,
        }
        self.history.append(row)
        self.epoch, self.step_in_epoch, self.sums = self.epoch + 1, 0, None
        self._save_validated(val)
        self.log.log_epoch(row, self.history)
        if self.dist.is_main:
            print(f"[msd_fast] epoch {self.epoch}/{self.cfg.epochs}  loss {row['train_loss']:.4f}  "
                  f"val {m} per exit {' / '.join(f'{a:.2f}' for a in val['exits'])}  "
                  f"{row[rate]:.0f} {self.task.throughput_unit}/s  {epoch_time:.1f} s", flush=True)

    def _validate_stop(self) -> None:
        """A stop inside an epoch (--max-steps): the weights as they are get validated like an epoch's end, so
        the run has validation figures and a best.pt (when they beat the best epoch so far); last.pt keeps
        the position in the epoch."""
        self.stop_val = self._eval("val")
        self._save_validated(self.stop_val, step=self.global_step)

    # ------------------------------------------------------------------------------- checkpoints
    def _save(self, name: str) -> None:
        # a sharded model's whole tensors are gathered by every process (sharding.py); rank 0 writes them
        state = training_state(self) if self.dist.is_main or is_sharded(self.model) else None
        if self.dist.is_main:
            # last.pt's previous version stays on as last-prev.pt, unless this run resumed from another file
            # (then last.pt may be the corrupt one it could not use).
            keep = name == "last.pt" and self._last_is_ours
            ckpt_format.atomic_save(state, self.run_dir / name, keep_previous=keep)
            self._last_is_ours = self._last_is_ours or name == "last.pt"
        barrier(self.dist)

    def _load(self, path) -> None:
        path = pathlib.Path(path)
        restore_training_state(self, ckpt_format.load_checkpoint(path), path)
        self._last_is_ours = path.name == "last.pt"
        if self.dist.is_main:
            reconcile_best(self.run_dir, pathlib.Path(path), self.best.get("epoch"), self.epoch, self.step_in_epoch)
            print(f"[msd_fast] resumed {self.run_dir} at epoch {self.epoch + 1}, step {self.step_in_epoch}")

    # ------------------------------------------------------------------------------------ the end
    def _finish(self) -> Dict[str, Any]:
        results = results_dict(cfg=self.cfg, epoch=self.epoch, steps=self.global_step, history=self.history,
                               last_val=self.stop_val["exits"] if self.stop_val is not None else None,
                               last_test=self._eval("test"), best=self.best, cost=self.cost,
                               metric=(self.task.metric, self.task.metric_name, self.task.metric_title),
                               input_size=self.input_size, wall_s=self.wall_before, speed=self.speed_report(),
                               world_size=self.dist.world_size)
        if self.dist.is_main:
            write_results(self.run_dir, results)
            self.log.close()
            print(format_results_table(results))
            print(f"[msd_fast] run directory: {self.run_dir}  (wall time {self.wall_before:.0f} s)")
        self.close()
        return results
