"""Fused Triton kernel of the MSD loss: CE + all-pairs KL + feature hint, values and gradients in one pass.

One program per sample b. It views the N exits' logits of that sample as an [NP, BLOCK_C] tile (NP = N
rounded up to a power of two, padded rows masked) and walks C in chunks. The exits arrive as N separate
tensors (the model's list, never stacked into one): the kernel takes one pointer per exit (8 slots) and
builds the tile's row pointers from them once per program, so a chunk's addresses cost what a strided
[N, B, C] tensor's would.
  pass 1: online max and the two softmax normalisers per exit (T = 1 for CE, T = tau for KD);
  pass 2: p_n, q_n, l_n per chunk; P = sum_n q_n over the rows of the tile; the KD sums; and the
          gradient of the weighted total, written straight to grad_logits.
For an integer tau from 1 to 4 (TAU_INT; the default tau is 3) each pass takes one exp per element instead
of two: e = exp((z - m) / tau) gives q = e / st and exp(z - m) = e^tau, so p = e^tau / s1 (half the work of
the special-function unit, which runs at a quarter of the fp32 rate on NVIDIA GPUs; e underflows no sooner
than e^tau does, since z - m <= 0).
Maths (docs/maths.md §3), detached teachers:
  "all":  KD_n = tau^2/(N-1) (R - <P, l_n>),  R = sum_n <q_n, l_n>
          dL/dz_n = w_ce/B (p_n - onehot(y)) + w_kd tau / ((N-1) B) (N q_n - P)
  "last": KD_n = tau^2 <q_N, l_N - l_n> (n < N),  dL/dz_n = w_ce/B (p_n - onehot) + w_kd tau/B (q_n - q_N)
  FEAT_n = ||F_n - F_N||^2,  dL/dF_n = 2 w_feat / B (F_n - F_N)  (n < N; 0 for F_N)
Nothing of size N x B x C is written besides the gradients; all math is float32.
"""
import functools
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl


