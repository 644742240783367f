"""The training engine: joint / BYOT / MSD / plain training of a multi-exit model.

The data live in memory as uint8 tensors (on the GPU when training on CUDA) and are augmented in batches.
Each step draws the *global* batch from a seeded per-epoch permutation shared by every rank (what
DistributedSampler.set_epoch does), plus its augmentation parameters; rank r takes the interleaved share
[r::world] and micro-batch j of it [j::accum_steps]. So K ranks, or K accumulation steps in one process,
see exactly the same samples and crops as one process with the whole batch, and a resumed run continues
with exactly the batches the uninterrupted run would have seen.
"""
import contextlib
import math
import os
import pathlib
import platform
import signal
import time
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from . import __version__
from .checkpoint import (FORMAT, FORMAT_VERSION, CheckpointError, atomic_save, load_checkpoint,
                         remove_stale_temp_files, rng_state, set_rng_state)
from .config import DEFAULTS, RESUME_FLAGS, ConfigError, load_yaml, save_config, validate_config
from .data import augment, draw_augment_params, load_dataset, normalize
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from .evaluation import evaluate_split
from .loss import msd_loss
from .models import channels_last_on_cpu, create_model
from .run_dir import RunLock, check_output_dir, create_run_dir
from .run_log import RunLogger
from .schedule import CosineBeta


class TrainingDiverged(RuntimeError):
    pass


def cpu_has_native_bf16() -> bool:
    """True when this CPU does bf16 matrix maths in hardware (AVX512-BF16 or AMX): there oneDNN's bf16
    convolutions run about twice as fast as fp32 (measured: bench/bench_train.py). Without it bf16 is
    emulated and slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover - private helpers of torch.cpu; absent -> assume no
        return False


def resolve_speed(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Per-device defaults: CUDA -> bf16, channels-last, compile; CPU -> bf16 where the CPU has native bf16
    (else fp32), channels-last except for MSDNet (models.channels_last_on_cpu), eager (torch.compile is
    slow to compile on CPU and measured no faster for the ResNets)."""
    dev = cfg["device"]
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
    on_cuda = dev.startswith("cuda")
    amp = cfg["amp"] if cfg["amp"] != "auto" else ("bf16" if on_cuda or cpu_has_native_bf16() else "none")
    cl = cfg["channels_last"] if cfg["channels_last"] != "auto" else (on_cuda or channels_last_on_cpu(cfg["model"]))
    comp = cfg["compile"] if cfg["compile"] != "auto" else on_cuda
    return {"device": dev, "amp": amp, "channels_last": bool(cl), "compile": bool(comp)}


def method_loss_kwargs(cfg: Dict[str, Any]) -> Dict[str, Any]:
    m = cfg["method"]
    if m == "msd":
        return dict(alpha=cfg["alpha"], temperature=cfg["temperature"], teacher="all")
    if m == "byot":
        return dict(alpha=cfg["alpha"], temperature=cfg["temperature"], teacher="last")
    if m == "joint":
        return dict(alpha=0.0, temperature=cfg["temperature"], teacher="all")
    return {}  # plain


