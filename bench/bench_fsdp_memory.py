"""Peak memory per process of an early-exit LM's training step under DDP and FSDP2 (msd_fast/train/sharding.py)
against the number of processes: each setting is one torchrun launch of --world processes (gloo on CPU, NCCL on
CUDA), each building the same Llama with exits, AdamW, and taking --steps steps of the fused linear MSD loss.

Memory: on CPU, each process's resident-set high-water mark above its resident set before the model was built
(the torch runtime excluded), the largest over the processes; on CUDA, torch.cuda.max_memory_allocated. FSDP's
parameters, gradients and AdamW state fall as 1 / processes; DDP's do not. Results:
bench/results/fsdp_memory_<device>.json; the table: docs/lm.md (bench/report.py).

    python -m bench.bench_fsdp_memory                        # CPU: 1, 2, 4 processes; hidden 512, 8 layers, V 32000
    python -m bench.bench_fsdp_memory --device cuda --worlds 1 2 4 8 --hidden 2048 --layers 16 --vocab 128256
"""
import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys

import torch

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _rss_kb(key="VmRSS"):
    with open("/proc/self/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith(key + ":")))


def worker(a) -> None:
    """One process of a torchrun launch: prints rank 0's JSON line with every rank's peak."""
    import torch.distributed as dist

    from bench.bench_lm_step import lm_with_exits
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
    base = torch.cuda.memory_allocated(dev) if cuda else _rss_kb() * 1024
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
    peak = (torch.cuda.max_memory_allocated(dev) if cuda else _rss_kb("VmHWM") * 1024) - base
    peaks = [None] * world
    dist.all_gather_object(peaks, peak / 2 ** 20)
    if rank == 0:
        params = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())  # a shard
        print(json.dumps({"mode": a.mode, "world": world, "peak_mb_per_process": peaks,
                          "max_peak_mb": max(peaks), "params_rank0": params}), flush=True)
    dist.destroy_process_group()


def _launch(a, mode, world, tries: int = 3):
    """One torchrun launch; retried on a failed start (a free port taken again between the probe and torchrun)."""
    for _ in range(tries):
        row = _launch_once(a, mode, world)
        if "error" not in row:
            break
    return row


def _launch_once(a, mode, world):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [f"--{k}={getattr(a, k)}" for k in ("device", "hidden", "layers", "vocab", "exits", "batch", "seq",
                                               "steps")]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // world)))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
                        f"--master_port={port}", "-m", "bench.bench_fsdp_memory", *args, f"--mode={mode}",
                        "--child"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if "Error:" in ln] or ["?"]
        return {"mode": mode, "world": world, "error": lines[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--modes", nargs="+", default=["ddp", "fsdp"])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--exits", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=256)
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
