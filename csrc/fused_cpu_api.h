// The interface between msd_ops.cpp (torch side) and the per-instruction-set CPU kernels: plain types
// only, so the kernel TUs include no torch header.
#pragma once
#include <cstdint>

namespace msd_fast {
namespace cpu {

enum class DType { F32, BF16, F16 };

struct KernelArgs {
  // One pointer per exit (the model's N tensors as they are: no stacking copy); each row block is a
  // contiguous [B, C] (logits) or [B, D] (features).
  const void* const* z;       // N x [B, C] logits
  const int64_t* y;           // [B] targets
  const void* const* feats;   // N x [B, D] features, or nullptr
  float* partials;            // [3, N, B] out: per-sample CE, KD, FEAT
  void* const* grad_z;        // N x [B, C] out
  void* const* grad_f;        // N x [B, D] out (when feats)
  int64_t N, B, C, D;
  float inv_tau, g_ce, g_kd, kd_scale, g_feat;
  bool teacher_last;
  int tau_int;            // tau when it is an integer in 1..4 (one exp per element), else 0
  bool has_ignore;        // samples whose target is ignore_index get zero partials and zero gradients
  int64_t ignore_index;
  DType dtype;
};

static inline int64_t padded(int64_t C) { return (C + 15) / 16 * 16; }
static inline int64_t scratch_floats(int64_t N, int64_t C) { return 2 * N * padded(C) + padded(C) + 4 * N; }

// Samples [b0, b1) of the batch; scratch holds scratch_floats(N, C) floats.
using RunSamples = void (*)(const KernelArgs&, int64_t b0, int64_t b1, float* scratch);
namespace avx512 { void run_samples(const KernelArgs&, int64_t, int64_t, float*); }
namespace avx2 { void run_samples(const KernelArgs&, int64_t, int64_t, float*); }
namespace baseline { void run_samples(const KernelArgs&, int64_t, int64_t, float*); }

}  // namespace cpu
}  // namespace msd_fast
