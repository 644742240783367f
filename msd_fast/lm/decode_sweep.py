"""Early-exit and self-speculative decoding measured against full-depth decoding of the same model, prompts and
process.

Timings on a shared machine drift by tens of percent between minutes, so the settings (full depth and each
threshold) are interleaved: every round runs each setting over all prompts, in an order rotated from round to
round, after one untimed warm-up. A setting's tokens/s is the median over rounds; its speed against full depth
is the median over rounds of the ratio within a round. Only the generation after the prompt is timed (the
prompt runs at full depth in every setting).

Besides time, the counts that decide it on other hardware, per generated token: decoder-layer calls (at batch 1
each call reads the layer's weights once, whatever its rows), layer rows (the arithmetic; deferred catch-up
rows included) and exit-head checks (each reads a V x H matrix), and from them the weights read per token
against full depth, the cost of memory-bound decoding."""
import statistics
from typing import List, Optional, Sequence, Tuple

from .decode import Decoded, early_exit_generate
from .exits import LMExits
from .speculative import self_speculative_generate

FULL_DEPTH = 2.0  # a threshold above 1: no token exits early


def decode_prompts(corpus, k: int, length: int, split: str = "test") -> List[List[int]]:
    """k prompts of `length` tokens, evenly spaced through a corpus split."""
    arr = corpus.splits[split]
    step = max(1, (len(arr) - length) // k)
    return [arr[i * step:i * step + length].astype("int64").tolist() for i in range(k)]


def weights_per_call(model: LMExits) -> dict:
    """Parameters one decoder-layer call and one exit-head check read (the layers are alike in these models)."""
    layers = [sum(p.numel() for p in layer.parameters()) for layer in model.trunk_layers]
    return {"layer": statistics.mean(layers), "head": model.head(model.num_exits - 1)[0].numel()}


def _per_token(runs: Sequence[Decoded], key: str) -> float:
    steps = sum(len(r.exit_index) for r in runs)
    return sum(getattr(r, key) for r in runs) / max(1, steps)


def setting_label(row: dict) -> str:
    """A decode_sweep row's setting in words (exits 1-based, as in the tables)."""
    if row.get("draft_exit") is not None:
        return f"self-speculative, exit {row['draft_exit'] + 1} drafts {row['draft_tokens']}"
    if row["threshold"] is None:
        return "full depth"
    return f"{row['threshold']:.2f}" + ("" if not row.get("exits") else
                                        ", exit " + " ".join(str(n + 1) for n in row["exits"]) + " only")


def _decode(model, prompt, new_tokens, setting, stop_token) -> Decoded:
    threshold, exits, draft = setting
    if draft is not None:
        return self_speculative_generate(model, prompt, new_tokens, draft[0], draft[1], stop_token)
    return early_exit_generate(model, prompt, new_tokens, threshold, stop_token, exits=exits)


def decode_sweep(model: LMExits, prompts: List[List[int]], new_tokens: int, thresholds: Sequence[float],
                 rounds: int = 3, stop_token: Optional[int] = None,
                 exit_sets: Sequence[Optional[Sequence[int]]] = (None,),
                 drafts: Sequence[Tuple[int, int]] = ()) -> List[dict]:
    """One row per setting: full depth first (threshold None), then each threshold <= 1 for each set of
    checked exits (exit_sets; None: all), then self-speculative decoding for each (draft exit, draft tokens) of
    `drafts` (speculative.py; threshold None, its output is full depth's). Per row: tokens/s (median over
    rounds), speed against full depth (median of per-round ratios), agreement (%) with full-depth decoding
    position by position and identical outputs (%), layers run before a token is emitted, the share of tokens
    that came from an exit before the last, and per generated token the layer calls, layer rows, head checks
    and weights read (and their ratio to full depth)."""
    if rounds < 1 or not prompts:
        raise ValueError(f"decode_sweep: need rounds >= 1 and at least one prompt, got {rounds} and {len(prompts)}")
    full_depth = (FULL_DEPTH, None, None)
    settings = [full_depth] + [(t, None if e is None else tuple(e), None) for e in exit_sets for t in thresholds
                               if t <= 1.0] + [(FULL_DEPTH, None, (int(d), int(k))) for d, k in drafts]
    early_exit_generate(model, prompts[0], min(new_tokens, 8), FULL_DEPTH)  # warm-up, not timed
    outs = {t: [] for t in settings}         # the first round's outputs (decoding is deterministic)
    tps = {t: [] for t in settings}
    for r in range(rounds):
        order = settings[r % len(settings):] + settings[:r % len(settings)]
        for t in order:
            runs = [_decode(model, p, new_tokens, t, stop_token) for p in prompts]
            if r == 0:
                outs[t] = runs
            elif [x.tokens for x in runs] != [x.tokens for x in outs[t]]:
                raise AssertionError(f"decoding with {t} (threshold, exits, draft) changed between rounds")
            tps[t].append(sum(len(x.exit_index) for x in runs) / sum(x.seconds for x in runs))
    w = weights_per_call(model)
    full = outs[full_depth]
    last = model.num_exits - 1
    rows = []
    for t in settings:
        runs = outs[t]
        same = [sum(a == b for a, b in zip(x.tokens, f.tokens)) / max(1, len(f.tokens)) for x, f in zip(runs, full)]
        used = [u for x in runs for u in x.layers_used]
        ex = [n for x in runs for n in x.exit_index]
        calls, checks = _per_token(runs, "layer_calls"), _per_token(runs, "head_checks")
        rows.append({"threshold": None if t[0] > 1.0 else t[0], "exits": None if t[1] is None else list(t[1]),
                     "draft_exit": t[2] and t[2][0], "draft_tokens": t[2] and t[2][1],
                     "tokens_per_s": statistics.median(tps[t]),
                     "speed_vs_full": statistics.median(a / b for a, b in zip(tps[t], tps[full_depth])),
                     "agreement": 100.0 * statistics.mean(same),
                     "identical": 100.0 * statistics.mean(float(x.tokens == f.tokens) for x, f in zip(runs, full)),
                     "avg_layers": statistics.mean(used) if used else float(model.num_layers),
                     "early_share": 100.0 * sum(n < last for n in ex) / max(1, len(ex)),
                     "layer_calls_per_token": calls, "layer_rows_per_token": _per_token(runs, "layer_rows"),
                     "head_checks_per_token": checks,
                     "weights_per_token": calls * w["layer"] + checks * w["head"]})
    for row in rows:
        row["weights_vs_full"] = row["weights_per_token"] / rows[0]["weights_per_token"]
    return rows
