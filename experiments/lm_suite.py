"""`python -m experiments.suites --suite lm`: early-exit language models on real text, joint vs BYOT vs MSD on
the same seeds.

A tiny Llama (8 layers, hidden 128, exits after layers 2, 4, 6, 8, one shared norm + head) trained from scratch
on the Python standard library's sources (BPE vocabulary 8,192, built by `python -m msd_fast.lm corpus` when
missing), every method through the fused linear loss with the same data order and initialisation per seed.
Reported: per-exit test perplexity at the best-validation checkpoint (per seed, mean, paired differences with a
95% t-interval), the early-exit curve (teacher-forced: perplexity and agreement with the last exit against the
average layers used, mean over seeds) and early-exit greedy decoding of seed 0 (tokens/s, agreement with
full-depth decoding). `--scale gpu` is the larger setting for a GPU (documented; not run on the 2-core CPU).
"""
import json
import statistics
import time
from typing import Dict, List

from experiments.suites import OUT, ROOT, RUNS, device_flags, paired, run

CPU = ["-c", "lm_stdlib_cpu", "--train-subset", "6000", "--epochs", "1", "--batch-size", "32", "--val-size", "300",
       "--no-progress", "--tensorboard", "false"]
GPU = ["-c", "lm_stdlib_cpu", "--train-subset", "0", "--epochs", "4", "--width", "4", "--seq-len", "256",
       "--batch-size", "64", "--amp", "bf16", "--compile", "true", "--no-progress", "--tensorboard", "false"]
KD = ["--alpha", "0.3", "--temperature", "3", "--beta-begin", "0", "--beta-end", "0"]
METHODS = {"joint": ["--method", "joint"], "byot": ["--method", "byot", *KD], "msd": ["--method", "msd", *KD]}
PAIRS = [("msd", "joint"), ("byot", "joint"), ("msd", "byot")]
CURVE_THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.01)
DECODE_THRESHOLDS = (0.2, 0.3, 0.5, 0.9)
WHAT = ("Early-exit language model on real text: a tiny Llama (8 layers, hidden 128, exits after layers 2 / 4 / "
        "6 / 8 through the model's shared norm and head) trained from scratch for one epoch over 6,000 sequences of "
        "128 tokens (768k tokens) of the Python standard library's sources, BPE vocabulary 8,192; joint = the "
        "exits' summed CE (LayerSkip-style training), byot = KD from the deepest exit, msd = all-pairs KD (alpha "
        "0.3, tau 3, no hint for either), all through the fused linear loss.")


def ensure_corpus() -> str:
    from msd_fast.lm.corpus import CorpusError, build_corpus, load_corpus
    from msd_fast.lm.task import DEFAULT_CORPUS

    path = ROOT / DEFAULT_CORPUS
    try:
        load_corpus(path)
    except CorpusError:
        print(f"building the corpus at {path}", flush=True)
        build_corpus(path)
    return str(path)


def curves_and_decoding(runs: Dict[str, List[str]], corpus_path: str) -> dict:
    import torch

    from msd_fast.lm.cli import decode_prompts, decode_sweep
    from msd_fast.lm.corpus import load_corpus
    from msd_fast.lm.evaluate import evaluate_lm, load_lm

    corpus = load_corpus(corpus_path)
    out = {"curve": {}, "decode": {}}
    for m, dirs in runs.items():
        per_seed = []
        for d in dirs:
            model, ck = load_lm(d)
            per_seed.append(evaluate_lm(model, corpus.splits["test"], ck["lm"]["seq_len"], 64, torch.device("cpu"),
                                        limit=400, thresholds=CURVE_THRESHOLDS)["curve"])
        out["curve"][m] = [{k: statistics.mean(s[i][k] for s in per_seed) for k in ("threshold", "ppl", "agreement",
                                                                                      "avg_layers")}
                           for i in range(len(CURVE_THRESHOLDS))]
        model, _ = load_lm(dirs[0])
        out["decode"][m] = decode_sweep(model, decode_prompts(corpus, 8, 32), 48, DECODE_THRESHOLDS)
    return out


