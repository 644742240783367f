"""Peak memory per process of an early-exit LM's training step under DDP and FSDP2 (msd_fast/train/sharding.py)
against the number of processes: each setting is one torchrun launch of --world processes (gloo on CPU, NCCL on
CUDA), each building the same Llama with exits, AdamW, and taking --steps steps of the fused linear MSD loss.

Memory: each process's peak above its memory before the model was built, the torch runtime excluded
(bench/child_process.py: the resident-set high-water mark on CPU, torch.cuda.max_memory_allocated on CUDA),
the largest over the processes. FSDP's
parameters, gradients and AdamW state fall as 1 / processes; DDP's do not. Results:
bench/results/fsdp_memory_<device>.json; the table: docs/lm.md (bench/report.py).

    python -m bench.bench_fsdp_memory                        # CPU: 1, 2, 4 processes; hidden 512, 8 layers, V 32000
    python -m bench.bench_fsdp_memory --device cuda --worlds 1 2 4 8 --hidden 2048 --layers 16 --vocab 128256
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

import torch

from bench.bench_lm_step import add_model_args, lm_with_exits
from bench.child_process import CHILD_ENV, ROOT, peak_end, peak_start

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def worker(a) -> None:
    """One process of a torchrun launch: prints rank 0's JSON line with every rank's peak."""
    import torch.distributed as dist

    from msd_fast import fused_linear_msd_loss
    from msd_fast.distributed import DistInfo
    from msd_fast.lm.hf import transformers
    from msd_fast.lm.hf_loss import exit_loss_inputs
    from msd_fast.train.sharding import wrap

    transformers()  # imported before the baseline: the runtime is not the model's

    cuda = a.device == "cuda"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if cuda else "gloo")
    base = peak_start(dev)
    model = lm_with_exits(a, dev).train()
    module = wrap(model, a.mode, DistInfo(rank, world, rank), dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(dev)
    target = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)
    for _ in range(a.steps):
        hidden, w, b = exit_loss_inputs(module(ids))
        fused_linear_msd_loss(hidden, w, target, bias=b, validate=False).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = peak_end(dev) - base
    peaks = [None] * world
    dist.all_gather_object(peaks, peak / 2 ** 20)
    if rank == 0:
        params = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())  # a shard
        print(json.dumps({"mode": a.mode, "world": world, "peak_mb_per_process": peaks,
                          "max_peak_mb": max(peaks), "params_rank0": params}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    # About 1 launch in 10 on torch 2.14 (CPU, gloo), a process aborts after this point, at interpreter exit
    # ("terminate called without an active exception"), after its answer is out: leave without that teardown.
    sys.stdout.flush()
    os._exit(0)


def _launch(a, mode, world):
    """One torchrun launch (--standalone: its rendezvous takes a free port itself)."""
    args = [f"--{k}={getattr(a, k)}" for k in ("device", "hidden", "layers", "vocab", "exits", "batch", "seq",
                                               "steps")]
    env = dict(os.environ, **CHILD_ENV, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // world)))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                        "-m", "bench.bench_fsdp_memory", *args, f"--mode={mode}",
                        "--child"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if "Error:" in ln] or ["?"]
        return {"mode": mode, "world": world, "error": lines[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(p, batch=1, seq=256)
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--modes", nargs="+", default=["ddp", "fsdp"])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--mode", default="ddp", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/fsdp_memory_<device>.json)")
    a = p.parse_args(argv)
    a.seq = max(a.seq, 2)
    if a.child:
        worker(a)
        return 0
    from bench.machine import machine_info
    from bench.results_file import write_results

    out = pathlib.Path(a.out) if a.out else RESULTS / f"fsdp_memory_{a.device}.json"
    res = {"command": " ".join(["python -m bench.bench_fsdp_memory", *argv]),
           "machine": machine_info(torch.device(a.device)),
           **{k: getattr(a, k) for k in ("hidden", "layers", "vocab", "exits", "batch", "seq", "steps")},
           "rows": []}
    for world in a.worlds:
        for mode in a.modes:
            res["rows"].append(_launch(a, mode, world))
            print(json.dumps(res["rows"][-1]), flush=True)
            write_results(out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
