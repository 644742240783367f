"""`python -m experiments.suites --suite lm`: early-exit language models on real text, joint vs BYOT vs MSD on
the same seeds.

A tiny Llama (8 layers, hidden 128, exits after layers 2, 4, 6, 8, one shared norm + head) trained from scratch
on the Python standard library's sources (BPE vocabulary 8,192, built by `python -m msd_fast.lm corpus` when
missing), every method through the fused linear loss with the same data order and initialisation per seed.
Reported: per-exit test perplexity at the best-validation checkpoint (per seed, mean, paired differences with a
95% t-interval), the early-exit curve (teacher-forced: perplexity and agreement with the last exit against the
average layers used, mean over seeds) and early-exit greedy decoding of seed 0 against its full depth
(decode_sweep.py). `--scale gpu` is the larger setting for a GPU (documented; not run on the 2-core CPU).
`--remeasure-decoding` measures decoding again on the kept runs (runs/suites/lm) and rewrites the results.
"""
import json
import statistics
import time
from typing import Dict, List

from experiments.runs import OUT, ROOT, RUNS, device_flags, paired, run

CPU = ["-c", "lm_stdlib_cpu", "--train-subset", "6000", "--epochs", "1", "--batch-size", "32", "--val-size", "300",
       "--no-progress", "--tensorboard", "false"]
GPU = ["-c", "lm_stdlib_cpu", "--train-subset", "0", "--epochs", "4", "--width", "4", "--seq-len", "256",
       "--batch-size", "64", "--amp", "bf16", "--compile", "true", "--no-progress", "--tensorboard", "false"]
KD = ["--alpha", "0.3", "--temperature", "3", "--beta-begin", "0", "--beta-end", "0"]
METHODS = {"joint": ["--method", "joint"], "byot": ["--method", "byot", *KD], "msd": ["--method", "msd", *KD]}
PAIRS = [("msd", "joint"), ("byot", "joint"), ("msd", "byot")]
CURVE_THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.01)
DECODE_THRESHOLDS = (0.2, 0.3, 0.5, 0.9)
DECODE = {"prompts": 8, "prompt_tokens": 32, "new_tokens": 48, "rounds": 3, "exit_sets": [None, [0]],
          "drafts": [[0, 2], [0, 4], [1, 4]]}
WHAT = ("Early-exit language model on real text: a tiny Llama (8 layers, hidden 128, exits after layers 2 / 4 / "
        "6 / 8 through the model's shared norm and head) trained from scratch for one epoch over 6,000 sequences of "
        "128 tokens (768k tokens) of the Python standard library's sources, BPE vocabulary 8,192; joint = the "
        "exits' summed CE (LayerSkip-style training), byot = KD from the deepest exit, msd = all-pairs KD (alpha "
        "0.3, tau 3, no hint for either), all through the fused linear loss.")


def ensure_corpus() -> str:
    from msd_fast.lm.corpus import CorpusError, build_corpus, load_corpus
    from msd_fast.lm.corpus import DEFAULT_CORPUS

    path = ROOT / DEFAULT_CORPUS
    try:
        load_corpus(path)
    except CorpusError:
        print(f"building the corpus at {path}", flush=True)
        build_corpus(path)
    return str(path)


def curves(runs: Dict[str, List[str]], corpus) -> dict:
    """The teacher-forced early-exit curve per method, mean over seeds."""
    import torch

    from msd_fast.lm.evaluate import evaluate_lm
    from msd_fast.lm.rows import split_rows
    from msd_fast.lm.load import load_lm

    out = {}
    for m, dirs in runs.items():
        per_seed = []
        for d in dirs:
            model, ck = load_lm(d)
            rows = split_rows(corpus, "test", ck["lm"]["seq_len"], "packed", torch.device("cpu"), 400)
            per_seed.append(evaluate_lm(model, rows, 64, torch.device("cpu"), thresholds=CURVE_THRESHOLDS)["curve"])
        out[m] = [{k: statistics.mean(s[i][k] for s in per_seed) for k in ("threshold", "ppl", "agreement",
                                                                          "avg_layers")}
                  for i in range(len(CURVE_THRESHOLDS))]
    return out


