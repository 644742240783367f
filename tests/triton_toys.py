"""Tiny Triton kernels that the compile gate must reject (tests/test_compile_gate.py compiles them for a GPU
target in a subprocess without TRITON_INTERPRET). Not part of msd_fast."""
import triton
import triton.language as tl


@triton.jit
def _toy_scalar_cast_kernel(x_ptr, B, BLOCK: tl.constexpr):
    # The bug the launcher's specialisation exposed in msd_loss: B == 1 arrives as a constexpr, which has no .to
    inv_b = 1.0 / B.to(tl.float32)
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs) * inv_b)


@triton.jit
def _toy_spill_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    # Two big tiles kept live in one warp: far more than 255 registers per thread, so ptxas spills.
    offs = tl.arange(0, BLOCK)
    a = tl.load(x_ptr + offs)
    b = tl.load(x_ptr + BLOCK + offs)
    c = tl.load(x_ptr + 2 * BLOCK + offs)
    s = tl.sum(a * b, axis=0)
    tl.store(y_ptr + offs, a * s + tl.flip(b, 0) * tl.sum(c, axis=0) + tl.flip(c, 0) * tl.sum(b, axis=0))
