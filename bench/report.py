"""Regenerates the README's performance tables from the committed JSON under bench/results/.

    python bench/report.py
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from readme_sections import update_readme_section  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
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


def update_readme() -> None:
    for dev in ("cpu", "cuda"):
        data = _load(f"loss_{dev}.json") or _load(f"loss_{dev}_quick.json")
        update_readme_section(f"loss-bench-{dev}", loss_table(data))
    from bench_train import train_table

    for dev in ("cpu", "cuda"):
        tables = [train_table(t) for t in (_load(f"train_{dev}.json"), _load(f"train_{dev}_quick.json")) if t]
        if tables:
            update_readme_section(f"train-bench-{dev}", "\n".join(tables))


if __name__ == "__main__":
    update_readme()
