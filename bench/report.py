"""Regenerates the README's headline and the performance tables (docs/) from the committed JSON under
bench/results/.

    python -m bench.report
"""
import json
import pathlib

from bench.machine import describe
from bench.readme_sections import update_readme_section
from bench.report_lm import fsdp_memory_section, lm_step_headline, lm_step_section

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BASELINE_PREFIX = "baseline"  # bench_train.py's baseline row name starts with this
LOSS_ORDER = ["naive_eager", "reference", "compiled_reference", "cpp", "triton", "memcpy_floor"]


def _load(name):
    p = RESULTS / name
    return json.loads(p.read_text()) if p.exists() else None


def loss_table(data) -> str:
    if data is None:
        return "_Not measured yet._"
    rows = data["rows"]
    cases = []
    for r in rows:
        key = (r["N"], r["B"], r["C"], r["D"], r["dtype"])
        if key not in cases:
            cases.append(key)
    lines = [f"Measured on {describe(data['machine'])}; `{data['command']}`. Forward+backward, median ms "
             f"per call, backends timed round-robin in one run (speed-up over the naive eager loss in brackets); `memcpy_floor` streams the same bytes once "
             f"(inputs read, gradients written); the last columns compare the fused backend (cpp on CPU, "
             f"triton on CUDA) with torch.compile of the reference and with that floor.", "",
             "| N | B | C | dtype | " + " | ".join(LOSS_ORDER) + " | cpp vs compiled | cpp / floor |",
             "|---" * (6 + len(LOSS_ORDER)) + "|"]
    skipped = {}
    for key in cases:
        by = {r["backend"]: r for r in rows if (r["N"], r["B"], r["C"], r["D"], r["dtype"]) == key}
        if "all" in by:
            skipped[f"N={key[0]} B={key[1]} C={key[2]} {key[4]}"] = by["all"]["skipped"]
            continue
        cells = []
        for b in LOSS_ORDER:
            r = by.get(b)
            if r is None or "median_ms" not in r:
                cells.append("—")
                if r is not None:
                    skipped[b] = r["skipped"]
            elif b == "memcpy_floor":
                cells.append(f"{r['median_ms']:.3f}")
            else:
                cells.append(f"{r['median_ms']:.3f} ({r['speedup_vs_naive']:.1f}x)")
        fast = by.get("cpp") if "median_ms" in by.get("cpp", {}) else by.get("triton", {})
        if "median_ms" in fast and "median_ms" in by.get("compiled_reference", {}):
            cells.append(f"{by['compiled_reference']['median_ms'] / fast['median_ms']:.2f}x")
            cells.append(f"{fast['median_ms'] / by['memcpy_floor']['median_ms']:.1f}x")
        else:
            cells += ["—", "—"]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[4]} | " + " | ".join(cells) + " |")
    if skipped:
        lines.append("")
        lines += [f"- `{k}` skipped: {v}" for k, v in skipped.items()]
    comp = [r["compile_s"] for r in rows if "compile_s" in r]
    if comp:
        lines.append(f"- torch.compile time of the reference (excluded above): {min(comp):.1f}-{max(comp):.1f} s per shape")
    return "\n".join(lines)


def gpu_check_section() -> str:
    """The README's GPU section: what scripts/gpu_check.sh measured, per committed GPU (bench/results/gpu/)."""
    from bench.gpu_summary import table

    runs = sorted((RESULTS / "gpu").glob("*/summary.json"))
    if not runs:
        return ("_No GPU run is committed yet: the CUDA tests and GPU benchmarks have not run on a GPU in a "
                "committed run. Run `bash scripts/gpu_check.sh OUT` on a CUDA machine, then "
                "`python -m bench.gpu_summary OUT --commit` and `python -m bench.report`._")
    return "\n\n".join(table(json.loads(p.read_text())) for p in runs)


