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
A sample whose target is ignore_index (HAS_IGNORE) is in no term: zero partials and gradients (the caller's
weights carry the 1 / (kept samples) of the means). Nothing of size N x B x C is written besides the
gradients; all math is float32.
The shared @triton.jit pieces: msd_loss_parts.py; the launch plan: msd_loss_plan.py; the launcher:
msd_loss_launch.py.
"""
import triton
import triton.language as tl

from .msd_loss_parts import (LOG2E, cross_entropy, exit_rows, grad_chunk, hint_term, kd_accumulators,
                             kd_grad_scale, kept_rows, row_stats, slice_program, stats_chunk)


@triton.jit
def fused_msd_kernel(
    z0, z1, z2, z3, z4, z5, z6, z7,           # per exit: [B, C] logits (fp32 / fp16 / bf16); slots >= N = z0
    y_ptr,                                    # [B] int64 targets
    f0, f1, f2, f3, f4, f5, f6, f7,           # per exit: [B, D] features (unused when HAS_FEAT is False)
    w_ptr,                                    # [3] fp32: w_ce, w_kd, w_feat
    part_ptr,                                 # [3, N, B] fp32 out: per-sample CE, KD, FEAT
    g0, g1, g2, g3, g4, g5, g6, g7,           # per exit: [B, C] out, d total / d logits, logits' dtype
    h0, h1, h2, h3, h4, h5, h6, h7,           # per exit: [B, D] out, d total / d features, features' dtype
    N, B, C, D,  # int32 sizes; the launcher turns any equal to 1 into a constexpr (Triton's specialisation)
    tau, inv_tau, inv_b,  # fp32 scalars: tau, 1 / tau, 1 / B (from the host: B may be a constexpr 1)
    ign,                  # ignore_index (read when HAS_IGNORE): such a sample gets zero partials and gradients
    TEACHER_LAST: tl.constexpr, HAS_FEAT: tl.constexpr,
    NP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    C_ALIGN: tl.constexpr, D_ALIGN: tl.constexpr,  # row alignment in elements (`row_align`)
    TAU_INT: tl.constexpr,  # tau when it is an integer 1..4 (one exp per element and pass), else 0
    TILE_ACC: tl.constexpr,  # pass 2's KD sums per tile cell, reduced once after the loop (plan tile_acc=1)
    HAS_IGNORE: tl.constexpr,
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
    z_row = exit_rows(rows, b * C, z0, z1, z2, z3, z4, z5, z6, z7, NP, C_ALIGN)   # [NP] -> z_n[b, 0]
    g_row = exit_rows(rows, b * C, g0, g1, g2, g3, g4, g5, g6, g7, NP, C_ALIGN)   # [NP] -> grad z_n[b, 0]
    cols = tl.arange(0, BLOCK_C)                             # [BLOCK_C]

    k_tau = inv_tau * LOG2E                     # log2(e) / tau
    # ---- pass 1: running max m and normalisers s1 = sum exp(z - m), st = sum exp((z - m) / tau) ----
    m = tl.full([NP], float("-inf"), tl.float32)
    s1 = tl.zeros([NP], tl.float32)
    st = tl.zeros([NP], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cols
        m, s1, st = stats_chunk(z_row, c, c < C, row_ok, m, s1, st, k_tau, TAU_INT)
    lse, shift, inv_s1, inv_st = row_stats(m, s1, st, inv_tau)   # [NP] each

    y = tl.load(y_ptr + b)
    y_col = tl.where((y >= 0) & (y < C), y, -1).to(tl.int32)
    keep = kept_rows(row_ok, y, ign, HAS_IGNORE)            # [NP]: row_ok, and the sample not ignored
    # Stored now, not at the end: ptxas parks values that wait across pass 2 in local memory (compile gate).
    part_off = rows.to(tl.int64) * B + b
    tl.store(part_ptr + part_off, tl.where(keep, cross_entropy(z_row, y, C, lse, row_ok), 0.0), mask=row_ok)

    n_f = N * 1.0                                            # fp32 whether N is a runtime int or a constexpr
    g_kd = kd_grad_scale(w_ptr, tau, inv_b, n_f, TEACHER_LAST)
    g_ce = tl.load(w_ptr) * inv_b

    # ---- pass 2: probabilities, KD sums and the logits' gradient, chunk by chunk ----
    # "all": kd_acc <P, l_n>, r_acc <q_n, l_n> (summed to R);  "last": kd_acc <q_N, l_N - l_n>
    kd_acc, r_acc = kd_accumulators(NP, BLOCK_C, TILE_ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cols
        kd_acc, r_acc = grad_chunk(z_row, g_row, c, c < C, row_ok, is_last, y_col, m, lse, shift,
                                    g_ce * inv_s1, inv_st, kd_acc, r_acc, g_kd, g_ce, n_f, inv_tau, k_tau, keep,
                                    TEACHER_LAST, TAU_INT, TILE_ACC, HAS_IGNORE)
    if TILE_ACC:
        kd_acc = tl.sum(kd_acc, axis=1)
        r_acc = tl.sum(r_acc, axis=1)
    if TEACHER_LAST:
        kd = tau * tau * kd_acc
    else:
        kd = tau * tau / (n_f - 1.0) * (tl.sum(r_acc, axis=0) - kd_acc)
    tl.store(part_ptr + N * B + part_off, tl.where(keep, kd, 0.0), mask=row_ok)

    # ---- feature hint towards the deepest exit ----
    if HAS_FEAT:
        f_row = exit_rows(rows, b * D, f0, f1, f2, f3, f4, f5, f6, f7, NP, D_ALIGN)   # [NP] -> F_n[b, 0]
        h_row = exit_rows(rows, b * D, h0, h1, h2, h3, h4, h5, h6, h7, NP, D_ALIGN)   # [NP] -> grad F_n[b, 0]
        feat = hint_term(f_row, h_row, rows, row_ok, keep, is_last, D, 2.0 * tl.load(w_ptr + 2) * inv_b, NP, BLOCK_D)
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
def split_stats_kernel(
    z0, z1, z2, z3, z4, z5, z6, z7,           # per exit: [B, C] logits
    ws_ptr,                                   # [B, S, 3, NP] fp32 out: m, s1, st of each slice
    N, C, CS,                                 # CS: columns per slice (a multiple of BLOCK_C)
    inv_tau,
    NP: tl.constexpr, BLOCK_C: tl.constexpr, C_ALIGN: tl.constexpr, TAU_INT: tl.constexpr,
):
    C = C // C_ALIGN * C_ALIGN                # as in fused_msd_kernel: the alignment, visible
    CS = CS // BLOCK_C * BLOCK_C
    b, s, S, rows, row_ok, z_row = slice_program(z0, z1, z2, z3, z4, z5, z6, z7, N, C, NP, C_ALIGN)
    cols = tl.arange(0, BLOCK_C)
    c_lo = s * CS
    c_hi = tl.minimum(c_lo + CS, C)
    k_tau = inv_tau * LOG2E                   # log2(e) / tau
    m = tl.full([NP], float("-inf"), tl.float32)
    s1 = tl.zeros([NP], tl.float32)
    st = tl.zeros([NP], tl.float32)
    for c0 in range(c_lo, c_hi, BLOCK_C):
        c = c0 + cols
        m, s1, st = stats_chunk(z_row, c, c < c_hi, row_ok, m, s1, st, k_tau, TAU_INT)
    base = ws_ptr + (b * S + s) * 3 * NP + rows
    tl.store(base, m)
    tl.store(base + NP, s1)
    tl.store(base + 2 * NP, st)


@triton.jit
def split_main_kernel(
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
    ign,
    TEACHER_LAST: tl.constexpr, HAS_FEAT: tl.constexpr,
    NP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
    C_ALIGN: tl.constexpr, D_ALIGN: tl.constexpr, TAU_INT: tl.constexpr, TILE_ACC: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
):
    C = C // C_ALIGN * C_ALIGN                # as in fused_msd_kernel: the alignment, visible
    D = D // D_ALIGN * D_ALIGN
    CS = CS // BLOCK_C * BLOCK_C
    b, s, S, rows, row_ok, z_row = slice_program(z0, z1, z2, z3, z4, z5, z6, z7, N, C, NP, C_ALIGN)
    is_last = rows == N - 1
    g_row = exit_rows(rows, b * C, g0, g1, g2, g3, g4, g5, g6, g7, NP, C_ALIGN)
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
    lse, shift, inv_s1, inv_st = row_stats(m, s1, st, inv_tau)
    y = tl.load(y_ptr + b)
    y_col = tl.where((y >= 0) & (y < C), y, -1).to(tl.int32)
    keep = kept_rows(row_ok, y, ign, HAS_IGNORE)
    part_off = rows.to(tl.int64) * B + b
    n_f = N * 1.0
    if s == 0:
        tl.store(part_ptr + part_off, tl.where(keep, cross_entropy(z_row, y, C, lse, row_ok), 0.0), mask=row_ok)
        if HAS_FEAT:
            f_row = exit_rows(rows, b * D, f0, f1, f2, f3, f4, f5, f6, f7, NP, D_ALIGN)
            h_row = exit_rows(rows, b * D, h0, h1, h2, h3, h4, h5, h6, h7, NP, D_ALIGN)
            feat = hint_term(f_row, h_row, rows, row_ok, keep, is_last, D, 2.0 * tl.load(w_ptr + 2) * inv_b, NP,
                         BLOCK_D)
        else:
            feat = tl.zeros([NP], tl.float32)
        tl.store(part_ptr + 2 * N * B + part_off, feat, mask=row_ok)
    g_kd = kd_grad_scale(w_ptr, tau, inv_b, n_f, TEACHER_LAST)
    g_ce = tl.load(w_ptr) * inv_b
    if HAS_IGNORE:
        # An ignored sample's gradient is 0 through its scales (0 for finite logits), not a select per element
        # as in fused_msd_kernel: here that select made ptxas spill inside the loop (sm_80, bf16, N = 3,
        # teacher last, features; compile gate).
        g_kd = tl.where(y != ign, g_kd, 0.0)
        g_ce = tl.where(y != ign, g_ce, 0.0)
    kd_acc, r_acc = kd_accumulators(NP, BLOCK_C, TILE_ACC)
    cols = tl.arange(0, BLOCK_C)
    c_lo = s * CS
    c_hi = tl.minimum(c_lo + CS, C)
    # Counted from 0: as range(c_lo, c_hi, BLOCK_C) ptxas spilled a register inside this loop (sm_90, NP = 4,
    # odd C, tau = 3; compile gate).
    for c0 in range(0, c_hi - c_lo, BLOCK_C):
        c = c_lo + c0 + cols
        kd_acc, r_acc = grad_chunk(z_row, g_row, c, c < c_hi, row_ok, is_last, y_col, m, lse, shift, g_ce * inv_s1,
                                    inv_st, kd_acc, r_acc, g_kd, g_ce, n_f, inv_tau, k_tau, row_ok,
                                    TEACHER_LAST, TAU_INT, TILE_ACC, False)
    if TILE_ACC:
        kd_acc = tl.sum(kd_acc, axis=1)
        r_acc = tl.sum(r_acc, axis=1)
    out = wk_ptr + (b * S + s) * 2 * NP + rows
    if HAS_IGNORE:  # an ignored sample's KD sums are 0, so its KD_n is 0; y is read again so that nothing
        ignored = tl.load(y_ptr + b) == ign          # of it stays live through the loop (compile gate, sm_80)
        kd_acc = tl.where(ignored, 0.0, kd_acc)
        r_acc = tl.where(ignored, 0.0, r_acc)
    tl.store(out, kd_acc)
    tl.store(out + NP, r_acc)


@triton.jit
def split_finish_kernel(
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
