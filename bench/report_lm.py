"""The early-exit LM step's table (bench/bench_lm_step.py's JSON) for docs/lm.md and its headline row."""
from bench.machine import describe

LM_STEP_NAMES = {"msd_fast_msd": "msd_fast MSD (fused linear loss)",
                 "msd_fast_joint": "msd_fast joint, alpha 0 (fused linear loss)",
                 "torchtune_style": "torchtune-style early-exit loss (logits per exit, CE; LayerSkip's)",
                 "materialised_msd": "every exit's logits, then msd_loss",
                 "plain": "the model alone, its own last-layer loss (time floor)",
                 "trunk": "the exits' hidden states, no head (memory floor)"}


def _verdict(value, target, less_is: str) -> str:
    return f"{value:.2f} (target ≤ {target:g}: {'met' if value <= target else 'missed'}{less_is})"


def lm_step_section(d: dict) -> str:
    """Per method: tokens/s, median step time, the ratio to the plain step, peak memory and its excess over
    plain's; then the three targets' verdicts, from the numbers."""
    lines = [f"Llama, hidden {d['hidden']}, {d['layers']} layers, V={d['vocab']:,}, {d['exits']} exits through the "
             f"shared head, {d['batch']} x {d['seq']} tokens, {d['dtype']}, AdamW; the N·T·V logits in fp32 would be "
             f"{d['logits_fp32_mb']:,.0f} MB.", "",
             "| method | tokens/s | step: median (runs) | vs plain, per round | step peak memory | "
             "the loss's (above the trunk) |",
             "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        name = LM_STEP_NAMES.get(r["method"], r["method"])
        if "error" in r or "median_s" not in r:
            lines.append(f"| {name} | failed: {r.get('error', d.get('times_error', '?'))} | | | | |")
            continue
        ratio = f"{r['median_ratio_to_plain']:.2f}x" if "median_ratio_to_plain" in r else "-"
        above = f"{r['loss_peak_mb']:,.0f} MB" if "loss_peak_mb" in r else "-"
        lines.append(f"| {name} | {r['tokens_per_s']:,.0f} | {r['median_s']:.2f} s ({min(r['times_s']):.2f}-"
                     f"{max(r['times_s']):.2f}) | {ratio} | {r['step_peak_mb']:,.0f} MB | {above} |")
    t = d.get("targets")
    if t:
        mem = t["msd_extra_mb_over_materialised_min"]
        lines += ["", "Targets, as ratios measured in the same rounds:",
                  f"- MSD's step / joint's step: {_verdict(t['msd_vs_joint_step'], t['msd_vs_joint_target'], '')}"
                  " — what the all-pairs distillation costs over summed CE;",
                  f"- MSD's step / the torchtune-style step: "
                  f"{_verdict(t['msd_vs_torchtune_step'], t['msd_vs_torchtune_target'], '')};",
                  "- MSD's loss memory (above the trunk) / the smaller of the materialised methods': " +
                  (_verdict(mem, t["memory_target"], "") if mem is not None else "not measured") + "."]
    probe = "torch.cuda.max_memory_allocated" if d["machine"]["gpu"] else "resident set"
    lines += ["", f"Memory: each method in its own process, the high-water mark of one step above the memory before "
              f"it, after a warm-up step ({probe}); times from one more process, methods interleaved round by round "
              f"after a warm-up of each; on {describe(d['machine'])}: `{d['command']}`."]
    return "\n".join(lines)


def lm_step_headline(d: dict):
    """The README headline row: MSD's step against the torchtune-style early-exit step."""
    rows = {r["method"]: r for r in d["rows"] if "median_s" in r}
    if "msd_fast_msd" not in rows or "torchtune_style" not in rows:
        return None
    fast, base = rows["msd_fast_msd"], rows["torchtune_style"]
    row = (f"| early-exit LM training step, MSD vs torchtune-style CE, H={d['hidden']} L={d['layers']} "
           f"V={d['vocab']} {d['batch']}x{d['seq']} {d['dtype']} | {fast['tokens_per_s']:,.0f} tok/s | "
           f"{base['tokens_per_s']:,.0f} tok/s | {d['targets']['msd_vs_torchtune_step']:.2f}x the time |")
    note = (f"- Early-exit LM step: MSD through the fused linear loss against each exit's logits and CE (torchtune's "
            f"recipe), forward + backward + AdamW, on {describe(d['machine'])}: `{d['command']}` (details: "
            f"docs/lm.md).")
    return row, note


def fsdp_memory_section(d: dict) -> str:
    """bench_fsdp_memory's table: the largest per-process peak per mode and number of processes."""
    by = {(r["mode"], r["world"]): r for r in d["rows"]}
    worlds = sorted({w for _, w in by})
    lines = [f"Llama, hidden {d['hidden']}, {d['layers']} layers, V={d['vocab']:,}, {d['exits']} exits, AdamW, "
             f"{d['steps']} steps of {d['batch']} x {d['seq']} tokens per process, the fused linear MSD loss.", "",
             "| processes | " + " | ".join(f"{m}: peak per process (parameters held)" for m in ("ddp", "fsdp")) + " |",
             "|---|---|---|"]
    for w in worlds:
        cells = []
        for m in ("ddp", "fsdp"):
            r = by.get((m, w))
            cells.append("-" if r is None else f"failed: {r['error']}" if "error" in r else
                         f"{r['max_peak_mb']:,.0f} MB ({r['params_rank0'] / 1e6:.1f}M)")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    probe = "torch.cuda.max_memory_allocated" if d["machine"]["gpu"] else "the resident-set high-water mark"
    lines += ["", f"Peak: {probe} above the process's memory before the model was built, the largest over the "
              f"processes (one process: nothing is sharded, both rows are the same run); on "
              f"{describe(d['machine'])}: `{d['command']}`."]
    return "\n".join(lines)