def decoding(runs: Dict[str, List[str]], corpus) -> dict:
    """Early-exit greedy decoding of each method's seed-0 model against its full depth (decode_sweep.py)."""
    from msd_fast.lm.decode_sweep import decode_prompts, decode_sweep
    from msd_fast.lm.load import load_lm

    prompts = decode_prompts(corpus, DECODE["prompts"], DECODE["prompt_tokens"])
    return {m: decode_sweep(load_lm(dirs[0])[0], prompts, DECODE["new_tokens"], DECODE_THRESHOLDS, DECODE["rounds"],
                            exit_sets=DECODE["exit_sets"], drafts=DECODE["drafts"]) for m, dirs in runs.items()}


def table(res: dict) -> str:
    n = len(res["exit_layers"])
    head = "| " + " | ".join(f"exit {k + 1} (layer {j})" for k, j in enumerate(res["exit_layers"])) + " |"
    lines = [f"**lm** — {res['what']} {res['seeds']} seeds; per-exit **test perplexity** (lower is better) at the "
             f"best-validation checkpoint, mean over seeds; differences are paired by seed, mean ± 95% t-interval "
             f"(negative: the first method is better); the same differences in validation perplexity below them. Measured on {res['machine']}, {res['train_min']:.0f} min of "
             f"training; `python -m experiments.suites --suite lm`.", "",
             "| method " + head, "|---" * (n + 1) + "|"]
    for m, r in res["methods"].items():
        lines.append(f"| {m} | " + " | ".join(f"{a:.2f}" for a in r["mean"]) + " |")
    for label, diffs in (("", res["differences"]), (" (validation)", res.get("val_differences", {}))):
        for key, d in diffs.items():
            lines.append(f"| {key.replace('_', ' ')}{label} | " + " | ".join(
                f"{m:+.2f} ± {c:.2f}" if c is not None else f"{m:+.2f}" for m, c in zip(d["mean"], d["ci95"])) + " |")
    lines += ["", "Early exit, teacher-forced on 51k test tokens (each token leaves at the first exit whose top "
              "probability reaches the threshold; mean over seeds): perplexity / agreement with the last exit (%) / "
              "average layers used.", "",
              "| threshold | " + " | ".join(res["curve"]) + " |", "|---" * (len(res["curve"]) + 1) + "|"]
    for i, t in enumerate(CURVE_THRESHOLDS):
        lines.append(f"| {t:.2f} | " + " | ".join(
            f"{c[i]['ppl']:.1f} / {c[i]['agreement']:.0f} / {c[i]['avg_layers']:.2f}" for c in res["curve"].values())
            + " |")
    from msd_fast.lm.decode_sweep import setting_label

    dec, first = DECODE, next(iter(res["decode"].values()))
    lines += ["", f"Early-exit greedy decoding (seed 0; {dec['prompts']} prompts of {dec['prompt_tokens']} test tokens, "
              f"{dec['new_tokens']} new tokens, batch 1, KV of skipped layers by deferred recomputation; settings "
              f"interleaved over {dec['rounds']} rounds): tokens/s (median) / speed against full depth (median of "
              "per-round ratios) / agreement with full-depth decoding (%) / layers run before a token is emitted / "
              "weights read per token against full depth (layer calls and head checks). Rows marked *exit 1 only* "
              "check the confidence of the first exit alone (one head check before the last layer).", "",
              "| threshold | " + " | ".join(res["decode"]) + " |", "|---" * (len(res["decode"]) + 1) + "|"]
    for i, row in enumerate(first):
        if row.get("draft_exit") is None:
            lines.append(f"| {setting_label(row)} | " + " | ".join(
                f"{d[i]['tokens_per_s']:.0f} / {d[i]['speed_vs_full']:.2f}x / {d[i]['agreement']:.0f} / "
                f"{d[i]['avg_layers']:.2f} / {d[i]['weights_vs_full']:.2f}" for d in res["decode"].values()) + " |")
    spec = [i for i, row in enumerate(first) if row.get("draft_exit") is not None]
    if spec:
        lines += ["", "Self-speculative decoding in the same runs (an early exit drafts, the deeper layers verify "
                  "the drafts in one call per layer; the output is full-depth decoding's, token for token): tokens/s "
                  "(median) / speed against full depth / tokens that came from the drafts (%) / weights read per "
                  "token against full depth.", "",
                  "| setting | " + " | ".join(res["decode"]) + " |", "|---" * (len(res["decode"]) + 1) + "|"]
        for i in spec:
            lines.append(f"| {setting_label(first[i])} | " + " | ".join(
                f"{d[i]['tokens_per_s']:.0f} / {d[i]['speed_vs_full']:.2f}x / {d[i]['early_share']:.0f} / "
                f"{d[i]['weights_vs_full']:.2f}" for d in res["decode"].values()) + " |")
    if res.get("decode_machine"):
        lines += ["", f"Decoding measured on {res['decode_machine']}."]
    return "\n".join(lines)


