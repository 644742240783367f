"""Fused Triton kernel of the MSD loss: CE + all-pairs KL + feature hint, values and gradients in one pass.

One program per sample b. It views the N exits' logits of that sample as an [NP, BLOCK_C] tile (NP = N
rounded up to a power of two, padded rows masked) and walks C in chunks:
  pass 1: online max and the two softmax normalisers per exit (T = 1 for CE, T = tau for KD);
  pass 2: p_n, q_n, l_n per chunk; P = sum_n q_n over the rows of the tile; the KD sums; and the
          gradient of the weighted total, written straight to grad_logits.
Maths (docs/maths.md §3), detached teachers:
  "all":  KD_n = tau^2/(N-1) (R - <P, l_n>),  R = sum_n <q_n, l_n>
          dL/dz_n = w_ce/B (p_n - onehot(y)) + w_kd tau / ((N-1) B) (N q_n - P)
  "last": KD_n = tau^2 <q_N, l_N - l_n> (n < N),  dL/dz_n = w_ce/B (p_n - onehot) + w_kd tau/B (q_n - q_N)
  FEAT_n = ||F_n - F_N||^2,  dL/dF_n = 2 w_feat / B (F_n - F_N)  (n < N; 0 for F_N)
Nothing of size N x B x C is written besides the gradients; all math is float32.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _msd_loss_kernel(
    z_ptr,       # [N, B, C] logits (fp32 / fp16 / bf16)
    y_ptr,       # [B] int64 targets
    f_ptr,       # [N, B, D] features (unused when HAS_FEAT is False)
    w_ptr,       # [3] fp32: w_ce, w_kd, w_feat
    part_ptr,    # [3, N, B] fp32 out: per-sample CE, KD, FEAT
    gz_ptr,      # [N, B, C] out: d total / d logits, logits' dtype
    gf_ptr,      # [N, B, D] out: d total / d features, features' dtype
    N, B, C, D,  # int32 sizes; the launcher turns any equal to 1 into a constexpr (Triton's specialisation)
    tau, inv_tau, inv_b,  # fp32 scalars: tau, 1 / tau, 1 / B (from the host: B may be a constexpr 1)
    TEACHER_LAST: tl.constexpr, HAS_FEAT: tl.constexpr,
    NP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, NP)                                  # [NP]
    row_ok = rows < N
    is_last = rows == N - 1
    row_base = rows.to(tl.int64) * B * C + b * C             # [NP] offset of z[n, b, 0]
    cols = tl.arange(0, BLOCK_C)                             # [BLOCK_C]
    neg_inf = float("-inf")

    # ---- pass 1: running max m and normalisers s1 = sum exp(z - m), st = sum exp((z - m) / tau) ----
    m = tl.full([NP], neg_inf, tl.float32)
    s1 = tl.zeros([NP], tl.float32)
    st = tl.zeros([NP], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cols
        col_ok = c < C
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(z_ptr + row_base[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.where(col_ok[None, :], x, neg_inf)            # padded rows stay finite (0), columns -inf
        m_new = tl.maximum(m, tl.max(x, axis=1))
        d_old = m - m_new
        s1 = s1 * tl.exp(d_old) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
        st = st * tl.exp(d_old * inv_tau) + tl.sum(tl.exp((x - m_new[:, None]) * inv_tau), axis=1)
        m = m_new
    lse = m + tl.log(s1)                                     # [NP] log-sum-exp of z_n
    shift = m * inv_tau + tl.log(st)                         # l_n = z_n / tau - shift_n

    y = tl.load(y_ptr + b)
    z_y = tl.load(z_ptr + row_base + y, mask=row_ok, other=0.0).to(tl.float32)
    ce = lse - z_y
    # Stored now, not at the end: ptxas parks values that wait across pass 2 in local memory (compile gate).
    part_off = rows.to(tl.int64) * B + b
    tl.store(part_ptr + part_off, ce, mask=row_ok)

    w_ce = tl.load(w_ptr)
    w_kd = tl.load(w_ptr + 1)
    w_feat = tl.load(w_ptr + 2)
    n_f = N * 1.0                                            # fp32 whether N is a runtime int or a constexpr
    if TEACHER_LAST:
        g_kd = w_kd * tau * inv_b
    else:
        g_kd = w_kd * tau * inv_b / (n_f - 1.0)

    # ---- pass 2: probabilities, KD sums and the logits' gradient, chunk by chunk ----
    kd_acc = tl.zeros([NP], tl.float32)                      # "all": <P, l_n>;  "last": <q_N, l_N - l_n>
    r_acc = tl.zeros([NP], tl.float32)                       # "all": per-row <q_n, l_n>, summed to R
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cols
        col_ok = c < C
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(z_ptr + row_base[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float32)
        l = tl.where(mask, x * inv_tau - shift[:, None], 0.0)
        q = tl.where(mask, tl.exp(x * inv_tau - shift[:, None]), 0.0)
        p = tl.where(mask, tl.exp(x - lse[:, None]), 0.0)
        if TEACHER_LAST:
            q_last = tl.sum(tl.where(is_last[:, None], q, 0.0), axis=0)      # [BLOCK_C]
            l_last = tl.sum(tl.where(is_last[:, None], l, 0.0), axis=0)
            kd_acc += tl.sum(q_last[None, :] * (l_last[None, :] - l), axis=1)
            g = g_kd * (q - q_last[None, :])
            g = tl.where(is_last[:, None], 0.0, g)
        else:
            P = tl.sum(q, axis=0)                                              # [BLOCK_C]
            r_acc += tl.sum(q * l, axis=1)
            kd_acc += tl.sum(P[None, :] * l, axis=1)
            g = g_kd * (n_f * q - P[None, :])
        onehot = tl.where(c[None, :] == y, 1.0, 0.0)
        g += w_ce * inv_b * (p - onehot)
        tl.store(gz_ptr + row_base[:, None] + c[None, :], g.to(gz_ptr.dtype.element_ty), mask=mask)
    if TEACHER_LAST:
        kd = tau * tau * kd_acc
    else:
        kd = tau * tau / (n_f - 1.0) * (tl.sum(r_acc, axis=0) - kd_acc)
    tl.store(part_ptr + N * B + part_off, kd, mask=row_ok)

    # ---- feature hint towards the deepest exit ----
    feat = tl.zeros([NP], tl.float32)
    if HAS_FEAT:
        f_base = rows.to(tl.int64) * B * D + b * D
        dcols = tl.arange(0, BLOCK_D)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + dcols
            f_off = f_base[:, None] + d[None, :]                                 # [NP, BLOCK_D]
            fmask = row_ok[:, None] & (d < D)[None, :]
            fv = tl.load(f_ptr + f_off, mask=fmask, other=0.0).to(tl.float32)
            f_last = tl.sum(tl.where(is_last[:, None], fv, 0.0), axis=0)      # [BLOCK_D]
            diff = tl.where(is_last[:, None], 0.0, fv - f_last[None, :])
            feat += tl.sum(diff * diff, axis=1)
            gfv = 2.0 * w_feat * inv_b * diff
            tl.store(gf_ptr + f_off, gfv.to(gf_ptr.dtype.element_ty), mask=fmask)

    tl.store(part_ptr + 2 * N * B + part_off, feat, mask=row_ok)


MAX_TILE = 2048  # elements of one [NP, BLOCK] tile: bounds the registers a program needs


def launch_plan(N: int, C: int, D: int) -> dict:
    """The compile-time choices the launcher makes for a problem of N exits, C classes and D feature dims
    (D = 0: no features): NP, BLOCK_C, BLOCK_D and num_warps. The ahead-of-time compile gate
    (msd_fast.kernels.compile_gate) enumerates exactly these."""
    if not 2 <= N <= 8:
        raise ValueError(f"logits: the Triton kernel takes 2 to 8 exits, got N = {N}")
    NP = triton.next_power_of_2(N)
    BLOCK_C = min(triton.next_power_of_2(C), max(64, MAX_TILE // NP))
    BLOCK_D = min(triton.next_power_of_2(D), max(64, MAX_TILE // NP)) if D > 0 else 16
    # At most 8 tile elements per thread: pass 2 keeps about ten tile-shaped values live (x, l, q, p, g, P,
    # ...), and at 8 warps ptxas caps a thread at 128 registers; 16 or 32 elements each spilled registers on
    # sm_80/sm_90 (found by the compile gate, msd_fast.kernels.compile_gate).
    tile = NP * max(BLOCK_C, BLOCK_D)
    return dict(NP=NP, BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D, num_warps=8 if tile > 1024 else 4)


def msd_loss_partials(logits: torch.Tensor, target: torch.Tensor, features, weights: torch.Tensor,
                      temperature: float, teacher_last: bool):
    """Launches the kernel. logits [N, B, C] contiguous, target [B] int64, features [N, B, D] or None,
    weights [3] fp32 -> (partials [3, N, B] fp32, grad_logits like logits, grad_features like features or [0])."""
    N, B, C = logits.shape
    D = features.shape[2] if features is not None else 0
    plan = launch_plan(N, C, D)
    partials = torch.empty((3, N, B), dtype=torch.float32, device=logits.device)
    grad_logits = torch.empty_like(logits)
    if features is not None:
        grad_features = torch.empty_like(features)
        f_arg, gf_arg = features, grad_features
    else:
        grad_features = logits.new_empty((0,))
        f_arg, gf_arg = logits, grad_logits  # never read or written: HAS_FEAT is False
    _msd_loss_kernel[(B,)](
        logits, target, f_arg, weights, partials, grad_logits, gf_arg,
        N, B, C, D, float(temperature), 1.0 / float(temperature), 1.0 / B,
        TEACHER_LAST=bool(teacher_last), HAS_FEAT=features is not None, **plan,
    )
    return partials, grad_logits, grad_features
