"""The launch plan of the MSD loss kernels, in plain Python: tile sizes and warps per problem (launch_plan),
the tuning override the GPU sweep sets (MSD_FAST_TRITON_PLAN: the variants it still compares live only here),
the integer-tau path, the row-alignment hint and the split of C over several programs per sample."""
import functools
import os
from typing import Optional, Tuple


MAX_TILE = 2048  # elements of one [NP, BLOCK] tile: bounds the registers a program needs


def _pow2(n: int) -> int:
    """The smallest power of two >= n, in plain integers (triton.next_power_of_2 is a JIT function in recent
    Triton: calling it from the host cost about 10 us a call)."""
    return 1 << max(0, int(n) - 1).bit_length()


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=256)
def launch_plan(N: int, C: int, D: int) -> dict:
    """The compile-time choices the launcher makes for a problem of N exits, C classes and D feature dims
    (D = 0: no features): NP, BLOCK_C, BLOCK_D and num_warps. The ahead-of-time compile gate
    (msd_fast.kernels.compile_gate) enumerates exactly these."""
    if not 2 <= N <= 8:
        raise ValueError(f"logits: the Triton kernel takes 2 to 8 exits, got N = {N}")
    NP = _pow2(N)
    BLOCK_C = min(_pow2(C), max(64, MAX_TILE // NP))
    BLOCK_D = min(_pow2(D), max(64, MAX_TILE // NP)) if D > 0 else 16
    # At most 8 tile elements per thread: pass 2 keeps about ten tile-shaped values live (x, l, q, p, g, P,
    # ...), and at 8 warps ptxas caps a thread at 128 registers; the compile gate checks that no plan here
    # spills, and bench_kernel --sweep times larger tilings on a GPU before this plan changes.
    # Small tiles take fewer warps (1 up to 128 elements, 2 up to 256): with more threads than elements ptxas
    # holds sm_80 at 32 registers and spills inside pass 2 (compile gate, NP = 2, C <= 16).
    tile = NP * max(BLOCK_C, BLOCK_D)
    num_warps = 8 if tile > 1024 else 4 if tile > 256 else 2 if tile > 128 else 1
    return dict(NP=NP, BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D, num_warps=num_warps)


PLAN_ENV = "MSD_FAST_TRITON_PLAN"  # e.g. "num_warps=4,BLOCK_C=128,num_stages=2": tuning sweeps only
# The variants the GPU sweep (bench_kernel --sweep) still compares with the default plan; only this override
# selects them, so the default launch is one design:
# max_align: a cap in bytes on the row alignment the kernels are told (row_align); "max_align=2" on bf16
#   makes every access one element wide.
# exps: "exps=2" takes two exps per element and pass for an integer tau too (no TAU_INT path).
# tile_acc: "tile_acc=1" accumulates pass 2's KD sums per tile cell (TILE_ACC): fewer instructions per
#   chunk, more registers.
# maxnreg: Triton's cap on registers per thread (a compile option, like num_warps): "maxnreg=64" fits 4
#   programs of 8 warps per SM where Triton 3.6 gives the kernel 80 registers; not a default, since
#   configurations that need 120 registers would spill under it.
PLAN_KEYS = ("num_warps", "BLOCK_C", "BLOCK_D", "num_stages", "max_align", "exps", "tile_acc", "maxnreg")
LAUNCH_ONLY_KEYS = ("max_align", "exps", "tile_acc")  # plan keys that are not kernel arguments


@functools.lru_cache(maxsize=64)
def parse_plan_override(text: str) -> dict:
    """MSD_FAST_TRITON_PLAN's "key=value,..." -> {key: int}; a bad entry raises a ValueError naming it."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in PLAN_KEYS:
            raise ValueError(f"{PLAN_ENV}: unknown key {key!r} in {text!r}; expected some of {', '.join(PLAN_KEYS)}")
        try:
            v = int(value)
        except ValueError:
            raise ValueError(f"{PLAN_ENV}: {key} must be an integer, got {value!r}") from None
        if v < 1 or (key != "num_stages" and v & (v - 1)):
            raise ValueError(f"{PLAN_ENV}: {key} must be {'>= 1' if key == 'num_stages' else 'a power of two'}, "
                             f"got {v}")
        out[key] = v
    return out


def current_plan(N: int, C: int, D: int) -> dict:
    """launch_plan(N, C, D), with the entries MSD_FAST_TRITON_PLAN overrides (unset in normal use: the
    benchmark's sweep sets it to time other tilings of the same kernel; the compile gate checks only the
    launcher's own plans)."""
    text = os.environ.get(PLAN_ENV)
    plan = launch_plan(N, C, D)
    return {**plan, **parse_plan_override(text)} if text else plan


MAX_ALIGN_BYTES = 16  # the widest vector access (16 bytes per thread)


def tau_int(temperature: float, plan: Optional[dict] = None) -> int:
    """The kernels' TAU_INT: tau when it is an integer from 1 to 4 (one exp per element and pass), else 0
    (and 0 under the plan override exps=2)."""
    t = float(temperature)
    if (plan or {}).get("exps") == 2 or not (t.is_integer() and 1.0 <= t <= 4.0):
        return 0
    return int(t)


def row_align(tensors, width: int, max_bytes: int = MAX_ALIGN_BYTES) -> int:
    """The alignment, in elements, that every row start of these [B, width] tensors (the exits and the
    gradient buffers of one input) shares, up to 16 bytes: the largest power of two dividing each base
    address (in bytes) and the row pitch width * element size. The kernels are told it (C_ALIGN, D_ALIGN),
    so they can use vector loads and stores; a view at an odd offset just gets a smaller value."""
    if not tensors:
        return 1
    es = tensors[0].element_size()
    bits = min(max_bytes, MAX_ALIGN_BYTES) | width * es
    for t in tensors:
        bits |= t.data_ptr()
    return max(1, (bits & -bits) // es)


SPLIT_ENV = "MSD_FAST_TRITON_SPLIT"  # force S slices per sample (tests, benchmarks); 1 turns the split off
PROGRAMS_PER_SM = 4                 # the split aims at this many programs per SM in all


def split_plan(B: int, C: int, BLOCK_C: int, sms: int, forced: Optional[int] = None) -> Tuple[int, int]:
    """(S, CS): slices per sample and columns per slice (a multiple of BLOCK_C, S = cdiv(C, CS), so no
    slice is empty). S = 1 unless the B programs of one-per-sample would leave SMs idle and C spans
    several chunks; `forced` (MSD_FAST_TRITON_SPLIT) overrides the heuristic."""
    chunks = ceil_div(C, BLOCK_C)
    if forced is not None:
        want = max(1, forced)
    elif B >= sms * PROGRAMS_PER_SM // 2 or chunks < 4:
        want = 1
    else:
        want = ceil_div(sms * PROGRAMS_PER_SM, B)
    want = min(want, chunks)
    if want <= 1:
        return 1, C
    CS = ceil_div(chunks, want) * BLOCK_C
    return ceil_div(C, CS), CS