def cpu_target_section() -> str:
    """The CPU loss at the training shape, from lists and stacked, in a tight loop and between other work."""
    runs = [(label, _load(f"loss_cpu_cpu_target{suffix}.json"))
            for label, suffix in (("tight loop", ""), ("after the heads wrote the inputs", "_after_heads"),
                                  ("after 64 MB of other traffic", "_after_flush"))]
    runs = [(label, d) for label, d in runs if d]
    if not runs:
        return "_Not measured yet: `python -m bench.bench_loss --grid cpu-target [--between-work]`._"
    names = ["naive_eager", "compiled_reference", "compiled_reference_list", "cpp", "cpp_list", "memcpy_floor",
             "autograd_floor"]
    lines = [f"Measured on {describe(runs[0][1]['machine'])}. N=4 B=128 C=100 D=512 fp32, forward+backward, "
             "median µs per call, backends round-robin in one run; `_list`: the N exits as separate tensors (as a "
             "model returns them), else one stacked [N, B, C] tensor. \"after the heads\": before every call, untimed, "
             "each exit's linear head writes its logits and the features are rewritten, as in a training step; "
             "\"after 64 MB\": untimed unrelated memory traffic first, every cache cold (the worst case). "
             "`autograd_floor`: `x.sum().backward()` on a 4-element leaf, the least any loss called with "
             "`.backward()` costs; the last column is the ratio a loss costing just the two floors together "
             "(`memcpy_floor` + `autograd_floor`) would have.",
             "", "| timing | `command` | " + " | ".join(names)
             + " | cpp_list vs compiled_reference_list | the two floors vs compiled_reference_list |",
             "|---|---|" + "---|" * (len(names) + 2)]
    for label, d in runs:
        by = {r["backend"]: r for r in d["rows"] if "median_ms" in r}
        cells = [f"{by[n]['median_ms'] * 1e3:.0f}" if n in by else "—" for n in names]
        comp = by.get("compiled_reference_list", {}).get("median_ms")
        ratio = f"{comp / by['cpp_list']['median_ms']:.2f}x" if comp and "cpp_list" in by else "—"
        floors = [by[n]["median_ms"] for n in ("memcpy_floor", "autograd_floor") if n in by]
        best = f"{comp / sum(floors):.2f}x" if comp and len(floors) == 2 else "—"
        lines.append(f"| {label} | `{d['command']}` | " + " | ".join(cells) + f" | {ratio} | {best} |")
    return "\n".join(lines)


OLDEST_TRITON_GATE = "triton_compile_gate_oldest_triton.json"  # the gate under scripts/test_oldest.sh's Triton


def _gate_summary_line(s: dict, command: str) -> str:
    return (f"`{command}` (Triton {s['triton']}): {s['configs']} configurations compiled, {s['failed']} failed, in "
            f"{s['wall_s']:.0f} s; no spill inside a loop and no local memory anywhere; "
            f"{s.get('with_parked_registers', 0)} configurations with registers parked outside the loops (stack "
            f"frames up to {s.get('max_stack_bytes', 0)} bytes).")