def _runs(seeds: int) -> Dict[str, List[str]]:
    return {m: [str(RUNS / "lm" / f"{m}-s{s}") for s in range(seeds)] for m in METHODS}


def _write(res: dict, a) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "suite_lm.json").write_text(json.dumps(res, indent=1))
    text = table(res)
    print(text)
    if not a.no_readme:
        from bench.readme_sections import update_readme_section

        update_readme_section("suite-lm", text)
    return 0


def main(a) -> int:
    import torch

    from bench.machine import describe, machine_info
    from msd_fast.lm.corpus import load_corpus

    if a.readme_only:
        from bench.readme_sections import update_readme_section

        update_readme_section("suite-lm", table(json.loads((OUT / "suite_lm.json").read_text())))
        return 0
    if a.remeasure_decoding:  # the kept runs of the committed results; nothing is trained
        res = json.loads((OUT / "suite_lm.json").read_text())
        res["decode"] = decoding(_runs(res["seeds"]), load_corpus(ensure_corpus()))
        res["decode_machine"] = describe(machine_info(torch.device("cpu")))
        res["val_differences"] = {f"{m}_minus_{r}": paired(res["methods"][m]["val_per_seed"],
                                                           res["methods"][r]["val_per_seed"]) for m, r in PAIRS}
        return _write(res, a)
    flags = GPU if getattr(a, "scale", "cpu") == "gpu" else CPU
    corpus = ensure_corpus()
    extra = device_flags(a) + ["--data-dir", corpus]
    t0 = time.time()
    per = {m: [run("lm", m, s, flags + mf, extra) for s in range(a.seeds)] for m, mf in METHODS.items()}
    ppl = {m: [r["best_val"]["test_ppl"] for r in rs] for m, rs in per.items()}
    val = {m: [r["best_val"]["val_ppl"] for r in rs] for m, rs in per.items()}
    first = next(iter(per.values()))[0]
    res = {"suite": "lm", "what": WHAT, "flags": flags, "methods_flags": METHODS, "seeds": a.seeds,
           "exit_layers": [j + 1 for j in (1, 3, 5, 7)], "exit_flops": first["exit_flops"],
           "methods": {m: {"mean": [statistics.mean(v[k] for v in ppl[m]) for k in range(len(ppl[m][0]))],
                           "per_seed": ppl[m], "val_per_seed": val[m],
                           "wall_s": [r["wall_time_s"] for r in per[m]]} for m in ppl},
           "differences": {f"{m}_minus_{r}": paired(ppl[m], ppl[r]) for m, r in PAIRS},
           "val_differences": {f"{m}_minus_{r}": paired(val[m], val[r]) for m, r in PAIRS}}
    loaded = load_corpus(corpus)
    res["curve"], res["decode"] = curves(_runs(a.seeds), loaded), decoding(_runs(a.seeds), loaded)
    res["machine"] = res["decode_machine"] = describe(machine_info(torch.device("cpu")))
    res["train_min"] = sum(sum(r["wall_s"]) for r in res["methods"].values()) / 60
    res["suite_min"] = (time.time() - t0) / 60
    return _write(res, a)
