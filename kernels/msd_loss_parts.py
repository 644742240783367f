"""The @triton.jit pieces the MSD loss kernels (msd_loss_kernel.py) share: tile row pointers, the online
softmax statistics of a chunk, the gradient of a chunk, cross-entropy, the feature hint and the KD scale.
The maths they implement is docs/maths.md §3 (summarised in msd_loss_kernel.py's docstring)."""
import triton
import triton.language as tl


@triton.jit
def exit_rows(rows, off, p0, p1, p2, p3, p4, p5, p6, p7, NP: tl.constexpr, ALIGN: tl.constexpr):
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
def stats_chunk(z_row, c, col_ok, row_ok, m, s1, st, k_tau, TAU_INT: tl.constexpr):
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
def row_stats(m, s1, st, inv_tau):
    """After pass 1, per row [NP]: lse = log sum exp(z) (CE), shift with l_n = z_n / tau - shift_n, and
    1 / s1, 1 / st (pass 2's p and q from one exp when tau is an integer)."""
    return m + tl.log(s1), m * inv_tau + tl.log(st), 1.0 / s1, 1.0 / st


@triton.jit
def grad_chunk(z_row, g_row, c, col_ok, row_ok, is_last, y_col, m, lse, shift, ce_s1, inv_st, kd_acc, r_acc,
                g_kd, g_ce, n_f, inv_tau, k_tau, keep, TEACHER_LAST: tl.constexpr, TAU_INT: tl.constexpr,
                TILE_ACC: tl.constexpr, HAS_IGNORE: tl.constexpr):
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
    if HAS_IGNORE:
        g = tl.where(keep[:, None], g, 0.0)                                # an ignored sample: no gradient
    tl.store(g_row[:, None] + c[None, :], g.to(g_row.dtype.element_ty), mask=mask)
    return kd_acc, r_acc


@triton.jit
def kd_accumulators(NP: tl.constexpr, BLOCK_C: tl.constexpr, TILE_ACC: tl.constexpr):
    """Pass 2's two KD accumulators, zero: per row [NP], or per tile cell [NP, BLOCK_C] with TILE_ACC."""
    if TILE_ACC:
        return tl.zeros([NP, BLOCK_C], tl.float32), tl.zeros([NP, BLOCK_C], tl.float32)
    else:
        return tl.zeros([NP], tl.float32), tl.zeros([NP], tl.float32)


@triton.jit
def cross_entropy(z_row, y, C, lse, row_ok):
    """CE_n = lse_n - z_n[y] per row [NP]. A class index outside [0, C) is never read: that sample's CE is
    NaN, so the loss is NaN (checking the range on the host would need a device sync; msd_loss(validate=True)
    checks it before the call)."""
    # (The NaN comes from the masked load rather than a select after it: the select kept the 64-bit compare
    # live into pass 2, where ptxas then spilled a register on sm_80, fp16, N = 2; compile gate.)
    y_ok = (y >= 0) & (y < C)
    z_y = tl.load(z_row + y, mask=row_ok & y_ok, other=float("nan")).to(tl.float32)
    return lse - z_y


@triton.jit
def hint_term(f_row, h_row, rows, row_ok, keep, is_last, D, g_feat, NP: tl.constexpr, BLOCK_D: tl.constexpr):
    """FEAT_n = ||F_n - F_N||^2 per row [NP], and its gradient g_feat (F_n - F_N) stored (0 for F_N); both 0
    where `keep` is false (an ignored sample)."""
    feat = tl.zeros([NP], tl.float32)
    dcols = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + dcols
        fmask = row_ok[:, None] & (d < D)[None, :]                           # [NP, BLOCK_D]
        fv = tl.load(f_row[:, None] + d[None, :], mask=fmask, other=0.0).to(tl.float32)
        f_last = tl.sum(tl.where(is_last[:, None], fv, 0.0), axis=0)      # [BLOCK_D]
        diff = tl.where(is_last[:, None] | ~keep[:, None], 0.0, fv - f_last[None, :])
        feat += tl.sum(diff * diff, axis=1)
        tl.store(h_row[:, None] + d[None, :], (g_feat * diff).to(h_row.dtype.element_ty), mask=fmask)
    return feat


@triton.jit
def kept_rows(row_ok, y, ign, HAS_IGNORE: tl.constexpr):
    """[NP]: the tile rows that count, row_ok, and none when the sample's target is ignore_index."""
    if HAS_IGNORE:
        return row_ok & (y != ign)
    else:
        return row_ok


@triton.jit
def kd_grad_scale(w_ptr, tau, inv_b, n_f, TEACHER_LAST: tl.constexpr):
    w_kd = tl.load(w_ptr + 1)
    if TEACHER_LAST:
        g_kd = w_kd * tau * inv_b
    else:
        g_kd = w_kd * tau * inv_b / (n_f - 1.0)
    return g_kd


@triton.jit
def slice_program(z0, z1, z2, z3, z4, z5, z6, z7, N, C, NP: tl.constexpr, C_ALIGN: tl.constexpr):
    """A split-C program's place: sample b, slice s of S, the tile's rows and its logits' row pointers."""
    b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, NP)
    z_row = exit_rows(rows, b * C, z0, z1, z2, z3, z4, z5, z6, z7, NP, C_ALIGN)
    return b, tl.program_id(1), tl.num_programs(1), rows, rows < N, z_row