def compile_gate_section() -> str:
    """Registers per configuration from the committed ahead-of-time compile gate runs: the development
    Triton's and, when committed, the oldest supported Triton's (the GPU machines')."""
    data = _load("triton_compile_gate.json")
    if data is None:
        return "_Not run yet: `python -m msd_fast.kernels.compile_gate --json bench/results/triton_compile_gate.json`._"
    runs = [(data, "python -m msd_fast.kernels.compile_gate")]
    oldest = _load(OLDEST_TRITON_GATE)
    if oldest is not None:
        runs.append((oldest, f"PYTHONPATH=.venv-oldest/site python -m msd_fast.kernels.compile_gate --json "
                             f"bench/results/{OLDEST_TRITON_GATE}"))
    summaries = " ".join(_gate_summary_line(d["summary"], cmd) for d, cmd in runs)
    lines = [summaries + " Registers per thread (max over the configurations; 255 is the hardware limit):", ""]
    cols = [(d, a) for d, _ in runs for a in d["summary"]["archs"]]
    lines += ["| NP (exits rounded up) | dtype | "
              + " | ".join(f"sm_{a}, Triton {d['summary']['triton']}" for d, a in cols) + " |",
              "|---|---|" + "---|" * len(cols)]
    for NP in sorted({r["NP"] for r in data["results"] if "NP" in r}):
        for dt in ("float32", "bfloat16", "float16"):
            cells = []
            for d, a in cols:
                regs = [r["reg"] for r in d["results"]
                        if r.get("NP") == NP and r["dtype"] == dt and r["arch"] == a and "reg" in r]
                cells.append(str(max(regs)) if regs else "—")
            lines.append(f"| {NP} | {dt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def train_table(data: dict) -> str:
    lines = [f"Measured on {describe(data['machine'])}; `{data['command']}` (batch {data['batch']}, "
             f"width {data['width']}). Images/s, median of timed windows (configurations interleaved); warm-up/compile excluded "
             f"(a repeat torch.compile is short when inductor's on-disk cache already holds the graphs).", ""]
    for model, rows in data["models"].items():
        base = next(r for k, r in rows.items() if k.startswith(BASELINE_PREFIX))["images_per_s"]
        lines += [f"**{model}**", "", "| configuration | images/s | vs baseline | warm-up+compile s |", "|---|---|---|---|"]
        for name, r in rows.items():
            lines.append(f"| {name} | {r['images_per_s']:.1f} | {r['images_per_s'] / base:.2f}x | {r['warmup_s']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def _best_vs_baseline(rows: dict):
    base = next(r for k, r in rows.items() if k.startswith(BASELINE_PREFIX))["images_per_s"]
    name, best = max(((k, r) for k, r in rows.items() if not k.startswith(BASELINE_PREFIX)),
                     key=lambda kr: kr[1]["images_per_s"])
    return name, best["images_per_s"], base


def headline_section() -> str:
    """The README's first table: whole training steps on the committed GPU runs against the public-code style
    loop, and the fused loss against torch.compile of the reference; machines and commands under it."""
    lines, notes = ["| measured | msd_fast | baseline | ratio |", "|---|---|---|---|"], []
    for p in sorted((RESULTS / "gpu").glob("*/train_cuda_*.json")):
        d = json.loads(p.read_text())
        for model, rows in d["models"].items():
            name, fast, base = _best_vs_baseline(rows)
            lines.append(f"| training step, {model} batch {d['batch']} | {fast:,.0f} img/s | {base:,.0f} img/s | "
                         f"{fast / base:.2f}x |")
            notes.append(f"`{d['command']}`")
            machine = describe(d["machine"])
    if notes:
        notes = [f"- Training steps: full-width CIFAR-shaped models, 100 classes, msd_fast's defaults (bf16, "
                 f"channels-last, whole-step CUDA graph, torch.compile for the ResNets) against the public-code style loop (eager fp32, "
                 f"naive loss, DataLoader), on {machine}: " + ", ".join(notes) + "."]
    d = _load("loss_cpu_cpu_target_after_heads.json")
    by = {r["backend"]: r for r in (d or {}).get("rows", []) if "median_ms" in r}
    if "cpp_list" in by and "compiled_reference_list" in by:
        fast, base = by["cpp_list"]["median_ms"] * 1e3, by["compiled_reference_list"]["median_ms"] * 1e3
        lines.append(f"| MSD loss fwd+bwd, N=4 B=128 C=100 D=512 fp32 | {fast:.0f} µs | {base:.0f} µs | "
                     f"{base / fast:.2f}x |")
        notes.append(f"- Loss: the fused C++ kernel against torch.compile of the reference, the exits as a model "
                     f"returns them, each call after the heads wrote its inputs, on {describe(d['machine'])}: "
                     f"`{d['command']}`.")
    for dev in ("cuda", "cpu"):
        for d, headline in ((_load(f"linear_loss_{dev}.json"), linear_headline),
                            (_load(f"lm_step_{dev}.json"), lm_step_headline)):
            if d and headline(d):
                row, note = headline(d)
                lines.append(row)
                notes.append(note)
    if len(lines) == 2:
        return "_Nothing measured yet: `python -m bench.bench_train`, `python -m bench.bench_loss`._"
    return "\n".join(lines + [""] + notes)


LINEAR_NAMES = {"fused": "fused_linear_msd_loss", "materialised": "logits, then msd_loss (fused kernel)",
                "compiled_chunked_reference": "torch.compile'd grad_and_value of the reference, per chunk",
                "single_exit_flce_xN": "N one-exit fused-linear CE calls (CE only)",
                "matmul_floor": "the three GEMMs alone, full size (floor)",
                "matmul_floor_chunked": "the three GEMMs alone, over the same chunks"}


def linear_loss_section(d: dict) -> str:
    """bench_linear_loss's table: extra peak memory and median time of each method, against the logits' size
    and the matmul floor."""
    rows = {r["method"]: r for r in d["rows"]}
    lines = [f"N={d['exits']} exits, {d['tokens']:,} tokens, H={d['hidden']}, V={d['vocab']:,}, {d['dtype']}; the "
             f"N·T·V logits in fp32 would be {d['logits_fp32_mb']:,.0f} MB.", "",
             "| method | extra peak memory | of the fp32 logits | fwd+bwd: median (runs) | vs the floor, per round |",
             "|---|---|---|---|---|"]
    for key, r in rows.items():
        if "error" in r:
            lines.append(f"| {LINEAR_NAMES.get(key, key)} | failed: {r['error']} | | | |")
            continue
        ratio = f"{r['median_ratio_to_floor']:.2f}x" if "median_ratio_to_floor" in r else "-"
        lines.append(f"| {LINEAR_NAMES.get(key, key)} | {r['extra_peak_mb']:,.0f} MB | "
                     f"{r['extra_peak_pct_of_logits']:.1f}% | {r['median_s']:.2f} s ({min(r['times_s']):.2f}-"
                     f"{max(r['times_s']):.2f}) | {ratio} |")
    chunk = next((r["chunk_tokens"] for r in d["rows"] if "chunk_tokens" in r), None)
    lines += ["", f"Chunks of {chunk} tokens; extra memory above the inputs "
              f"({'torch.cuda.max_memory_allocated' if d['machine']['gpu'] else 'the resident set high-water mark'}"
              f"), each method in its own process after a warm-up; times from one more process, the methods "
              f"interleaved round by round after a warm-up of each (ratio: median over rounds of time / the "
              f"full-size GEMMs' time in that round); on {describe(d['machine'])}: `{d['command']}`."]
    return "\n".join(lines)


def linear_headline(d: dict):
    """The headline row of the fused linear loss: its extra memory against the materialised path's."""
    rows = {r["method"]: r for r in d["rows"] if "error" not in r}
    if "fused" not in rows or "materialised" not in rows:
        return None
    fast, base = rows["fused"]["extra_peak_mb"], rows["materialised"]["extra_peak_mb"]
    row = (f"| fused linear MSD loss memory, N={d['exits']} T={d['tokens']} H={d['hidden']} V={d['vocab']} "
           f"{d['dtype']} | {fast:,.0f} MB | {base:,.0f} MB | {base / fast:.1f}x less |")
    note = (f"- Fused linear loss: extra peak memory of fwd+bwd against every exit's logits materialised, on "
            f"{describe(d['machine'])}: `{d['command']}` (details: docs/linear.md).")
    return row, note


def update_readme() -> None:
    update_readme_section("headline", headline_section())
    update_readme_section("gpu-check", gpu_check_section())
    update_readme_section("compile-gate", compile_gate_section())
    update_readme_section("loss-target-cpu", cpu_target_section())
    for dev in ("cpu", "cuda"):
        lin = _load(f"linear_loss_{dev}.json")
        if lin:
            update_readme_section(f"linear-loss-{dev}", linear_loss_section(lin))
        step = _load(f"lm_step_{dev}.json")
        if step:
            update_readme_section(f"lm-step-{dev}", lm_step_section(step))
        mem = _load(f"fsdp_memory_{dev}.json")
        if mem:
            update_readme_section(f"fsdp-memory-{dev}", fsdp_memory_section(mem))
    gpu_runs = sorted(p.parent.name for p in (RESULTS / "gpu").glob("*/summary.json"))
    see_gpu = ("_The GPU check's tables (section \"GPU: what is checked, where, and how to check it\"), from "
               + ", ".join(f"`bench/results/gpu/{g}/`" for g in gpu_runs) + "._") if gpu_runs else None
    for dev in ("cpu", "cuda"):
        data = _load(f"loss_{dev}.json") or _load(f"loss_{dev}_quick.json")
        update_readme_section(f"loss-bench-{dev}", see_gpu if data is None and dev == "cuda" and see_gpu
                              else loss_table(data))
    for dev in ("cpu", "cuda"):
        tables = [train_table(t) for t in (_load(f"train_{dev}.json"), _load(f"train_{dev}_quick.json")) if t]
        if tables:
            update_readme_section(f"train-bench-{dev}", "\n".join(tables))
        elif dev == "cuda" and see_gpu:
            update_readme_section("train-bench-cuda", see_gpu)


if __name__ == "__main__":
    update_readme()
