"""One training step of an early-exit LM (forward, backward, AdamW) against the ways early-exit LMs are trained
today: a Llama with N exits through its shared final norm and head, the same batch, seeds and optimizer for
every row.

- msd_fast_msd: msd_fast's attached model, MSD (alpha 0.3, tau 3) by the fused linear loss (no N x T x V logits).
- msd_fast_joint: the same, alpha 0: the exits' summed CE (joint training), fused.
- torchtune_style: the early-exit loss as torchtune's recipe (LayerSkip's) defines it: each exit's logits
  formed through the shared head, a cross-entropy per exit, scaled (uniform) and summed. CE only.
- materialised_msd: every exit's logits formed, then msd_loss (its fused kernel) and autograd.
- plain: the model alone, its own loss at the last layer (`lm(ids, labels=ids).loss`): the time floor.
- trunk: the exits' hidden states with a loss that forms no logits (their mean square): the memory floor, what
  the trunk's activations, gradients and optimizer take; each method's memory above it is its loss's.

Time: every method in one child process, a warm-up step of each, then --reps interleaved rounds (one step of
each method per round); medians, and per round the ratio to plain's step, whose median is reported. tokens/s
counts B x T. Memory: each method in its own child; a step's peak above the memory before it (RSS high-water
mark after a warm-up step on CPU, max_memory_allocated on CUDA), and that minus the trunk's. Results:
bench/results/lm_step_<device>.json; the table: docs/lm.md (bench/report.py).

    python -m bench.bench_lm_step                       # CPU: hidden 512, 8 layers, V 32000, 4 x 512 tokens, fp32
    python -m bench.bench_lm_step --device cuda --dtype bfloat16 --hidden 2048 --layers 16 --vocab 128256 \\
        --batch 8 --seq 1024                            # a GPU (bf16 autocast, fp32 master weights)
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bench.child_process import peak_end, peak_start
from bench.child_process import run_child as run_child_of

METHODS = ("msd_fast_msd", "msd_fast_joint", "torchtune_style", "materialised_msd", "plain", "trunk")
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ALPHA, TAU = 0.3, 3.0


def lm_with_exits(a, dev):
    """The benchmark's Llama (hidden a.hidden, a.layers layers, V a.vocab) with a.exits exits through its head."""
    from msd_fast.lm import attach_lm_exits
    from msd_fast.lm.exits import even_exit_layers
    from msd_fast.lm.hf import transformers

    tf = transformers()
    torch.manual_seed(0)
    heads = max(1, a.hidden // 64)
    cfg = tf.LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden,
                         intermediate_size=(8 * a.hidden // 3 + 63) // 64 * 64, num_hidden_layers=a.layers,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         max_position_embeddings=a.seq, tie_word_embeddings=False)
    lm = tf.LlamaForCausalLM(cfg).to(dev)
    return attach_lm_exits(lm, even_exit_layers(a.layers, a.exits)[:-1])


def _batch(a, dev):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(dev)
    target = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)  # position t predicts t + 1
    return ids, target


def _loss_fn(method, model):
    """(ids, target) -> the method's loss on `model` (an LMExits)."""
    from msd_fast import fused_linear_msd_loss, msd_loss
    from msd_fast.lm.hf_loss import exit_loss_inputs

    def exits(ids):
        return exit_loss_inputs(model(ids))  # hidden states after the final norm, the shared head

    if method in ("msd_fast_msd", "msd_fast_joint"):
        alpha = ALPHA if method == "msd_fast_msd" else 0.0

        def loss(ids, target):
            hidden, w, b = exits(ids)
            return fused_linear_msd_loss(hidden, w, target, bias=b, alpha=alpha, temperature=TAU, validate=False)
    elif method == "torchtune_style":
        def loss(ids, target):  # per exit: logits through the shared head, CE; scales uniform, summing to 1
            hidden, w, _ = exits(ids)
            return sum(F.cross_entropy((h @ w.t()).flatten(0, 1).float(), target.flatten()) for h in hidden) \
                / len(hidden)
    elif method == "materialised_msd":
        def loss(ids, target):
            hidden, w, _ = exits(ids)
            return msd_loss([h @ w.t() for h in hidden], target, alpha=ALPHA, temperature=TAU, ignore_index=-100,
                            validate=False)
    elif method == "plain":
        def loss(ids, target):
            return model.lm(ids, labels=ids).loss  # HF shifts the labels itself
    elif method == "trunk":
        def loss(ids, target):
            return sum(h.float().square().mean() for h in exits(ids)[0])
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return loss


def _step_fn(method, a, dev):
    """A function doing one training step of `method` on its own copy of the model and optimizer."""
    model = lm_with_exits(a, dev).train()
    ids, target = _batch(a, dev)
    loss_fn = _loss_fn(method, model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0, foreach=True)
    amp = getattr(torch, a.dtype) if a.dtype != "float32" else None

    def step():
        with torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = loss_fn(ids, target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def child_memory(method, a):
    """One method's step peak above the memory before it, after a warm-up step (optimizer state allocated)."""
    dev = torch.device(a.device)
    step = _step_fn(method, a, dev)
    loss = float(step())
    base = peak_start(dev)
    step()
    peak = peak_end(dev) - base
    return {"method": method, "step_peak_mb": peak / 2 ** 20, "first_loss": loss}


def child_times(methods, a):
    dev = torch.device(a.device)
    steps = {m: _step_fn(m, a, dev) for m in methods}
    for s in steps.values():
        s()
    times = {m: [] for m in methods}
    for _ in range(a.reps):
        for m, s in steps.items():
            _sync(dev)
            t0 = time.perf_counter()
            s()
            _sync(dev)
            times[m].append(time.perf_counter() - t0)
    return times


def add_model_args(p: argparse.ArgumentParser, batch: int, seq: int) -> None:
    """The device and the shape of lm_with_exits's model and batch (shared with bench_fsdp_memory)."""
    p.add_argument("--device", default="cpu")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--exits", type=int, default=4)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--seq", type=int, default=seq)


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(p, batch=4, seq=512)
    p.add_argument("--dtype", default="float32", help="float32, or bfloat16 / float16 autocast")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default=None, help="JSON path (default bench/results/lm_step_<device>.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def _summarise(res, times):
    plain = times.get("plain")
    tokens = res["batch"] * res["seq"]
    trunk = next((r.get("step_peak_mb") for r in res["rows"] if r["method"] == "trunk"), None)
    for row in res["rows"]:
        t = times.get(row["method"])
        if t is None or "error" in row:
            continue
        row.update(median_s=statistics.median(t), times_s=t, tokens_per_s=tokens / statistics.median(t))
        if plain:
            row["median_ratio_to_plain"] = statistics.median(x / p for x, p in zip(t, plain))
        if trunk is not None:
            row["loss_peak_mb"] = row["step_peak_mb"] - trunk
    rows = {r["method"]: r for r in res["rows"] if "median_s" in r}
    if {"msd_fast_msd", "msd_fast_joint", "torchtune_style", "materialised_msd"} <= set(rows):
        msd, joint, tt, mat = (rows[m] for m in ("msd_fast_msd", "msd_fast_joint", "torchtune_style",
                                                  "materialised_msd"))
        ratio = lambda x, y: statistics.median(p / q for p, q in zip(x["times_s"], y["times_s"]))  # noqa: E731
        extra = [r.get("loss_peak_mb") for r in (msd, tt, mat)]
        res["targets"] = {
            "msd_vs_joint_step": ratio(msd, joint), "msd_vs_joint_target": 1.10,
            "msd_vs_torchtune_step": ratio(msd, tt), "msd_vs_torchtune_target": 1.0,
            "msd_extra_mb_over_materialised_min": (extra[0] / min(extra[1:])) if None not in extra and
            min(extra[1:]) > 0 else None, "memory_target": 0.25}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    if a.child == "times":
        print(json.dumps(child_times(a.methods.split(","), a)))
        return 0
    if a.child:
        print(json.dumps(child_memory(a.child, a)))
        return 0
    from bench.machine import machine_info
    from bench.results_file import write_results

    out = pathlib.Path(a.out) if a.out else RESULTS / f"lm_step_{a.device}.json"
    res = {"command": " ".join(["python -m bench.bench_lm_step", *argv]),
           "machine": machine_info(torch.device(a.device)),
           **{k: getattr(a, k) for k in ("dtype", "hidden", "layers", "vocab", "exits", "batch", "seq", "reps")},
           "logits_fp32_mb": a.exits * a.batch * a.seq * a.vocab * 4 / 2 ** 20, "rows": []}
    def run_child(what):
        return run_child_of("bench.bench_lm_step", argv, what)

    methods = a.methods.split(",")
    for method in methods:
        row, err = run_child(method)
        res["rows"].append(row or {"method": method, "error": err})
        print(json.dumps(res["rows"][-1]), flush=True)
        write_results(out, res)
    times, err = run_child("times")
    if times is None:
        res["times_error"] = err
    else:
        _summarise(res, times)
    write_results(out, res)
    print(json.dumps({k: res.get(k) for k in ("targets", "times_error")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