@triton.jit
def _exit_rows(rows, off, p0, p1, p2, p3, p4, p5, p6, p7, NP: tl.constexpr, ALIGN: tl.constexpr):
    """[NP] pointers: row n is p_n + off (the slots past N repeat p0; the caller masks those rows).
    ALIGN: every row start is a multiple of ALIGN elements from a pointer aligned as much (the launcher's
    `row_align`). The compiler cannot see alignment through the select below, and without it a tile's
    loads and stores are one element per thread (2-byte accesses for bf16, and the tile's layout puts a
    row across all warps, so every row reduction crosses warps); the hint restores vector accesses of up
    to 16 bytes and one warp per row."""
    ptr = p0 + off + rows * 0
    ptr = tl.where(rows == 1, p1 + off, ptr)
    if NP > 2:
        ptr = tl.where(rows == 2, p2 + off, ptr)
        ptr = tl.where(rows == 3, p3 + off, ptr)
    if NP > 4:
        ptr = tl.where(rows == 4, p4 + off, ptr)
        ptr = tl.where(rows == 5, p5 + off, ptr)
        ptr = tl.where(rows == 6, p6 + off, ptr)
        ptr = tl.where(rows == 7, p7 + off, ptr)
    return tl.multiple_of(ptr, [ALIGN * (p0.dtype.element_ty.primitive_bitwidth // 8)])  # bytes


# exp(x) = 2^(x LOG2E): the kernels call tl.math.exp2 with LOG2E folded into a factor they already apply.
# exp2 compiles to one MUFU.EX2 instruction; tl.exp compiled to the same plus a subnormal fix-up around it (a
# compare and two multiplies per element, a tenth of pass 2's instructions; sm_90 SASS, compile_gate --profile).
LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr: the only kind of module global a jit function may read


@triton.jit
def _int_pow(e, TAU_INT: tl.constexpr):
    """e ** TAU_INT for TAU_INT in 1..4, by multiplications."""
    if TAU_INT == 4:
        e2 = e * e
        return e2 * e2
    r = e
    if TAU_INT >= 2:
        r = r * e
    if TAU_INT >= 3:
        r = r * e
    return r


@triton.jit
def _stats_chunk(z_row, c, col_ok, row_ok, m, s1, st, k_tau, TAU_INT: tl.constexpr):
    """Pass 1 on one [NP, BLOCK_C] chunk: the running max m and the normalisers s1 = sum exp(z - m),
    st = sum exp((z - m) / tau) per row, updated online (TAU_INT > 0: exp(z - m) = exp((z - m) / tau)^tau).
    k_tau = log2(e) / tau: exp((z - m) / tau) = 2^((z - m) k_tau), one multiply after the subtraction (so an
    element near the max, the ones that count, keeps its exponent's full precision)."""
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(z_row[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.where(col_ok[None, :], x, float("-inf"))          # padded rows stay finite (0), columns -inf
    m_new = tl.maximum(m, tl.max(x, axis=1))
    d_old = m - m_new
    e = tl.math.exp2((x - m_new[:, None]) * k_tau)           # [NP, BLOCK_C] exp((z - m) / tau)
    r = tl.math.exp2(d_old * k_tau)                          # [NP] rescale of the old sums, at T = tau
    if TAU_INT > 0:
        s1 = s1 * _int_pow(r, TAU_INT) + tl.sum(_int_pow(e, TAU_INT), axis=1)
    else:
        s1 = (s1 * tl.math.exp2(d_old * LOG2E)
              + tl.sum(tl.math.exp2((x - m_new[:, None]) * LOG2E), axis=1))
    st = st * r + tl.sum(e, axis=1)
    return m_new, s1, st


@triton.jit
def _row_stats(m, s1, st, inv_tau):
    """After pass 1, per row [NP]: lse = log sum exp(z) (CE), shift with l_n = z_n / tau - shift_n, and
    1 / s1, 1 / st (pass 2's p and q from one exp when tau is an integer)."""
    return m + tl.log(s1), m * inv_tau + tl.log(st), 1.0 / s1, 1.0 / st


@triton.jit
def _grad_chunk(z_row, g_row, c, col_ok, row_ok, is_last, y_col, m, lse, shift, ce_s1, inv_st, kd_acc, r_acc,
                g_kd, g_ce, n_f, inv_tau, k_tau, TEACHER_LAST: tl.constexpr, TAU_INT: tl.constexpr,
                TILE_ACC: tl.constexpr):
    """Pass 2 on one chunk: p_n, q_n, l_n, the KD sums and d total / d z_n, stored. y_col: the sample's class
    as int32 (-1 when outside [0, C)), so the one-hot is one 32-bit compare per element. kd_acc, r_acc: the
    KD sums, per row [NP], or with TILE_ACC per tile cell [NP, BLOCK_C] (summed over the columns once, after
    the last chunk: no row reduction per chunk, for 2 x 8 more registers per thread at an [8, 256] tile)."""
    mask = row_ok[:, None] & col_ok[None, :]
    # Outside the tile's valid cells x = -inf, so q = p = 0 there with no select (padded rows have a finite
    # max from pass 1); l, which meets them in products, is selected to 0.
    x = tl.load(z_row[:, None] + c[None, :], mask=mask, other=float("-inf")).to(tl.float32)
    l = tl.where(mask, x * inv_tau - shift[:, None], 0.0)
    if TAU_INT > 0:
        e = tl.math.exp2((x - m[:, None]) * k_tau)           # one exp: q = e / st, p = e^tau / s1
        q = e * inv_st[:, None]
        ce_p = ce_s1[:, None] * _int_pow(e, TAU_INT)                       # g_ce p; ce_s1 = g_ce / s1
    else:
        q = tl.math.exp2((x * inv_tau - shift[:, None]) * LOG2E)
        ce_p = g_ce * tl.math.exp2((x - lse[:, None]) * LOG2E)   # g_ce p
    if TEACHER_LAST:
        q_last = tl.sum(tl.where(is_last[:, None], q, 0.0), axis=0)      # [BLOCK_C]
        l_last = tl.sum(tl.where(is_last[:, None], l, 0.0), axis=0)
        if TILE_ACC:
            kd_acc += q_last[None, :] * (l_last[None, :] - l)
        else:
            kd_acc += tl.sum(q_last[None, :] * (l_last[None, :] - l), axis=1)
        g = g_kd * (q - q_last[None, :])
        g = tl.where(is_last[:, None], 0.0, g)
    else:
        P = tl.sum(q, axis=0)                                              # [BLOCK_C]
        if TILE_ACC:
            r_acc += q * l
            kd_acc += P[None, :] * l
        else:
            r_acc += tl.sum(q * l, axis=1)
            kd_acc += tl.sum(P[None, :] * l, axis=1)
        g = g_kd * (n_f * q - P[None, :])
    g += ce_p
    g = tl.where(c[None, :] == y_col, g - g_ce, g)                         # - g_ce onehot(y)
    tl.store(g_row[:, None] + c[None, :], g.to(g_row.dtype.element_ty), mask=mask)
    return kd_acc, r_acc


@triton.jit
def _kd_accumulators(NP: tl.constexpr, BLOCK_C: tl.constexpr, TILE_ACC: tl.constexpr):
    """Pass 2's two KD accumulators, zero: per row [NP], or per tile cell [NP, BLOCK_C] with TILE_ACC."""
    if TILE_ACC:
        return tl.zeros([NP, BLOCK_C], tl.float32), tl.zeros([NP, BLOCK_C], tl.float32)
    else:
        return tl.zeros([NP], tl.float32), tl.zeros([NP], tl.float32)


@triton.jit
def _cross_entropy(z_row, y, C, lse, row_ok):
    """CE_n = lse_n - z_n[y] per row [NP]. A class index outside [0, C) is never read: that sample's CE is
    NaN, so the loss is NaN (checking the range on the host would need a device sync; msd_loss(validate=True)
    checks it before the call)."""
    # (The NaN comes from the masked load rather than a select after it: the select kept the 64-bit compare
    # live into pass 2, where ptxas then spilled a register on sm_80, fp16, N = 2; compile gate.)
    y_ok = (y >= 0) & (y < C)
    z_y = tl.load(z_row + y, mask=row_ok & y_ok, other=float("nan")).to(tl.float32)
    return lse - z_y


@triton.jit
def _hint(f_row, h_row, rows, row_ok, is_last, D, g_feat, NP: tl.constexpr, BLOCK_D: tl.constexpr):
    """FEAT_n = ||F_n - F_N||^2 per row [NP], and its gradient g_feat (F_n - F_N) stored (0 for F_N)."""
    feat = tl.zeros([NP], tl.float32)
    dcols = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + dcols
        fmask = row_ok[:, None] & (d < D)[None, :]                           # [NP, BLOCK_D]
        fv = tl.load(f_row[:, None] + d[None, :], mask=fmask, other=0.0).to(tl.float32)
        f_last = tl.sum(tl.where(is_last[:, None], fv, 0.0), axis=0)      # [BLOCK_D]
        diff = tl.where(is_last[:, None], 0.0, fv - f_last[None, :])
        feat += tl.sum(diff * diff, axis=1)
        tl.store(h_row[:, None] + d[None, :], (g_feat * diff).to(h_row.dtype.element_ty), mask=fmask)
    return feat


@triton.jit
def _kd_grad_scale(w_ptr, tau, inv_b, n_f, TEACHER_LAST: tl.constexpr):
    w_kd = tl.load(w_ptr + 1)
    if TEACHER_LAST:
        g_kd = w_kd * tau * inv_b
    else:
        g_kd = w_kd * tau * inv_b / (n_f - 1.0)
    return g_kd


@triton.jit
def _msd_loss_kernel(
    z0, z1, z2, z3, z4, z5, z6, z7,           # per exit: [B, C] logits (fp32 / fp16 / bf16); slots >= N = z0
    y_ptr,                                    # [B] int64 targets
    f0, f1, f2, f3, f4, f5, f6, f7,           # per exit: [B, D] features (unused when HAS_FEAT is False)
    w_ptr,                                    # [3] fp32: w_ce, w_kd, w_feat
    part_ptr,                                 # [3, N, B] fp32 out: per-sample CE, KD, FEAT
    g0, g1, g2, g3, g4, g5, g6, g7,           # per exit: [B, C] out, d total / d logits, logits' dtype
    h0, h1, h2, h3, h4, h5, h6, h7,           # per exit: [B, D] out, d total / d features, features' dtype
    N, B, C, D,  # int32 sizes; the launcher turns any equal to 1 into a constexpr (Triton's specialisation)
    tau, inv_tau, inv_b,  # fp32 scalars: tau, 1 / tau, 1 / B (from the host: B may be a constexpr 1)
    TEACHER_LAST: tl.constexpr, HAS_FEAT: tl.constexpr,
    NP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    C_ALIGN: tl.constexpr, D_ALIGN: tl.constexpr,  # row alignment in elements (`row_align`)
    TAU_INT: tl.constexpr,  # tau when it is an integer 1..4 (one exp per element and pass), else 0
    TILE_ACC: tl.constexpr,  # pass 2's KD sums per tile cell, reduced once after the loop (plan tile_acc=1)
):
    """One program per sample b: both passes over all of C, the hint, partials [3, N, b]."""
    # C and D are multiples of C_ALIGN / D_ALIGN (the launcher checked): written so, the compiler knows it,
    # and the column masks (c < C) stay whole over a vector of C_ALIGN elements.
    C = C // C_ALIGN * C_ALIGN
    D = D // D_ALIGN * D_ALIGN
    b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, NP)                                  # [NP]
    row_ok = rows < N
    is_last = rows == N - 1
    z_row = _exit_rows(rows, b * C, z0, z1, z2, z3, z4, z5, z6, z7, NP, C_ALIGN)   # [NP] -> z_n[b, 0]
    g_row = _exit_rows(rows, b * C, g0, g1, g2, g3, g4, g5, g6, g7, NP, C_ALIGN)   # [NP] -> grad z_n[b, 0]
    cols = tl.arange(0, BLOCK_C)                             # [BLOCK_C]

    k_tau = inv_tau * LOG2E                     # log2(e) / tau
    # ---- pass 1: running max m and normalisers s1 = sum exp(z - m), st = sum exp((z - m) / tau) ----
    m = tl.full([NP], float("-inf"), tl.float32)
    s1 = tl.zeros([NP], tl.float32)
    st = tl.zeros([NP], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cols
        m, s1, st = _stats_chunk(z_row, c, c < C, row_ok, m, s1, st, k_tau, TAU_INT)
    lse, shift, inv_s1, inv_st = _row_stats(m, s1, st, inv_tau)   # [NP] each

    y = tl.load(y_ptr + b)
    y_col = tl.where((y >= 0) & (y < C), y, -1).to(tl.int32)
    # Stored now, not at the end: ptxas parks values that wait across pass 2 in local memory (compile gate).
    part_off = rows.to(tl.int64) * B + b
    tl.store(part_ptr + part_off, _cross_entropy(z_row, y, C, lse, row_ok), mask=row_ok)   # CE_n

    n_f = N * 1.0                                            # fp32 whether N is a runtime int or a constexpr
    g_kd = _kd_grad_scale(w_ptr, tau, inv_b, n_f, TEACHER_LAST)
    g_ce = tl.load(w_ptr) * inv_b

    # ---- pass 2: probabilities, KD sums and the logits' gradient, chunk by chunk ----
    # "all": kd_acc <P, l_n>, r_acc <q_n, l_n> (summed to R);  "last": kd_acc <q_N, l_N - l_n>
    kd_acc, r_acc = _kd_accumulators(NP, BLOCK_C, TILE_ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cols
        kd_acc, r_acc = _grad_chunk(z_row, g_row, c, c < C, row_ok, is_last, y_col, m, lse, shift,
                                    g_ce * inv_s1, inv_st, kd_acc, r_acc, g_kd, g_ce, n_f, inv_tau, k_tau,
                                    TEACHER_LAST, TAU_INT, TILE_ACC)
    if TILE_ACC:
        kd_acc = tl.sum(kd_acc, axis=1)
        r_acc = tl.sum(r_acc, axis=1)
    if TEACHER_LAST:
        kd = tau * tau * kd_acc
    else:
        kd = tau * tau / (n_f - 1.0) * (tl.sum(r_acc, axis=0) - kd_acc)
    tl.store(part_ptr + N * B + part_off, kd, mask=row_ok)

    # ---- feature hint towards the deepest exit ----
    if HAS_FEAT:
        f_row = _exit_rows(rows, b * D, f0, f1, f2, f3, f4, f5, f6, f7, NP, D_ALIGN)   # [NP] -> F_n[b, 0]
        h_row = _exit_rows(rows, b * D, h0, h1, h2, h3, h4, h5, h6, h7, NP, D_ALIGN)   # [NP] -> grad F_n[b, 0]
        feat = _hint(f_row, h_row, rows, row_ok, is_last, D, 2.0 * tl.load(w_ptr + 2) * inv_b, NP, BLOCK_D)
    else:
        feat = tl.zeros([NP], tl.float32)
    tl.store(part_ptr + 2 * N * B + part_off, feat, mask=row_ok)


# ---------------------------------------------------------------------------------------------------
# Split-C: when the batch is small (few programs for the GPU's SMs) and C large, each sample's columns are
# cut into S slices of CS columns, one program per (sample, slice), in three launches:
#   1. stats:  per slice, m, s1, st per row                                   -> ws_stats [B, S, 3, NP]
#   2. main:   combine the S slices' stats (fixed order), pass 2 on the own slice (gradients stored), its
#              KD sums per row -> ws_kd [B, S, 2, NP]; slice 0 also writes CE and the hint
#   3. finish: per sample, KD_n from the S slices' sums (fixed order)          -> partials [1, :, b]
# Deterministic: every sum runs in a fixed order; no atomics.
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _msd_split_stats_kernel(
    z0, z1, z2, z3, z4, z5, z6, z7,           # per exit: [B, C] logits
    ws_ptr,                                   # [B, S, 3, NP] fp32 out: m, s1, st of each slice
    N, C, CS,                                 # CS: columns per slice (a multiple of BLOCK_C)
    inv_tau,
    NP: tl.constexpr, BLOCK_C: tl.constexpr, C_ALIGN: tl.constexpr, TAU_INT: tl.constexpr,
):
    C = C // C_ALIGN * C_ALIGN                # as in _msd_loss_kernel: the alignment, visible
    CS = CS // BLOCK_C * BLOCK_C
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    S = tl.num_programs(1)
    rows = tl.arange(0, NP)
    row_ok = rows < N
    z_row = _exit_rows(rows, b * C, z0, z1, z2, z3, z4, z5, z6, z7, NP, C_ALIGN)
    cols = tl.arange(0, BLOCK_C)
    c_lo = s * CS
    c_hi = tl.minimum(c_lo + CS, C)
    k_tau = inv_tau * LOG2E                   # log2(e) / tau
    m = tl.full([NP], float("-inf"), tl.float32)
    s1 = tl.zeros([NP], tl.float32)
    st = tl.zeros([NP], tl.float32)
    for c0 in range(c_lo, c_hi, BLOCK_C):
        c = c0 + cols
        m, s1, st = _stats_chunk(z_row, c, c < c_hi, row_ok, m, s1, st, k_tau, TAU_INT)
    base = ws_ptr + (b * S + s) * 3 * NP + rows
    tl.store(base, m)
    tl.store(base + NP, s1)
    tl.store(base + 2 * NP, st)


@triton.jit
def _msd_split_main_kernel(
    z0, z1, z2, z3, z4, z5, z6, z7,           # per exit: [B, C] logits
    y_ptr,                                    # [B] int64 targets
    f0, f1, f2, f3, f4, f5, f6, f7,           # per exit: [B, D] features (slice 0 only; unused without)
    w_ptr,                                    # [3] fp32: w_ce, w_kd, w_feat
    part_ptr,                                 # [3, N, B] fp32 out: CE and FEAT here, KD in the finish kernel
    g0, g1, g2, g3, g4, g5, g6, g7,           # per exit: [B, C] out, d total / d logits
    h0, h1, h2, h3, h4, h5, h6, h7,           # per exit: [B, D] out, d total / d features
    ws_ptr,                                   # [B, S, 3, NP] fp32: the stats kernel's m, s1, st
    wk_ptr,                                   # [B, S, 2, NP] fp32 out: KD sums of this slice (kd_acc, r_acc)
    N, B, C, D, CS,
    tau, inv_tau, inv_b,
    TEACHER_LAST: tl.constexpr, HAS_FEAT: tl.constexpr,
    NP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    C_ALIGN: tl.constexpr, D_ALIGN: tl.constexpr, TAU_INT: tl.constexpr, TILE_ACC: tl.constexpr,
):
    C = C // C_ALIGN * C_ALIGN                # as in _msd_loss_kernel: the alignment, visible
    D = D // D_ALIGN * D_ALIGN
    CS = CS // BLOCK_C * BLOCK_C
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    S = tl.num_programs(1)
    rows = tl.arange(0, NP)
    row_ok = rows < N
    is_last = rows == N - 1
    z_row = _exit_rows(rows, b * C, z0, z1, z2, z3, z4, z5, z6, z7, NP, C_ALIGN)
    g_row = _exit_rows(rows, b * C, g0, g1, g2, g3, g4, g5, g6, g7, NP, C_ALIGN)
    # Combine the slices' stats in slice order: m = max m_k, s1 = sum s1_k exp(m_k - m), st likewise.
    k_tau = inv_tau * LOG2E
    m = tl.full([NP], float("-inf"), tl.float32)
    s1 = tl.zeros([NP], tl.float32)
    st = tl.zeros([NP], tl.float32)
    for k in range(0, S):
        base = ws_ptr + (b * S + k) * 3 * NP + rows
        m_k = tl.load(base)
        m_new = tl.maximum(m, m_k)
        s1 = (s1 * tl.math.exp2((m - m_new) * LOG2E)
              + tl.load(base + NP) * tl.math.exp2((m_k - m_new) * LOG2E))
        st = st * tl.math.exp2((m - m_new) * k_tau) + tl.load(base + 2 * NP) * tl.math.exp2((m_k - m_new) * k_tau)
        m = m_new
    lse, shift, inv_s1, inv_st = _row_stats(m, s1, st, inv_tau)
    y = tl.load(y_ptr + b)
    y_col = tl.where((y >= 0) & (y < C), y, -1).to(tl.int32)
    part_off = rows.to(tl.int64) * B + b
    n_f = N * 1.0
    if s == 0:
        tl.store(part_ptr + part_off, _cross_entropy(z_row, y, C, lse, row_ok), mask=row_ok)   # CE_n
        if HAS_FEAT:
            f_row = _exit_rows(rows, b * D, f0, f1, f2, f3, f4, f5, f6, f7, NP, D_ALIGN)
            h_row = _exit_rows(rows, b * D, h0, h1, h2, h3, h4, h5, h6, h7, NP, D_ALIGN)
            feat = _hint(f_row, h_row, rows, row_ok, is_last, D, 2.0 * tl.load(w_ptr + 2) * inv_b, NP, BLOCK_D)
        else:
            feat = tl.zeros([NP], tl.float32)
        tl.store(part_ptr + 2 * N * B + part_off, feat, mask=row_ok)
    g_kd = _kd_grad_scale(w_ptr, tau, inv_b, n_f, TEACHER_LAST)
    g_ce = tl.load(w_ptr) * inv_b
    kd_acc, r_acc = _kd_accumulators(NP, BLOCK_C, TILE_ACC)
    cols = tl.arange(0, BLOCK_C)
    c_lo = s * CS
    c_hi = tl.minimum(c_lo + CS, C)
    # Counted from 0: as range(c_lo, c_hi, BLOCK_C) ptxas spilled a register inside this loop (sm_90, NP = 4,
    # odd C, tau = 3; compile gate).
    for c0 in range(0, c_hi - c_lo, BLOCK_C):
        c = c_lo + c0 + cols
        kd_acc, r_acc = _grad_chunk(z_row, g_row, c, c < c_hi, row_ok, is_last, y_col, m, lse, shift, g_ce * inv_s1,
                                    inv_st, kd_acc, r_acc, g_kd, g_ce, n_f, inv_tau, k_tau,
                                    TEACHER_LAST, TAU_INT, TILE_ACC)
    if TILE_ACC:
        kd_acc = tl.sum(kd_acc, axis=1)
        r_acc = tl.sum(r_acc, axis=1)
    out = wk_ptr + (b * S + s) * 2 * NP + rows
    tl.store(out, kd_acc)
    tl.store(out + NP, r_acc)


@triton.jit
def _msd_split_finish_kernel(
    wk_ptr,                                   # [B, S, 2, NP] fp32: KD sums per slice
    part_ptr,                                 # [3, N, B] fp32 out: KD row
    N, B, S,
    tau,
    TEACHER_LAST: tl.constexpr, NP: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, NP)
    row_ok = rows < N
    kd_acc = tl.zeros([NP], tl.float32)
    r_acc = tl.zeros([NP], tl.float32)
    for k in range(0, S):
        base = wk_ptr + (b * S + k) * 2 * NP + rows
        kd_acc += tl.load(base)
        r_acc += tl.load(base + NP)
    n_f = N * 1.0
    if TEACHER_LAST:
        kd = tau * tau * kd_acc
    else:
        kd = tau * tau / (n_f - 1.0) * (tl.sum(tl.where(row_ok, r_acc, 0.0), axis=0) - kd_acc)
    tl.store(part_ptr + N * B + rows.to(tl.int64) * B + b, kd, mask=row_ok)


MAX_TILE = 2048  # elements of one [NP, BLOCK] tile: bounds the registers a program needs


def _pow2(n: int) -> int:
    """The smallest power of two >= n, in plain integers (triton.next_power_of_2 is a JIT function in recent
    Triton: calling it from the host cost about 10 us a call)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
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
    # ...), and at 8 warps ptxas caps a thread at 128 registers; 16 or 32 elements each spilled registers on
    # sm_80/sm_90 (found by the compile gate, msd_fast.kernels.compile_gate) before the row-alignment hint
    # gave the tiles vector accesses; with it they need about half the registers (bench_kernel --sweep times
    # the larger tilings on a GPU before this plan changes).
    # Small tiles take fewer warps (1 up to 128 elements, 2 up to 256): with more threads than elements ptxas
    # held sm_80 at exactly 32 registers and spilled one inside pass 2 (compile gate, NP = 2, C <= 16).
    tile = NP * max(BLOCK_C, BLOCK_D)
    num_warps = 8 if tile > 1024 else 4 if tile > 256 else 2 if tile > 128 else 1
    return dict(NP=NP, BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D, num_warps=num_warps)


PLAN_ENV = "MSD_FAST_TRITON_PLAN"  # e.g. "num_warps=4,BLOCK_C=128,num_stages=2": tuning sweeps only
# max_align: a cap in bytes on the row alignment the kernels are told (row_align); "max_align=2" on bf16
# makes every access one element wide, as before the alignment hint: the sweep times both side by side.
# exps: "exps=2" keeps two exps per element and pass for an integer tau too (the kernel before TAU_INT).
# tile_acc: "tile_acc=1" accumulates pass 2's KD sums per tile cell (TILE_ACC): fewer instructions per
# chunk, more registers; the sweep weighs the two on a GPU.
# maxnreg: Triton's cap on registers per thread (a compile option, like num_warps). Triton 3.6, the GPU
# machines', gives the kernel 80 registers at N=8 C=1000 bf16 (3 programs of 8 warps per SM) where 3.8 gives
# 64; "maxnreg=64" compiles it there with no spill and 4 programs per SM. Not a default: configurations that
# need 120 registers would spill under that cap.
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


SLOTS = 8  # pointer slots per per-exit argument of the kernel (the largest N it takes)


def _slots(xs):
    """The kernel's 8 pointer slots for one per-exit argument: the N tensors, then the first repeated."""
    return list(xs) + [xs[0]] * (SLOTS - len(xs))


def kernel_args(logits, target, features, weights, partials, grad_logits, grad_features, temperature: float,
                teacher_last: bool, B: int, C: int, D: int):
    """(args, kwargs) of one launch: logits / grad_logits N tensors [B, C], features / grad_features N
    tensors [B, D] or empty lists (D = 0). The ahead-of-time compile gate binds exactly these."""
    N = len(logits)
    feats, grads_f = (features, grad_features) if features else (logits, grad_logits)  # never read: HAS_FEAT off
    args = (*_slots(logits), target, *_slots(feats), weights, partials, *_slots(grad_logits), *_slots(grads_f),
            N, B, C, D, float(temperature), 1.0 / float(temperature), 1.0 / B)
    plan = current_plan(N, C, D)
    cap = plan.get("max_align", MAX_ALIGN_BYTES)
    return args, dict(TEACHER_LAST=bool(teacher_last), HAS_FEAT=bool(features),
                      **{k: v for k, v in plan.items() if k not in LAUNCH_ONLY_KEYS},
                      C_ALIGN=row_align([*logits, *grad_logits], C, cap),
                      D_ALIGN=row_align([*features, *grad_features], D, cap), TAU_INT=tau_int(temperature, plan),
                      TILE_ACC=plan.get("tile_acc", 0) == 1)


SPLIT_ENV = "MSD_FAST_TRITON_SPLIT"  # force S slices per sample (tests, benchmarks); 1 turns the split off
PROGRAMS_PER_SM = 4                 # the split aims at this many programs per SM in all


def split_plan(B: int, C: int, BLOCK_C: int, sms: int, forced: Optional[int] = None) -> Tuple[int, int]:
    """(S, CS): slices per sample and columns per slice (a multiple of BLOCK_C, S = cdiv(C, CS), so no
    slice is empty). S = 1 unless the B programs of one-per-sample would leave SMs idle and C spans
    several chunks; `forced` (MSD_FAST_TRITON_SPLIT) overrides the heuristic."""
    chunks = _cdiv(C, BLOCK_C)
    if forced is not None:
        want = max(1, forced)
    elif B >= sms * PROGRAMS_PER_SM // 2 or chunks < 4:
        want = 1
    else:
        want = _cdiv(sms * PROGRAMS_PER_SM, B)
    want = min(want, chunks)
    if want <= 1:
        return 1, C
    CS = _cdiv(chunks, want) * BLOCK_C
    return _cdiv(C, CS), CS


_SMS: dict = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30  # the interpreter: never split unless forced
    if device.index not in _SMS:
        _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device.index]


def split_kernel_args(logits, target, features, weights, partials, grad_logits, grad_features, ws_stats, ws_kd,
                      temperature: float, teacher_last: bool, B: int, C: int, D: int, CS: int):
    """{kernel name: (args, kwargs)} of the three split-C launches (the compile gate binds exactly these)."""
    N = len(logits)
    plan = current_plan(N, C, D)
    feats, grads_f = (features, grad_features) if features else (logits, grad_logits)
    tau, inv_tau = float(temperature), 1.0 / float(temperature)
    common = dict(NP=plan["NP"], num_warps=plan["num_warps"],
                  **{k: plan[k] for k in ("num_stages", "maxnreg") if k in plan})
    S = _cdiv(C, CS)
    cap = plan.get("max_align", MAX_ALIGN_BYTES)
    c_align = row_align([*logits, *grad_logits], C, cap)
    t_int = tau_int(temperature, plan)
    return {
        "split_stats": ((*_slots(logits), ws_stats, N, C, CS, inv_tau),
                        dict(BLOCK_C=plan["BLOCK_C"], C_ALIGN=c_align, TAU_INT=t_int, **common)),
        "split_main": ((*_slots(logits), target, *_slots(feats), weights, partials, *_slots(grad_logits),
                        *_slots(grads_f), ws_stats, ws_kd, N, B, C, D, CS, tau, inv_tau, 1.0 / B),
                       dict(TEACHER_LAST=bool(teacher_last), HAS_FEAT=bool(features), BLOCK_C=plan["BLOCK_C"],
                            BLOCK_D=plan["BLOCK_D"], C_ALIGN=c_align,
                            D_ALIGN=row_align([*features, *grad_features], D, cap), TAU_INT=t_int,
                            TILE_ACC=plan.get("tile_acc", 0) == 1, **common)),
        "split_finish": ((ws_kd, partials, N, B, S, tau), dict(TEACHER_LAST=bool(teacher_last), NP=plan["NP"],
                                                              num_warps=1)),
    }


def _exit_views(xs):
    """The N exits of one input as [B, W] tensors: the list itself, or the views of one stacked [N, B, W]."""
    return list(xs[0].unbind(0)) if len(xs) == 1 and xs[0].dim() == 3 else list(xs)


def msd_loss_partials(logits, target: torch.Tensor, features, weights: torch.Tensor, temperature: float,
                      teacher_last: bool):
    """Launches the kernel(s). logits: N contiguous tensors [B, C] or one [N, B, C]; target [B] int64;
    features: likewise [B, D] / [N, B, D], or an empty list; weights [3] fp32 -> (partials [3, N, B] fp32,
    grad_logits and grad_features shaped like their input lists)."""
    grad_logits = [torch.empty_like(z) for z in logits]        # shaped like the inputs (list or stacked)
    grad_features = [torch.empty_like(f) for f in features]
    out_logits, out_features = grad_logits, grad_features
    logits, grad_logits = _exit_views(logits), _exit_views(grad_logits)
    features, grad_features = _exit_views(features), _exit_views(grad_features)
    N, (B, C) = len(logits), logits[0].shape
    D = features[0].shape[1] if features else 0
    dev = logits[0].device
    partials = torch.empty((3, N, B), dtype=torch.float32, device=dev)
    plan = current_plan(N, C, D)
    forced = os.environ.get(SPLIT_ENV)
    S, CS = split_plan(B, C, plan["BLOCK_C"], _sm_count(dev), int(forced) if forced else None)
    if S == 1:
        args, kwargs = kernel_args(logits, target, features, weights, partials, grad_logits, grad_features,
                                   temperature, teacher_last, B, C, D)
        _msd_loss_kernel[(B,)](*args, **kwargs)
        return partials, out_logits, out_features
    ws_stats = torch.empty((B, S, 3, plan["NP"]), dtype=torch.float32, device=dev)
    ws_kd = torch.empty((B, S, 2, plan["NP"]), dtype=torch.float32, device=dev)
    launches = split_kernel_args(logits, target, features, weights, partials, grad_logits, grad_features,
                                 ws_stats, ws_kd, temperature, teacher_last, B, C, D, CS)
    for name, kernel, grid in (("split_stats", _msd_split_stats_kernel, (B, S)),
                               ("split_main", _msd_split_main_kernel, (B, S)),
                               ("split_finish", _msd_split_finish_kernel, (B,))):
        args, kwargs = launches[name]
        kernel[grid](*args, **kwargs)
    return partials, out_logits, out_features
