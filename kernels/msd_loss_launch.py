"""The launcher of the MSD loss kernels: the arguments of one launch (kernel_args, split_kernel_args; the
compile gate binds exactly these) and msd_loss_partials, which allocates the outputs and launches."""
import os

import torch

from .msd_loss_kernel import (fused_msd_kernel, split_finish_kernel, split_main_kernel,
                              split_stats_kernel)
from .msd_loss_plan import (LAUNCH_ONLY_KEYS, MAX_ALIGN_BYTES, SPLIT_ENV, ceil_div, current_plan, row_align,
                            split_plan, tau_int)


SLOTS = 8  # pointer slots per per-exit argument of the kernel (the largest N it takes)


def _slots(xs):
    """The kernel's 8 pointer slots for one per-exit argument: the N tensors, then the first repeated."""
    return list(xs) + [xs[0]] * (SLOTS - len(xs))


def kernel_args(logits, target, features, weights, partials, grad_logits, grad_features, temperature: float,
                teacher_last: bool, B: int, C: int, D: int, ignore_index=None):
    """(args, kwargs) of one launch: logits / grad_logits N tensors [B, C], features / grad_features N
    tensors [B, D] or empty lists (D = 0); ignore_index None or the target value of ignored samples. The
    ahead-of-time compile gate binds exactly these."""
    N = len(logits)
    feats, grads_f = (features, grad_features) if features else (logits, grad_logits)  # never read: HAS_FEAT off
    args = (*_slots(logits), target, *_slots(feats), weights, partials, *_slots(grad_logits), *_slots(grads_f),
            N, B, C, D, float(temperature), 1.0 / float(temperature), 1.0 / B,
            0 if ignore_index is None else int(ignore_index))
    plan = current_plan(N, C, D)
    cap = plan.get("max_align", MAX_ALIGN_BYTES)
    return args, dict(TEACHER_LAST=bool(teacher_last), HAS_FEAT=bool(features),
                      **{k: v for k, v in plan.items() if k not in LAUNCH_ONLY_KEYS},
                      C_ALIGN=row_align([*logits, *grad_logits], C, cap),
                      D_ALIGN=row_align([*features, *grad_features], D, cap), TAU_INT=tau_int(temperature, plan),
                      TILE_ACC=plan.get("tile_acc", 0) == 1, HAS_IGNORE=ignore_index is not None)


_SMS: dict = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30  # the interpreter: never split unless forced
    if device.index not in _SMS:
        _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device.index]


def split_kernel_args(logits, target, features, weights, partials, grad_logits, grad_features, ws_stats, ws_kd,
                      temperature: float, teacher_last: bool, B: int, C: int, D: int, CS: int, ignore_index=None):
    """{kernel name: (args, kwargs)} of the three split-C launches (the compile gate binds exactly these)."""
    N = len(logits)
    plan = current_plan(N, C, D)
    feats, grads_f = (features, grad_features) if features else (logits, grad_logits)
    tau, inv_tau = float(temperature), 1.0 / float(temperature)
    common = dict(NP=plan["NP"], num_warps=plan["num_warps"],
                  **{k: plan[k] for k in ("num_stages", "maxnreg") if k in plan})
    S = ceil_div(C, CS)
    cap = plan.get("max_align", MAX_ALIGN_BYTES)
    c_align = row_align([*logits, *grad_logits], C, cap)
    t_int = tau_int(temperature, plan)
    return {
        "split_stats": ((*_slots(logits), ws_stats, N, C, CS, inv_tau),
                        dict(BLOCK_C=plan["BLOCK_C"], C_ALIGN=c_align, TAU_INT=t_int, **common)),
        "split_main": ((*_slots(logits), target, *_slots(feats), weights, partials, *_slots(grad_logits),
                        *_slots(grads_f), ws_stats, ws_kd, N, B, C, D, CS, tau, inv_tau, 1.0 / B,
                        0 if ignore_index is None else int(ignore_index)),
                       dict(TEACHER_LAST=bool(teacher_last), HAS_FEAT=bool(features), BLOCK_C=plan["BLOCK_C"],
                            BLOCK_D=plan["BLOCK_D"], C_ALIGN=c_align,
                            D_ALIGN=row_align([*features, *grad_features], D, cap), TAU_INT=t_int,
                            TILE_ACC=plan.get("tile_acc", 0) == 1, HAS_IGNORE=ignore_index is not None, **common)),
        "split_finish": ((ws_kd, partials, N, B, S, tau), dict(TEACHER_LAST=bool(teacher_last), NP=plan["NP"],
                                                              num_warps=1)),
    }


def _exit_views(xs):
    """The N exits of one input as [B, W] tensors: the list itself, or the views of one stacked [N, B, W]."""
    return list(xs[0].unbind(0)) if len(xs) == 1 and xs[0].dim() == 3 else list(xs)


def msd_loss_partials(logits, target: torch.Tensor, features, weights: torch.Tensor, temperature: float,
                      teacher_last: bool, ignore_index=None):
    """Launches the kernel(s). logits: N contiguous tensors [B, C] or one [N, B, C]; target [B] int64;
    features: likewise [B, D] / [N, B, D], or an empty list; weights [3] fp32; samples whose target is
    ignore_index get zero partials and gradients -> (partials [3, N, B] fp32, grad_logits and grad_features
    shaped like their input lists)."""
    grad_logits = [torch.empty_like(z) for z in logits]        # shaped like the inputs (list or stacked)
    grad_features = [torch.empty_like(f) for f in features]
    out_logits, out_features = grad_logits, grad_features
    logits, grad_logits = _exit_views(logits), _exit_views(grad_logits)
    features, grad_features = _exit_views(features), _exit_views(grad_features)
    N, (B, C) = len(logits), logits[0].shape
    D = features[0].shape[1] if features else 0
    dev = logits[0].device
    partials = torch.empty((3, N, B), dtype=torch.float32, device=dev)
    plan = current_plan(N, C, D)
    forced = os.environ.get(SPLIT_ENV)
    S, CS = split_plan(B, C, plan["BLOCK_C"], _sm_count(dev), int(forced) if forced else None)
    if S == 1:
        args, kwargs = kernel_args(logits, target, features, weights, partials, grad_logits, grad_features,
                                   temperature, teacher_last, B, C, D, ignore_index)
        fused_msd_kernel[(B,)](*args, **kwargs)
        return partials, out_logits, out_features
    ws_stats = torch.empty((B, S, 3, plan["NP"]), dtype=torch.float32, device=dev)
    ws_kd = torch.empty((B, S, 2, plan["NP"]), dtype=torch.float32, device=dev)
    launches = split_kernel_args(logits, target, features, weights, partials, grad_logits, grad_features,
                                 ws_stats, ws_kd, temperature, teacher_last, B, C, D, CS, ignore_index)
    for name, kernel, grid in (("split_stats", split_stats_kernel, (B, S)),
                               ("split_main", split_main_kernel, (B, S)),
                               ("split_finish", split_finish_kernel, (B,))):
        args, kwargs = launches[name]
        kernel[grid](*args, **kwargs)
    return partials, out_logits, out_features