class Trainer:
    def __init__(self, cfg: Dict[str, Any], data=None):
        """cfg: a resolved config (msd_fast.config; missing keys take the code defaults). data: an already
        loaded `Dataset` (benchmarks); by default the one named in cfg is loaded. Everything is checked
        before anything is created on disk: a failed start leaves nothing behind."""
        cfg = {**DEFAULTS, "resume": None, **cfg}
        validate_config({k: v for k, v in cfg.items() if k not in ("_sources", "resume", "config_file")},
                        cfg.get("_sources"))
        self.cfg = cfg
        self.speed = resolve_speed(cfg)
        if not cfg.get("resume"):
            check_output_dir(cfg["out_dir"])
        self.device = torch.device(self.speed["device"])
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if cfg["num_threads"]:
            torch.set_num_threads(cfg["num_threads"])
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.speed["amp"]]
        G, world, accum = cfg["batch_size"], self.dist.world_size, cfg["accum_steps"]
        if G % (world * accum):
            raise ConfigError(f"--batch-size {G} must be divisible by world size x accum steps = {world * accum}")

        self.data = data if data is not None else load_dataset(
            cfg["dataset"], cfg["data_dir"], cfg["val_size"], cfg["split_seed"], cfg["train_subset"])
        self.steps_per_epoch = len(self.data.train) // G
        if self.steps_per_epoch < 1:
            raise ConfigError(f"--batch-size {G} is larger than the training set ({len(self.data.train)} images)")
        on_gpu = self.device.type == "cuda"
        resident = on_gpu and cfg["data_on_device"] in ("auto", True)  # datasets that fit live on the GPU
        if resident and cfg["data_on_device"] == "auto":
            free, _ = torch.cuda.mem_get_info(self.device)
            resident = self.data.train.images.numel() < free // 4
        self.train_images = self.data.train.images.to(self.device) if resident else self.data.train.images
        self.train_labels = self.data.train.labels.to(self.device) if resident else self.data.train.labels

        torch.manual_seed(cfg["seed"])
        self.model = create_model(cfg["model"], self.data.num_classes, self.data.in_channels, cfg["width"])
        self.input_size = (self.data.in_channels, *self.data.image_size)
        self.cost = self.model.cost(self.input_size)
        mf = torch.channels_last if self.speed["channels_last"] else torch.contiguous_format
        self.model = self.model.to(self.device, memory_format=mf)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                   nesterov=cfg["nesterov"] and cfg["momentum"] > 0, weight_decay=cfg["weight_decay"])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.speed["amp"] == "fp16")
        hint = cfg["method"] in ("msd", "byot")  # joint = sum of CEs only: no KD, no feature hint
        self.beta_sched = CosineBeta(cfg["beta_begin"] if hint else 0.0, cfg["beta_end"] if hint else 0.0,
                                     cfg["epochs"])
        self.beta_t = torch.zeros((), device=self.device)
        self.loss_kw = method_loss_kwargs(cfg)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if on_gpu else None)
                    if self.dist.enabled else self.model)
        self._fwd = torch.compile(self._forward_loss) if self.speed["compile"] else self._forward_loss

        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.aug_state: Optional[torch.Tensor] = None
        self.history, self.best = [], {"value": -1.0, "epoch": None, "val": None, "test": None}
        self.sums = None
        self.wall_before = 0.0
        self._session_start: Optional[float] = None
        self.interrupted = False
        self._lock: Optional[RunLock] = None
        self.run_dir = self._make_run_dir()
        self.log = RunLogger(self.run_dir, self.dist.is_main, cfg["tensorboard"])
        if cfg.get("resume"):
            ckpt_path = self._resume_checkpoint_path()
            if ckpt_path is not None:
                self._load(ckpt_path)
        self._stop_requested = False

    # ----------------------------------------------------------------------------------- setup helpers
    def _lr_factor(self, step: int) -> float:
        cfg, spe = self.cfg, self.steps_per_epoch
        e = step / spe
        warm = cfg["warmup_epochs"]
        if warm > 0 and e < warm:
            return (step + 1) / (warm * spe)
        if cfg["lr_schedule"] == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step / (cfg["epochs"] * spe), 1.0)))
        return cfg["gamma"] ** sum(1 for m in cfg["milestones"] if e >= m)

    def _make_run_dir(self) -> pathlib.Path:
        """New run: create the directory exclusively, lock it, write config.yaml. Resume: lock it, clean up
        temp files of a killed save, record flags that changed (RESUME_FLAGS) in config.yaml."""
        cfg = self.cfg
        if cfg.get("resume"):
            p = pathlib.Path(cfg["resume"])
            run_dir = p if p.is_dir() else p.parent
            if self.dist.is_main:
                self._lock = RunLock(run_dir)
                stale = remove_stale_temp_files(run_dir)
                if stale:
                    print(f"[msd_fast] removed temp files of an interrupted save: {', '.join(stale)}")
                saved, _ = load_yaml(run_dir / "config.yaml", what="run config")
                changed = {k: (saved.get(k), cfg[k]) for k in RESUME_FLAGS if saved.get(k) != cfg[k]}
                if changed:
                    print("[msd_fast] resuming with " + ", ".join(f"{k} = {new!r} (was {old!r})"
                                                              for k, (old, new) in changed.items()))
                    save_config(cfg, run_dir / "config.yaml")
            barrier(self.dist)
            return run_dir
        name = cfg["run_name"] or f"{cfg['dataset']}-{cfg['model']}-{cfg['method']}-s{cfg['seed']}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = pathlib.Path(cfg["out_dir"]) / name
        if self.dist.is_main:
            create_run_dir(run_dir)
            self._lock = RunLock(run_dir)
            save_config(cfg, run_dir / "config.yaml")
        barrier(self.dist)
        return run_dir

    def _resume_checkpoint_path(self) -> Optional[pathlib.Path]:
        p = pathlib.Path(self.cfg["resume"])
        path = p / "last.pt" if p.is_dir() else p
        if not path.exists() and p.is_dir() and not (p / "best.pt").exists():
            if self.dist.is_main:
                print(f"[msd_fast] {p} has no checkpoint yet (the run stopped before its first one): "
                      f"starting it from the beginning with its saved config")
            return None
        return path

    def close(self) -> None:
        """Releases the run directory's lock (also released when the process exits)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------------------------- the step
    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor, beta: torch.Tensor):
        """Forward, loss and per-exit correct counts; no host sync (compiled as one graph with --compile)."""
        plain = self.cfg["method"] == "plain"
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            out = self.ddp(x, last_only=plain)
            if plain:
                loss = F.cross_entropy(out.logits[-1].float(), y)
                n = self.model.num_exits
                ce = torch.cat([loss.new_zeros(n - 1), loss.detach().view(1)])
                kd, feat = loss.new_zeros(n), loss.new_zeros(n - 1)
            else:
                loss, (ce, kd, feat) = msd_loss(out.logits, y, out.features, beta=beta, validate=False,
                                                backend=self.cfg["loss_backend"], return_terms=True, **self.loss_kw)
        correct = (torch.stack(out.logits).argmax(-1) == y).sum(1).float()  # [exits], one op for all
        if plain:
            correct = torch.cat([correct.new_zeros(self.model.num_exits - 1), correct])
        return loss, torch.cat([ce.detach(), kd.detach(), feat.detach()]), correct

    def _batch(self, gidx: torch.Tensor, off: torch.Tensor, flip: torch.Tensor):
        r, w = self.dist.rank, self.dist.world_size
        idx = gidx[r::w].to(self.train_images.device)
        x = augment(self.train_images[idx], off[:, r::w], flip[r::w], self.data.crop_padding)
        x = normalize(x, self.data.mean, self.data.std)
        if self.speed["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.train_labels[idx].to(self.device, non_blocking=True)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        accum = self.cfg["accum_steps"]
        for j in range(accum):
            xs, ys = (x, y) if accum == 1 else (x[j::accum], y[j::accum])
            sync_ctx = self.ddp.no_sync() if (self.dist.enabled and j < accum - 1) else contextlib.nullcontext()
            with sync_ctx:
                loss, terms, correct = self._fwd(xs, ys, self.beta_t)
                self.scaler.scale(loss / accum).backward()
            n = ys.shape[0]
            self.sums["loss"] += loss.detach() * n
            self.sums["terms"] += terms * n
            self.sums["correct"] += correct
            self.sums["count"] += n
            self.sums["nonfinite"] += (~torch.isfinite(loss.detach())).float()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()

    def _new_sums(self) -> Dict[str, torch.Tensor]:
        n = self.model.num_exits
        z = lambda *s: torch.zeros(*s, device=self.device, dtype=torch.float64)  # noqa: E731
        return {"loss": z(()), "terms": z(3 * n - 1), "correct": z(n), "count": z(()), "nonfinite": z(())}

    def _check_finite(self) -> None:
        if self.sums["nonfinite"].item() > 0:  # host sync only at logging points
            last = self.run_dir / "last.pt"
            raise TrainingDiverged(
                f"the loss became non-finite (NaN/inf) in epoch {self.epoch + 1} before step {self.global_step}; "
                f"stopping. The last good checkpoint is kept at {last if last.exists() else '(none yet)'}. "
                f"Try a lower --lr, --amp none, or a smaller --beta-begin.")

    # ----------------------------------------------------------------------------------- the loop
    def fit(self) -> Dict[str, Any]:
        cfg, G = self.cfg, self.cfg["batch_size"]
        try:  # Ctrl-C -> finish the step, save, stop (only the main thread may install handlers)
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:
            old_handler = None
        self._session_start = time.time()
        bar = None
        try:
            while self.epoch < cfg["epochs"]:
                perm = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(
                    cfg["seed"] * 1_000_003 + self.epoch))
                aug_gen = torch.Generator().manual_seed(cfg["seed"] * 7919 + self.epoch + 1)
                if self.aug_state is not None:
                    aug_gen.set_state(self.aug_state)
                    self.aug_state = None
                if self.sums is None:
                    self.sums = self._new_sums()
                self.model.train()
                bar = self._progress_bar()
                t0 = time.time()
                imgs0 = self.step_in_epoch * G
                while self.step_in_epoch < self.steps_per_epoch:
                    self._step_at(perm, aug_gen)
                    if bar is not None:
                        bar.update(1)
                    if self.global_step % cfg["log_interval"] == 0:
                        self._check_finite()
                        if bar is not None:
                            bar.set_postfix(loss=f"{(self.sums['loss'] / self.sums['count']).item():.3f}")
                    if self._stop_requested or (cfg["max_steps"] and self.global_step >= cfg["max_steps"]):
                        break
                if bar is not None:
                    bar.close()
                    bar = None
                self._check_finite()
                if self._stop_requested:
                    self.aug_state = aug_gen.get_state()
                    self._save("last.pt")
                    self.interrupted = True
                    print(f"[msd_fast] interrupted: clean checkpoint at {self.run_dir / 'last.pt'} "
                          f"(epoch {self.epoch + 1}, step {self.step_in_epoch}); continue with --resume {self.run_dir}")
                    self._close_session()
                    self.close()
                    return {"interrupted": True, "run_dir": str(self.run_dir)}
                epoch_time = time.time() - t0
                self._end_epoch((self.step_in_epoch * G - imgs0) / max(epoch_time, 1e-9), epoch_time)
                if cfg["max_steps"] and self.global_step >= cfg["max_steps"]:
                    break
        except BaseException:
            self.close()  # diverged, a write failed, a second Ctrl-C: the run directory is free again
            raise
        finally:
            if bar is not None:
                bar.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        self._close_session()
        return self._finish()

    def _wall(self) -> float:
        """Training wall time over every session of this run, up to now."""
        return self.wall_before + (time.time() - self._session_start if self._session_start is not None else 0.0)

    def _close_session(self) -> None:
        self.wall_before = self._wall()
        self._session_start = None

    def _step_at(self, perm: torch.Tensor, aug_gen: torch.Generator) -> None:
        """One optimizer step on global batch number `step_in_epoch` of this epoch's permutation."""
        G, i = self.cfg["batch_size"], self.step_in_epoch
        off, flip = draw_augment_params(G, self.data.crop_padding, self.data.hflip, aug_gen)
        x, y = self._batch(perm[i * G:(i + 1) * G], off, flip)
        self.beta_t.fill_(self.beta_sched(self.epoch + i / self.steps_per_epoch))
        self._train_step(x, y)
        self.step_in_epoch += 1
        self.global_step += 1

    def run_steps(self, n: int) -> None:
        """n training steps with no evaluation or checkpoints (benchmarks); wraps around the epoch."""
        if self.sums is None:
            self.sums = self._new_sums()
        self.model.train()
        perm = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(self.epoch))
        aug_gen = torch.Generator().manual_seed(self.global_step)
        for _ in range(n):
            if self.step_in_epoch >= self.steps_per_epoch:
                self.step_in_epoch = 0
            self._step_at(perm, aug_gen)

    def _on_sigint(self, signum, frame):
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        print("\n[msd_fast] Ctrl-C: finishing the current step and saving a checkpoint (Ctrl-C again to abort)")

    def _progress_bar(self):
        import sys

        if not (self.cfg["progress"] and self.dist.is_main and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{self.cfg['epochs']}",
                    leave=False, dynamic_ncols=True)

    def _eval(self, split) -> Dict[str, Any]:
        return evaluate_split(self.model, split, self.data.mean, self.data.std, self.cfg["eval_batch_size"],
                              self.device, self.speed["channels_last"], self.amp_dtype, self.dist)

    def _end_epoch(self, images_per_s: float, epoch_time: float) -> None:
        n = self.model.num_exits
        s = {k: all_reduce_sum(v.clone(), self.dist) for k, v in self.sums.items()}
        cnt = s["count"].item()
        terms = (s["terms"] / cnt).tolist()
        val = self._eval(self.data.val)
        row = {
            "epoch": self.epoch + 1, "step": self.global_step, "lr": self.opt.param_groups[0]["lr"],
            "beta": float(self.beta_t), "train_loss": (s["loss"] / cnt).item(),
            "train_ce": terms[:n], "train_kd": terms[n:2 * n], "train_feat": terms[2 * n:],
            "train_acc": (s["correct"] * 100.0 / cnt).tolist(), "val_acc": val["exits"],
            "val_ensemble": val["ensemble"], "images_per_s": images_per_s * self.dist.world_size,
            "epoch_time_s": epoch_time,
        }
        self.history.append(row)
        self.epoch += 1
        self.step_in_epoch = 0
        self.sums = None
        metric = self._select_metric(val)
        improved = metric > self.best["value"]
        if improved:
            self.best = {"value": metric, "epoch": self.epoch, "val": val, "test": self._eval(self.data.test)}
        # last.pt first: it records which epoch is best, so a kill between the two saves is repaired on
        # resume (_reconcile_best) and best.pt is never newer than last.pt.
        self._save("last.pt")
        if improved:
            self._save("best.pt")
        self.log.log_epoch(row, self.history)
        if self.dist.is_main:
            print(f"[msd_fast] epoch {self.epoch}/{self.cfg['epochs']}  loss {row['train_loss']:.4f}  "
                  f"val acc per exit {' / '.join(f'{a:.2f}' for a in val['exits'])}  "
                  f"{row['images_per_s']:.0f} img/s  {epoch_time:.1f} s", flush=True)

    def _select_metric(self, val: Dict[str, Any]) -> float:
        return val["exits"][-1] if self.cfg["best_metric"] == "last" else sum(val["exits"]) / len(val["exits"])

    # ------------------------------------------------------------------------------- checkpoints
    def _state(self) -> Dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__,
            "config": {k: v for k, v in self.cfg.items() if k != "_sources"},
            "model_name": self.cfg["model"], "num_classes": self.data.num_classes,
            "in_channels": self.data.in_channels, "width": self.cfg["width"], "dataset": self.cfg["dataset"],
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "aug_state": self.aug_state, "sums": None if self.sums is None else {k: v.cpu() for k, v in self.sums.items()},
            "rng": rng_state(), "history": self.history, "best": self.best, "wall_s": self._wall(),
            "cost": self.cost,
        }

    def _save(self, name: str) -> None:
        if self.dist.is_main:
            atomic_save(self._state(), self.run_dir / name)
        barrier(self.dist)

    def _load(self, path) -> None:
        ckpt = load_checkpoint(pathlib.Path(path))
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        self.aug_state = ckpt["aug_state"]
        self.sums = None if ckpt["sums"] is None else {k: v.to(self.device) for k, v in ckpt["sums"].items()}
        self.history, self.best, self.wall_before = ckpt["history"], ckpt["best"], ckpt["wall_s"]
        set_rng_state(ckpt["rng"])
        if self.dist.is_main:
            self._reconcile_best(pathlib.Path(path))
            print(f"[msd_fast] resumed {self.run_dir} at epoch {self.epoch + 1}, step {self.step_in_epoch}")

    def _reconcile_best(self, last_path: pathlib.Path) -> None:
        """best.pt must hold the epoch that last.pt names as best. A kill between the two saves of an epoch
        leaves an older best.pt: rewrite it from last.pt when last.pt is that epoch's end, else say so."""
        want = self.best.get("epoch")
        best_path = self.run_dir / "best.pt"
        if want is None or last_path.name != "last.pt":
            return
        try:
            have = load_checkpoint(best_path)["epoch"] if best_path.exists() else None
        except CheckpointError:
            have = None
        if have == want:
            return
        if want == self.epoch and self.step_in_epoch == 0:
            import shutil

            tmp = best_path.with_name(".best.pt.reconcile.tmp")
            shutil.copyfile(last_path, tmp)
            os.replace(tmp, best_path)
            print(f"[msd_fast] best.pt was {'missing' if have is None else f'from epoch {have}'}; the best epoch is "
                  f"{want}: rewritten from last.pt (the run was stopped between its two saves)")
        else:
            print(f"[msd_fast] warning: best.pt is {'missing' if have is None else f'from epoch {have}'} but the "
                  f"best epoch is {want}; it will be rewritten when a better epoch comes")

    # ------------------------------------------------------------------------------------ the end
    def _finish(self) -> Dict[str, Any]:
        last_test = self._eval(self.data.test)
        last_val = self.history[-1]["val_acc"] if self.history else None
        results = {
            "dataset": self.cfg["dataset"], "model": self.cfg["model"], "method": self.cfg["method"],
            "epochs_run": self.epoch, "steps": self.global_step,
            "last": {"epoch": self.epoch, "val_acc": last_val, "test_acc": last_test["exits"],
                     "test_ensemble": last_test["ensemble"]},
            "best_val": {"epoch": self.best["epoch"], "selected_by": f"{self.cfg['best_metric']} validation accuracy over exits"
                         if self.cfg["best_metric"] == "mean" else "last exit's validation accuracy",
                         "val_acc": self.best["val"] and self.best["val"]["exits"],
                         "test_acc": self.best["test"] and self.best["test"]["exits"],
                         "test_ensemble": self.best["test"] and self.best["test"]["ensemble"]},
            "params": self.cost["params"], "exit_flops": self.cost["exit_flops"], "input_size": list(self.input_size),
            "wall_time_s": self.wall_before, "speed": self.speed, "world_size": self.dist.world_size,
            "machine": f"{platform.machine()} {platform.processor() or ''} ({torch.get_num_threads()} threads)".strip(),
            "torch": torch.__version__,
        }
        if self.dist.is_main:
            import json

            (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
            self.log.close()
            print(format_results_table(results))
            print(f"[msd_fast] run directory: {self.run_dir}  (wall time {self.wall_before:.0f} s)")
        self.close()
        return results


def format_results_table(r: Dict[str, Any]) -> str:
    n = len(r["last"]["test_acc"])
    lines = [f"Per-exit top-1 accuracy (%), {r['dataset']} / {r['model']} / {r['method']}",
             "| exit | GFLOPs | val (last) | test (last) | test ensemble 1..k (last) | val (best) | test (best) |",
             "|---|---|---|---|---|---|---|"]
    b = r["best_val"]
    for k in range(n):
        val_last = r["last"]["val_acc"][k] if r["last"]["val_acc"] else float("nan")
        lines.append(f"| {k + 1} | {r['exit_flops'][k] / 1e9:.4f} | {val_last:.2f} | {r['last']['test_acc'][k]:.2f} | "
                     f"{r['last']['test_ensemble'][k]:.2f} | {b['val_acc'][k] if b['val_acc'] else float('nan'):.2f} | "
                     f"{b['test_acc'][k] if b['test_acc'] else float('nan'):.2f} |")
    lines.append(f"best-validation epoch: {b['epoch']} (selected by {b['selected_by']})")
    return "\n".join(lines)