def table(res: dict) -> str:
    n = len(res["exit_layers"])
    head = "| " + " | ".join(f"exit {k + 1} (layer {j})" for k, j in enumerate(res["exit_layers"])) + " |"
    lines = [f"**lm** — {res['what']} {res['seeds']} seeds; per-exit **test perplexity** (lower is better) at the "
             f"best-validation checkpoint, mean over seeds; differences are paired by seed, mean ± 95% t-interval "
             f"(negative: the first method is better). Measured on {res['machine']}, {res['train_min']:.0f} min of "
             f"training; `python -m experiments.suites --suite lm`.", "",
             "| method " + head, "|---" * (n + 1) + "|"]
    for m, r in res["methods"].items():
        lines.append(f"| {m} | " + " | ".join(f"{a:.2f}" for a in r["mean"]) + " |")
    for key, d in res["differences"].items():
        lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(
            f"{m:+.2f} ± {c:.2f}" if c is not None else f"{m:+.2f}" for m, c in zip(d["mean"], d["ci95"])) + " |")
    lines += ["", "Early exit, teacher-forced on 51k test tokens (each token leaves at the first exit whose top "
              "probability reaches the threshold; mean over seeds): perplexity / agreement with the last exit (%) / "
              "average layers used.", "",
              "| threshold | " + " | ".join(res["curve"]) + " |", "|---" * (len(res["curve"]) + 1) + "|"]
    for i, t in enumerate(CURVE_THRESHOLDS):
        lines.append(f"| {t:.2f} | " + " | ".join(
            f"{c[i]['ppl']:.1f} / {c[i]['agreement']:.0f} / {c[i]['avg_layers']:.2f}" for c in res["curve"].values())
            + " |")
    lines += ["", "Early-exit greedy decoding (seed 0; 8 prompts of 32 test tokens, 48 new tokens, batch 1, KV of "
              "skipped layers by deferred recomputation): tokens/s (median) / agreement with full-depth decoding "
              "(%) / average layers.", "",
              "| threshold | " + " | ".join(res["decode"]) + " |", "|---" * (len(res["decode"]) + 1) + "|"]
    for i, row in enumerate(next(iter(res["decode"].values()))):
        th = "full depth" if row["threshold"] is None else f"{row['threshold']:.2f}"
        lines.append(f"| {th} | " + " | ".join(
            f"{d[i]['tokens_per_s']:.0f} / {d[i]['agreement']:.0f} / {d[i]['avg_layers']:.2f}"
            for d in res["decode"].values()) + " |")
    return "\n".join(lines)


def main(a) -> int:
    if a.readme_only:
        from bench.readme_sections import update_readme_section

        update_readme_section("suite-lm", table(json.loads((OUT / "suite_lm.json").read_text())))
        return 0
    flags = GPU if getattr(a, "scale", "cpu") == "gpu" else CPU
    corpus = ensure_corpus()
    extra = device_flags(a) + ["--data-dir", corpus]
    t0 = time.time()
    per = {m: [run("lm", m, s, flags + mf, extra) for s in range(a.seeds)] for m, mf in METHODS.items()}
    ppl = {m: [r["best_val"]["test_ppl"] for r in rs] for m, rs in per.items()}
    import torch

    from bench.machine import describe, machine_info

    first = next(iter(per.values()))[0]
    res = {"suite": "lm", "what": WHAT, "flags": flags, "methods_flags": METHODS, "seeds": a.seeds,
           "exit_layers": [j + 1 for j in (1, 3, 5, 7)], "exit_flops": first["exit_flops"],
           "methods": {m: {"mean": [statistics.mean(v[k] for v in ppl[m]) for k in range(len(ppl[m][0]))],
                           "per_seed": ppl[m], "val_per_seed": [r["best_val"]["val_ppl"] for r in per[m]],
                           "wall_s": [r["wall_time_s"] for r in per[m]]} for m in ppl},
           "differences": {f"{m}_minus_{r}": paired(ppl[m], ppl[r]) for m, r in PAIRS}}
    res.update(curves_and_decoding({m: [str(RUNS / "lm" / f"{m}-s{s}") for s in range(a.seeds)] for m in METHODS},
                                   corpus))
    res["machine"] = describe(machine_info(torch.device("cpu")))
    res["train_min"] = sum(sum(r["wall_s"]) for r in res["methods"].values()) / 60
    res["suite_min"] = (time.time() - t0) / 60
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "suite_lm.json").write_text(json.dumps(res, indent=1))
    text = table(res)
    print(text)
    if not a.no_readme:
        from bench.readme_sections import update_readme_section

        update_readme_section("suite-lm", text)
    return 0
