"""Reading a compiled cubin without a GPU: its resource usage (registers, stack frame, spill stores) and its
SASS through the `cuobjdump` that ships with Triton; the loops of the code, spill instructions inside them,
and an instruction profile per loop (used by the compile gate and its --profile)."""
import os
import re
import subprocess
import tempfile
from typing import Dict, List, Tuple


def _tools() -> Tuple[str, str]:
    import triton

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return os.path.join(bin_dir, "cuobjdump"), bin_dir


def _cuobjdump(cubin: bytes, flag: str) -> str:
    cuobjdump, _ = _tools()
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as fh:
        fh.write(cubin)
        path = fh.name
    try:
        return subprocess.run([cuobjdump, flag, path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)


def resource_usage(cubin: bytes) -> Dict[str, int]:
    """Registers, stack, local and shared memory of the kernel in a cubin, from `cuobjdump -res-usage`."""
    txt = _cuobjdump(cubin, "-res-usage")
    usage = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{key}:(\d+)", txt)
        if m is None:
            raise RuntimeError(f"cuobjdump printed no {key} count:\n{txt}")
        usage[key.lower()] = int(m.group(1))
    return usage


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def _sass(cubin: bytes) -> List[Tuple[int, str]]:
    """The kernel's SASS as (address, instruction) pairs."""
    return [(int(a, 16), ins) for a, ins in _SASS_LINE.findall(_cuobjdump(cubin, "-sass"))]


def _loops(code: List[Tuple[int, str]]) -> List[Tuple[int, int]]:
    """(first, last) address of every loop: a backward branch and its target."""
    loops = []
    for addr, ins in code:
        m = re.search(r"\bBRA\s+(?:`\(.*?\)\s*)?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    return loops


def spills_in_loops(cubin: bytes) -> Dict[str, int]:
    """Counts spill instructions (STL/LDL: stores and loads of the stack frame) in the SASS, split into those
    inside a loop (between a backward branch's target and the branch) and those outside every loop."""
    code = _sass(cubin)
    loops = _loops(code)
    inside = outside = 0
    for addr, ins in code:
        if re.search(r"\b(STL|LDL)\b", ins):
            if any(lo <= addr <= hi for lo, hi in loops):
                inside += 1
            else:
                outside += 1
    return {"spill_ops_in_loops": inside, "spill_ops_outside_loops": outside, "loops": len(loops)}


_ACCESS_OP = re.compile(r"\b((?:LDG|STG)\.E(?:\.[A-Z0-9]+)*|SHFL\.[A-Z]+|BAR\.SYNC)")


def sass_profile(cubin: bytes) -> Dict:
    """Static counts from the kernel's SASS: `instructions`; `access`, global loads/stores by width, warp
    shuffles and block barriers; `loops`, per loop (a backward branch and its target) its instructions,
    MUFU (exp/log/rcp), shuffles and barriers. The loss kernels are bound by how they touch memory and how
    their row reductions cross threads: 16-byte accesses (LDG.E.128 / STG.E.128) and few shuffles and
    barriers are the signs of a good tile layout; 2-byte ones (LDG.E.U16) on the tiles mean the compiler
    could not see the rows' alignment."""
    code = _sass(cubin)
    access: Dict[str, int] = {}
    for _, ins in code:
        m = _ACCESS_OP.search(ins)
        if m:
            access[m.group(1)] = access.get(m.group(1), 0) + 1
    loops = []
    for lo, hi in _loops(code):
        body = [i for a, i in code if lo <= a <= hi]
        loops.append({"instructions": len(body), "MUFU": sum("MUFU" in i for i in body),
                      "SHFL": sum("SHFL" in i for i in body), "BAR": sum("BAR.SYNC" in i for i in body)})
    return {"instructions": len(code), "access": access, "loops": loops}


# ptxas sometimes parks a few loop-invariant registers (a store offset, packed predicates) in the stack
# frame across a long loop although registers are free: one store before the loop, one load after it,
# nothing per iteration. The gate records such frames; it fails on what costs time: any spill inside a
# loop, any local memory, or a frame larger than this.
