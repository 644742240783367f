"""Summary of a scripts/gpu_check.sh run: which steps passed, the CUDA tests' counts, the loss benchmark's
fused-vs-compiled ratios and bandwidth, training throughput against the baseline.

    python -m bench.gpu_summary OUTDIR            # print the table, write OUTDIR/summary.json
    python -m bench.gpu_summary OUTDIR --commit   # also copy the results to bench/results/gpu/<gpu>/
    python -m bench.gpu_summary OUT1 OUT2 --commit   # one check split over several calls (the device tool's
                                                     # 10 minutes per command): their files merged, later
                                                     # folders winning, steps.txt lines combined

bench/report.py turns the committed copies into the README's GPU section.
"""
import argparse
import json
import pathlib
import re
import shutil
import sys
import xml.etree.ElementTree as ET

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "gpu"
FILES = ("summary.json", "loss_cuda_gpu_check.json", "kernel_cuda_gpu_check.json", "cuda_tests.xml", "steps.txt")
TRAIN_GLOB = "train_cuda_*.json"  # one per (model, batch) the check runs


def _json(path: pathlib.Path):
    return json.loads(path.read_text()) if path.exists() else None


def _tests(xml_path: pathlib.Path):
    if not xml_path.exists():
        return None
    root = ET.parse(xml_path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    n["failed_names"] = [tc.get("name") for tc in suite.iter("testcase")
                         if tc.find("failure") is not None or tc.find("error") is not None]
    return n


def _sweep_best(rows):
    """Per swept shape: the launcher's own plan and the fastest candidate (bench_kernel --sweep)."""
    best = {}
    for r in rows:
        key = f"N={r['N']} B={r['B']} C={r['C']} D={r['D']} {r['dtype']}"
        b = best.setdefault(key, {"shape": key, "default": None, "best": None, "tried": 0})
        b["tried"] += 1
        if "kernel_us" not in r:
            continue
        if r["plan"].startswith("("):
            b["default"] = r
        if b["best"] is None or r["kernel_us"] < b["best"]["kernel_us"]:
            b["best"] = r
    return list(best.values())


def _steps(out: pathlib.Path) -> dict:
    """steps.txt of a gpu_check.sh folder: {step: status}."""
    steps = {}
    if (out / "steps.txt").exists():
        for line in (out / "steps.txt").read_text().splitlines():
            k, _, v = line.partition(":")
            if k.strip():
                steps[k.strip()] = v.strip()
    return steps


def summarize(out: pathlib.Path) -> dict:
    steps = _steps(out)
    loss, kernel = _json(out / "loss_cuda_gpu_check.json"), _json(out / "kernel_cuda_gpu_check.json")
    trains = [_json(p) for p in sorted(out.glob(TRAIN_GLOB))]
    machine = (loss or kernel or (trains[0] if trains else {})).get("machine", {})
    s = {"gpu": machine.get("gpu"), "torch": machine.get("torch"), "triton": machine.get("triton"),
         "python": machine.get("python"), "steps": steps, "tests": _tests(out / "cuda_tests.xml"),
         "loss": [], "train": [], "kernel": (kernel or {}).get("rows", []), "host": (kernel or {}).get("host"),
         "sweep": _sweep_best((kernel or {}).get("sweep", []))}
    rows = (loss or {}).get("rows", [])
    shapes = []
    for r in rows:
        key = (r["N"], r["B"], r["C"], r["D"], r["dtype"])
        if key not in shapes:
            shapes.append(key)
    for key in shapes:
        same = {b["backend"]: b for b in rows if (b["N"], b["B"], b["C"], b["D"], b["dtype"]) == key and "median_ms" in b}
        r = same.get("triton_list") or same.get("triton")  # the headline: the exits as the model returns them
        if r is None:
            continue
        floor = same.get("memcpy_floor", {})
        comp = same.get("compiled_reference_list") or same.get("compiled_reference", {})
        us = lambda name: same[name]["median_ms"] * 1e3 if name in same else float("nan")  # noqa: E731
        s["loss"].append({"shape": f"N={key[0]} B={key[1]} C={key[2]} D={key[3]} {key[4]}",
                          "triton_us": r["median_ms"] * 1e3, "triton_stacked_us": us("triton"),
                          "triton_nosplit_us": us("triton_list_nosplit"),
                          "compiled_reference_us": comp.get("median_ms", float("nan")) * 1e3,
                          "vs_compiled": comp.get("median_ms", float("nan")) / r["median_ms"],
                          "share_of_copy_bandwidth": floor.get("median_ms", float("nan")) / r["median_ms"]})
    for train in trains:
        for model, rows in train.get("models", {}).items():
            base = next(v for k, v in rows.items() if k.startswith("baseline"))
            for name, r in rows.items():
                s["train"].append({"model": model, "batch": train["batch"], "config": name,
                                   "images_per_s": r["images_per_s"], "ratio": r["images_per_s"] / base["images_per_s"],
                                   "warmup_s": r.get("warmup_s"), "gpu_busy_share": r.get("gpu_busy_share"),
                                   "gpu_activities_per_step": r.get("gpu_activities_per_call"),
                                   "loss_share_of_step": r.get("loss_kernels_share_of_step")})
    return s


def _us_or_dash(v) -> str:
    """A figure an older run did not measure shows as a dash."""
    return "—" if v is None else f"{v:.1f}"


def table(s: dict) -> str:
    lines = [f"GPU check on **{s['gpu']}** (torch {s['torch']}, Triton {s['triton']}, Python {s['python']})", "",
             "| step | result |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(s["steps"].items())]
    t = s["tests"]
    if t:
        failed = f" ({', '.join(t['failed_names'])})" if t.get("failed_names") else ""
        lines.append(f"| CUDA tests (cuda_tests.xml) | {t['passed']} passed, {t['failures'] + t['errors']} failed"
                     f"{failed}, {t['skipped']} skipped |")
    if s["loss"]:
        lines += ["", "| loss fwd+bwd (msd_loss, eager, exits as a list) | triton µs | stacked input µs | one program "
                  "per sample µs | torch.compile(reference) µs | vs compiled | share of copy bandwidth |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['shape']} | {r['triton_us']:.0f} | {r.get('triton_stacked_us', float('nan')):.0f} "
                  f"| {r.get('triton_nosplit_us', float('nan')):.0f} | {r['compiled_reference_us']:.0f} "
                  f"| {r['vs_compiled']:.2f}x | {100 * r['share_of_copy_bandwidth']:.0f}% |" for r in s["loss"]]
    if s.get("kernel"):
        lines += ["", "| loss on the device (CUDA graph replays) | copy of the same bytes µs | kernel µs | share of "
                  "copy bandwidth | one program per sample µs | msd_loss fwd+bwd µs | fwd+bwd, incoming gradient 2 µs | "
                  "host: msd_loss fwd µs | host: fwd+bwd µs |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| N={r['N']} B={r['B']} C={r['C']} D={r['D']} {r['dtype']} | {r['copy_us']:.1f} | {r['kernel_us']:.1f} "
                  f"| {100 * r['kernel_share_of_copy_bandwidth']:.0f}% | {r['kernel_nosplit_us']:.1f} "
                  f"| {r['loss_fwd_bwd_device_us']:.1f} | {_us_or_dash(r.get('loss_fwd_bwd_scaled_device_us'))} "
                  f"| {r['host_loss_fwd_us']:.0f} | {r['host_loss_fwd_bwd_us']:.0f} |"
                  for r in s["kernel"]]
    for b in s.get("sweep") or []:
        d, w = b["default"], b["best"]
        if d and w:
            lines += ["", f"Tiling sweep at {b['shape']} ({b['tried']} plans): the launcher's plan {d['kernel_us']:.1f} µs "
                      f"({100 * d['share_of_copy_bandwidth']:.0f}% of copy bandwidth); fastest `{w['plan']}` "
                      f"{w['kernel_us']:.1f} µs ({100 * w['share_of_copy_bandwidth']:.0f}%)."]
    if s.get("host"):
        h = s["host"]
        lines += ["", f"Host cost of one launch on this machine (eager, wall): a one-element PyTorch op "
                  f"{h['torch_op_launch_us']:.1f} µs, a one-argument Triton kernel {h['triton_one_arg_launch_us']:.1f} µs."]
    if s["train"]:
        lines += ["", "| training step | batch | configuration | img/s | vs baseline | warm-up s | GPU busy | GPU "
                  "kernels+copies per step | loss kernels' share of the step |", "|---|---|---|---|---|---|---|---|---|"]
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        pct = lambda v, digits=0: "-" if v is None else f"{100 * v:.{digits}f}%"  # noqa: E731
        lines += [f"| {r['model']} | {r['batch']} | {r['config'].strip()} | {r['images_per_s']:.0f} | {r['ratio']:.2f}x "
                  f"| {fmt(r['warmup_s'], '.1f')} | {pct(r['gpu_busy_share'])} | {fmt(r['gpu_activities_per_step'], '.0f')} "
                  f"| {pct(r.get('loss_share_of_step'), 2)} |"
                  for r in s["train"]]
    return "\n".join(lines)


def merge_runs(dirs, into: pathlib.Path) -> pathlib.Path:
    """The result files of several gpu_check.sh folders in one: each file from the last folder that has it;
    steps.txt with every folder's lines (a step named twice keeps the later status)."""
    into.mkdir(parents=True, exist_ok=True)
    steps = {}
    for d in dirs:
        for path in [d / n for n in FILES if n != "steps.txt"] + sorted(d.glob(TRAIN_GLOB)):
            if path.exists():
                shutil.copy2(path, into / path.name)
        steps.update(_steps(d))
    (into / "steps.txt").write_text("".join(f"{k}: {v}\n" for k, v in steps.items()))
    return into


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", nargs="+", help="gpu_check.sh output folder(s)")
    ap.add_argument("--commit", action="store_true", help="copy the results to bench/results/gpu/<gpu>/")
    ap.add_argument("--no-json", action="store_true", help="print only (the device run keeps its 8 files)")
    a = ap.parse_args(argv)
    dirs = [pathlib.Path(d) for d in a.outdir]
    for d in dirs:
        if not d.is_dir():
            print(f"gpu_summary: {d} is not a directory", file=sys.stderr)
            return 2
    # several folders: merged into the last one's "merged" subfolder, which is then summarised and committed
    out = dirs[0] if len(dirs) == 1 else merge_runs(dirs, dirs[-1] / "merged")
    s = summarize(out)
    if not a.no_json:
        (out / "summary.json").write_text(json.dumps(s, indent=1))
    print(table(s))
    if a.commit:
        if not s["gpu"]:
            print("gpu_summary: no benchmark JSON names the GPU; nothing to commit", file=sys.stderr)
            return 2
        dest = RESULTS / re.sub(r"[^A-Za-z0-9]+", "-", s["gpu"]).strip("-").lower()
        dest.mkdir(parents=True, exist_ok=True)
        for path in [out / n for n in FILES] + sorted(out.glob(TRAIN_GLOB)):
            if path.exists():
                shutil.copy2(path, dest / path.name)
        print(f"copied to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
