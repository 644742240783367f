"""Evaluation as a library: load a run's model safely, score it (anytime prediction and budgeted batch
classification), time real early exit. `evaluate_checkpoints` is what `python -m msd_fast.evaluate` runs."""
import pathlib
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..checkpoint import load_checkpoint, model_spec
from ..data import load_dataset, normalize
from ..models.loading import build_model, describe, load_weights
from .early_exit import anytime, budget_sweep, default_budgets
from .inference import EarlyExit
from .predict import predict_probs


class EvalError(RuntimeError):
    pass


def load_run(path: str, data_dir=None, device="cpu"):
    p = pathlib.Path(path)
    if not p.exists():
        raise EvalError(f"--checkpoint {path}: no such file or directory")
    if p.is_dir():
        p = p / "best.pt" if (p / "best.pt").exists() else p / "last.pt"
    try:
        ckpt = load_checkpoint(p)
    except (FileNotFoundError, ValueError) as e:
        raise EvalError(f"--checkpoint {path}: {e}") from None
    cfg = ckpt["config"]
    try:  # the one weight loader: unregistered models, weights that do not fit and NaN weights get one line
        spec = model_spec(ckpt)
        model = load_weights(build_model(spec, None, str(p)), ckpt["model"], str(p), describe(spec))
    except ValueError as e:
        raise EvalError(f"--checkpoint {path}: {e}") from None
    model.to(device).eval()
    label = f"{cfg['method']} ({cfg['model']}, seed {cfg['seed']})"
    return {"path": str(p), "ckpt": ckpt, "cfg": cfg, "model": model, "label": label,
            "data_dir": data_dir or cfg.get("data_dir")}


def _dataset_for(run, dataset_cache):
    cfg = run["cfg"]
    key = (cfg["dataset"], run["data_dir"], cfg["val_size"], cfg["split_seed"])
    if key not in dataset_cache:
        dataset_cache[key] = load_dataset(cfg["dataset"], run["data_dir"], cfg["val_size"], cfg["split_seed"])
    data = dataset_cache[key]
    ck = run["ckpt"]
    if ck["num_classes"] != data.num_classes or ck["in_channels"] != data.in_channels:
        raise EvalError(f"{run['path']}: the model has {ck['num_classes']} classes and {ck['in_channels']} input "
                        f"channels, the dataset {cfg['dataset']} has {data.num_classes} classes and "
                        f"{data.in_channels} channels")
    return data


def evaluate_run(run, data, budgets=None, n_budgets: int = 12, batch_size: int = 1000,
                 amp_dtype=None) -> Dict[str, Any]:
    model = run["model"]
    kw = dict(mean=data.mean, std=data.std, batch_size=batch_size, device=next(model.parameters()).device,
              amp_dtype=amp_dtype)
    val_p, test_p = predict_probs(model, data.val, **kw), predict_probs(model, data.test, **kw)
    input_size = (data.in_channels, *data.image_size)
    cost = model.cost(input_size)
    flops = cost["exit_flops"]
    if budgets is None:
        budgets = default_budgets(flops, n_budgets)
    return {"checkpoint": run["path"], "label": run["label"], "method": run["cfg"]["method"],
            "model": run["cfg"]["model"], "dataset": run["cfg"]["dataset"], "params": cost["params"],
            "exit_flops": flops, "anytime": anytime(test_p, data.test.labels, flops),
            "budgeted": budget_sweep(val_p, test_p, data.test.labels, flops, budgets),
            "_probs": (val_p, test_p)}


@torch.no_grad()
def measure_speed(model, data, thresholds, large_batch: int = 256, reps: int = 20) -> Dict[str, Any]:
    """Latency at batch 1 (median over samples) and throughput at a large batch, early exit vs full."""
    ee = EarlyExit(model, thresholds, preprocess=None)  # timed on normalised inputs, as the full forward
    device = next(model.parameters()).device
    x_all = normalize(data.test.images[:max(large_batch, reps)].to(device), data.mean, data.std)

    def timed(fn, xs):
        fn(xs[0])
        ts = []
        for x in xs:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ts.append(time.perf_counter() - t0)
        ts.sort()
        return ts[len(ts) // 2]

    singles = [x_all[i:i + 1] for i in range(reps)]
    big = [x_all[:large_batch]] * 3
    full = lambda x: model(x)  # noqa: E731
    out = {"batch1_latency_ms": {"early_exit": timed(ee, singles) * 1e3, "full": timed(full, singles) * 1e3},
           "large_batch": large_batch}
    t_ee, t_full = timed(ee, big), timed(full, big)
    out["large_batch_images_per_s"] = {"early_exit": large_batch / t_ee, "full": large_batch / t_full}
    out["threads"] = torch.get_num_threads()
    return out


def budgets_from_fractions(fractions: Sequence[float], exit_flops: Sequence[int]) -> List[float]:
    """Budgets given as fractions of the full model's FLOPs (exit N) -> FLOPs; each must lie in
    [exit 1's share, 1]."""
    full = float(exit_flops[-1])
    lo = exit_flops[0] / full
    for f in fractions:
        if not lo - 1e-12 <= f <= 1.0:
            raise EvalError(f"--budget-fractions: {f} is outside [{lo:.4f}, 1]: the cheapest exit costs {lo:.4f} of the "
                            f"full model")
    return [f * full for f in fractions]


def evaluate_checkpoints(checkpoints: Sequence[str], data_dir: Optional[str] = None, budgets=None,
                         budget_fractions=None, n_budgets: int = 12, device="cpu", batch_size: int = 1000,
                         amp_dtype=None, measure: bool = False, log=print, data=None) -> List[Dict[str, Any]]:
    """Evaluates every checkpoint (run directory or .pt file); raises EvalError / DataError / ValueError.
    `data`: a msd_fast Dataset for runs trained on custom data (from_tensors / from_torch); without it each
    run's dataset is loaded by the name its config holds."""
    runs = [load_run(c, data_dir, device) for c in checkpoints]
    cache: Dict[Any, Any] = {}
    results = []
    for i, run in enumerate(runs):
        log(f"[msd_fast.evaluate] {i + 1}/{len(runs)}: {run['path']}")
        data_k = data if data is not None else _dataset_for(run, cache)
        b = budgets
        if budget_fractions:
            flops = run["model"].cost((data_k.in_channels, *data_k.image_size))["exit_flops"]
            b = budgets_from_fractions(budget_fractions, flops)
        r = evaluate_run(run, data_k, b, n_budgets, batch_size, amp_dtype)
        r.pop("_probs")
        if measure:
            mid = r["budgeted"][len(r["budgeted"]) // 2]
            r["speed"] = {"budget": mid["budget"], "thresholds": mid["thresholds"],
                          **measure_speed(run["model"], data_k, mid["thresholds"])}
        results.append(r)
    return results
