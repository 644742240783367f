// msd_fast C++ ops: schema, the deterministic per-exit reduction (CPU) and the fused MSD loss's CPU entry:
// input checks, then the kernel of fused_cpu_kernel.h compiled for the widest instruction set this CPU has.
//
// The maths is docs/maths.md §3; the formulas the kernel implements sit beside it in fused_cpu_kernel.h.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "fused_cpu_api.h"
#include "msd_ops.h"

namespace msd_fast {

void check_reduce_inputs(const at::Tensor& partials, const at::Tensor& weights) {
  TORCH_CHECK(partials.dim() == 3 && partials.size(0) == 3,
              "reduce_exit_losses: partials must have shape [3, N, B] (CE, KD, FEAT per exit and sample), got ",
              partials.sizes());
  TORCH_CHECK(partials.size(1) >= 1 && partials.size(2) >= 1,
              "reduce_exit_losses: partials must have N >= 1 exits and B >= 1 samples, got ", partials.sizes());
  TORCH_CHECK(partials.scalar_type() == at::kFloat, "reduce_exit_losses: partials must be float32, got ",
              partials.scalar_type());
  TORCH_CHECK(partials.is_contiguous(), "reduce_exit_losses: partials must be contiguous");
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == 3,
              "reduce_exit_losses: weights must have shape [3] (w_ce, w_kd, w_feat), got ", weights.sizes());
  TORCH_CHECK(weights.scalar_type() == at::kFloat, "reduce_exit_losses: weights must be float32, got ",
              weights.scalar_type());
  TORCH_CHECK(weights.device() == partials.device(), "reduce_exit_losses: weights are on ", weights.device(),
              " but partials are on ", partials.device());
}

// Per-exit means [3, N] and the weighted total. Each row is summed in float64 in index order by one
// thread, rows are combined in a fixed order: bit-identical results run after run.
std::tuple<at::Tensor, at::Tensor> reduce_exit_losses_cpu(const at::Tensor& partials, const at::Tensor& weights) {
  check_reduce_inputs(partials, weights);
  const int64_t N = partials.size(1), B = partials.size(2), rows = 3 * N;
  auto per_exit = at::empty({3, N}, partials.options());
  auto total = at::empty({}, partials.options());
  const float* src = partials.data_ptr<float>();
  float* dst = per_exit.data_ptr<float>();
  const auto w = weights.contiguous();
  const float* wp = w.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 65536 / B);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = src + r * B;
      double acc = 0.0;
      for (int64_t b = 0; b < B; ++b) acc += static_cast<double>(row[b]);
      dst[r] = static_cast<float>(acc / static_cast<double>(B));
    }
  });
  double tot = 0.0;
  for (int64_t k = 0; k < 3; ++k) {
    double s = 0.0;
    for (int64_t n = 0; n < N; ++n) s += static_cast<double>(dst[k * N + n]);
    tot += static_cast<double>(wp[k]) * s;
  }
  *total.data_ptr<float>() = static_cast<float>(tot);  // a CPU scalar: no fill_ through the dispatcher
  return {per_exit, total};
}

namespace {

// The widest kernel this CPU runs (MSD_FAST_CPU_ISA=avx512|avx2|baseline overrides, for tests/benchmarks).
struct IsaChoice {
  cpu::RunSamples fn;
  const char* name;
};

IsaChoice pick_isa() {
  const char* forced = std::getenv("MSD_FAST_CPU_ISA");
  const std::string want = forced ? forced : "";
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  TORCH_CHECK(want.empty() || want == "avx512" || want == "avx2" || want == "baseline",
              "MSD_FAST_CPU_ISA must be avx512, avx2 or baseline, got '", want, "'");
  TORCH_CHECK(want != "avx512" || avx512, "MSD_FAST_CPU_ISA=avx512, but this CPU has no AVX-512 (F/BW/DQ/VL)");
  TORCH_CHECK(want != "avx2" || avx2, "MSD_FAST_CPU_ISA=avx2, but this CPU has no AVX2+FMA");
  if (want == "baseline" || (want.empty() && !avx2)) return {&cpu::baseline::run_samples, "baseline"};
  if (want == "avx2" || (want.empty() && !avx512)) return {&cpu::avx2::run_samples, "avx2"};
  return {&cpu::avx512::run_samples, "avx512"};
}

const IsaChoice& isa() {
  static const IsaChoice choice = pick_isa();
  return choice;
}

void launch_fused_msd_loss(cpu::KernelArgs a) {
  const int64_t N = a.N, B = a.B, C = a.C, D = a.D;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, N * (C + D)));
  const cpu::RunSamples run = isa().fn;
  // The args are captured by value: with [&] the compiler could not keep them in registers.
  at::parallel_for(0, B, grain, [=](int64_t b0, int64_t b1) {
    std::vector<float> scratch(cpu::scratch_floats(N, C));
    run(a, b0, b1, scratch.data());
  });
}

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

const char* cpu_isa_name() { return isa().name; }

namespace {

// One input's exits as the kernel sees them: N, B, width and one pointer per exit. The schema's Tensor[]
// holds either the N exits ([B, width] each, as a model returns them) or one stacked [N, B, width] tensor;
// neither is copied.
struct Exits {
  int64_t N = 0, B = 0, W = 0;
  at::ScalarType dtype = at::kFloat;
  bool stacked = false;
};

Exits describe_exits(at::TensorList xs, const char* name) {
  TORCH_CHECK(!xs.empty(), "fused_msd_loss: ", name, " is empty");
  const auto& x0 = xs[0];
  TORCH_CHECK(x0.defined(), "fused_msd_loss: ", name, "[0] is undefined");
  Exits e;
  e.dtype = x0.scalar_type();
  if (xs.size() == 1) {
    TORCH_CHECK(x0.dim() == 3, "fused_msd_loss: ", name, " must be N tensors [B, width] or one tensor [N, B, width], "
                "got one tensor of shape ", x0.sizes());
    e.stacked = true;
    e.N = x0.size(0), e.B = x0.size(1), e.W = x0.size(2);
  } else {
    TORCH_CHECK(x0.dim() == 2, "fused_msd_loss: ", name, "[0] must have shape [B, width], got ", x0.sizes());
    e.N = static_cast<int64_t>(xs.size()), e.B = x0.size(0), e.W = x0.size(1);
  }
  for (size_t n = 0; n < xs.size(); ++n) {
    const auto& x = xs[n];
    TORCH_CHECK(x.defined(), "fused_msd_loss: ", name, "[", n, "] is undefined");
    TORCH_CHECK(x.device().is_cpu(), "fused_msd_loss: ", name, "[", n, "] must be a CPU tensor, got one on ",
                x.device(), " (use the Triton kernel on CUDA)");
    if (!e.stacked) {
      TORCH_CHECK(x.dim() == 2 && x.size(0) == e.B && x.size(1) == e.W, "fused_msd_loss: ", name, "[", n,
                  "] must have shape [B=", e.B, ", ", e.W, "] like ", name, "[0], got ", x.sizes());
    }
    TORCH_CHECK(x.scalar_type() == e.dtype, "fused_msd_loss: ", name, "[", n, "] has dtype ", x.scalar_type(),
                ", expected ", e.dtype, " (the dtype of ", name, "[0])");
    TORCH_CHECK(x.is_contiguous(), "fused_msd_loss: ", name, "[", n, "] must be contiguous");
  }
  return e;
}

// Pointer to exit n's [B, width] block.
template <typename Ptr>
Ptr exit_ptr(at::TensorList xs, const Exits& e, int64_t n, Ptr) {
  if (!e.stacked) return static_cast<Ptr>(xs[n].data_ptr());
  char* base = static_cast<char*>(xs[0].data_ptr());
  return static_cast<Ptr>(base + n * e.B * e.W * static_cast<int64_t>(xs[0].element_size()));
}

std::vector<at::Tensor> empty_like_each(at::TensorList xs) {
  std::vector<at::Tensor> out;
  out.reserve(xs.size());
  for (const auto& x : xs) out.push_back(at::empty_like(x, at::MemoryFormat::Contiguous));
  return out;
}

}  // namespace

FusedOut fused_msd_loss_cpu(at::TensorList logits, const at::Tensor& target, at::TensorList features,
                            const at::Tensor& weights, double temperature, bool teacher_last,
                            std::optional<int64_t> ignore_index) {
  const Exits ze = describe_exits(logits, "logits");
  const int64_t N = ze.N, B = ze.B, C = ze.W;
  TORCH_CHECK(N >= 2, "fused_msd_loss: need at least 2 exits, got N = ", N);
  TORCH_CHECK(B >= 1 && C >= 2, "fused_msd_loss: need B >= 1 samples and C >= 2 classes, got B = ", B, ", C = ", C);
  const auto dtype = ze.dtype;
  TORCH_CHECK(is_supported_float(dtype), "fused_msd_loss: logits must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(target.device().is_cpu() && target.scalar_type() == at::kLong && target.dim() == 1 && target.size(0) == B,
              "fused_msd_loss: target must be a CPU int64 tensor of shape [", B, "], got ", target.scalar_type(), " ",
              target.sizes(), " on ", target.device());
  TORCH_CHECK(target.is_contiguous(), "fused_msd_loss: target must be contiguous");
  TORCH_CHECK(weights.device().is_cpu() && weights.scalar_type() == at::kFloat && weights.dim() == 1 && weights.size(0) == 3,
              "fused_msd_loss: weights must be a CPU float32 tensor of shape [3] (w_ce, w_kd, w_feat)");
  TORCH_CHECK(temperature > 0.0 && std::isfinite(temperature), "fused_msd_loss: temperature must be > 0, got ", temperature);
  const int64_t* yp = target.data_ptr<int64_t>();
  int64_t kept = B;  // samples in the means: those whose target is not ignore_index
  for (int64_t b = 0; b < B; ++b) {
    if (ignore_index.has_value() && yp[b] == *ignore_index) {
      --kept;
      continue;
    }
    TORCH_CHECK(yp[b] >= 0 && yp[b] < C, "fused_msd_loss: target[", b, "] = ", yp[b], " is outside [0, ", C, ")",
                yp[b] == -100 && !ignore_index.has_value() ? " (HF's label for ignored positions: pass ignore_index=-100)"
                                                          : "");
  }
  const bool has_features = !features.empty();
  Exits fe;
  if (has_features) {
    fe = describe_exits(features, "features");
    TORCH_CHECK(fe.N == N, "fused_msd_loss: features has ", fe.N, " exits, logits have N = ", N);
    TORCH_CHECK(fe.B == B, "fused_msd_loss: features have batch size ", fe.B, ", logits have B = ", B);
    TORCH_CHECK(fe.dtype == dtype, "fused_msd_loss: features[0] has dtype ", fe.dtype, ", expected ", dtype,
                " (the dtype of logits[0])");
  }
  const int64_t D = has_features ? fe.W : 0;
  const auto w = weights.contiguous();
  const float* wp = w.data_ptr<float>();
  auto partials = at::empty({3, N, B}, logits[0].options().dtype(at::kFloat));
  std::vector<at::Tensor> grad_logits = empty_like_each(logits);
  std::vector<at::Tensor> grad_features = empty_like_each(features);
  // One pointer per exit: the kernel reads the model's tensors where they are.
  std::vector<const void*> z(N), f(has_features ? N : 0);
  std::vector<void*> gz(N), gf(has_features ? N : 0);
  for (int64_t n = 0; n < N; ++n) {
    z[n] = exit_ptr(logits, ze, n, static_cast<const void*>(nullptr));
    gz[n] = exit_ptr(grad_logits, ze, n, static_cast<void*>(nullptr));
    if (has_features) {
      f[n] = exit_ptr(features, fe, n, static_cast<const void*>(nullptr));
      gf[n] = exit_ptr(grad_features, fe, n, static_cast<void*>(nullptr));
    }
  }
  cpu::KernelArgs a{};
  a.z = z.data();
  a.y = yp;
  a.feats = has_features ? f.data() : nullptr;
  a.partials = partials.data_ptr<float>();
  a.grad_z = gz.data();
  a.grad_f = has_features ? gf.data() : nullptr;
  a.N = N, a.B = B, a.C = C, a.D = D;
  // Every mean is over the kept samples; ignored ones get zero partials and gradients in the kernel.
  const float tau = static_cast<float>(temperature), invB = 1.0f / static_cast<float>(std::max<int64_t>(kept, 1));
  a.inv_tau = 1.0f / tau;
  a.g_ce = wp[0] * invB;
  a.g_kd = teacher_last ? wp[1] * tau * invB : wp[1] * tau * invB / static_cast<float>(N - 1);
  a.kd_scale = teacher_last ? tau * tau : tau * tau / static_cast<float>(N - 1);
  a.g_feat = 2.0f * wp[2] * invB;
  a.teacher_last = teacher_last;
  a.tau_int = (tau == std::nearbyint(tau) && tau >= 1.f && tau <= 4.f) ? static_cast<int>(tau) : 0;
  a.dtype = dtype == at::kFloat ? cpu::DType::F32 : dtype == at::kBFloat16 ? cpu::DType::BF16 : cpu::DType::F16;
  a.has_ignore = ignore_index.has_value();
  a.ignore_index = ignore_index.value_or(0);
  launch_fused_msd_loss(a);
  auto [per_exit, total] = reduce_exit_losses_cpu(partials, w);
  if (kept != B) {  // the reduction's means are over B: over the kept samples instead (0 when none is kept)
    const double s = static_cast<double>(B) / static_cast<double>(std::max<int64_t>(kept, 1));
    per_exit.mul_(s);
    total.mul_(s);
  }
  return {total, per_exit, std::move(grad_logits), std::move(grad_features)};
}

TORCH_LIBRARY(msd_fast, m) {
  // partials [3, N, B] float32 (CE, KD, FEAT per exit and sample), weights [3] = (w_ce, w_kd, w_feat)
  // -> (per-exit means [3, N], weighted total []).
  m.def("reduce_exit_losses(Tensor partials, Tensor weights) -> (Tensor, Tensor)");
  // logits: N tensors [B, C] or one [N, B, C]; target [B] int64; features: N tensors [B, D], one [N, B, D] or
  // none (empty list); weights [3] -> (total [], per-exit means [3, N], d total / d logits and d total /
  // d features, each shaped like its input list).
  // Samples whose target equals ignore_index are in no term; every mean is over the others.
  m.def("fused_msd_loss(Tensor[] logits, Tensor target, Tensor[] features, Tensor weights, float temperature, "
        "bool teacher_last, int? ignore_index=None) -> (Tensor, Tensor, Tensor[], Tensor[])");
  // grads *= scale, in place, where scale is a one-element float32 tensor on the grads' device; nothing is
  // read or written when scale == 1 (checked on the device on CUDA: no host sync). The fused loss's
  // backward scales its saved gradients with it (csrc/fused_autograd.cpp, csrc/scale_grads.cpp).
  m.def("scale_grads_(Tensor(a!)[] grads, Tensor scale) -> ()");
}

TORCH_LIBRARY_IMPL(msd_fast, CPU, m) {
  m.impl("reduce_exit_losses", &reduce_exit_losses_cpu);
  m.impl("fused_msd_loss", &fused_msd_loss_cpu);
}

}  // namespace msd_fast

// A Python module so `import msd_fast._C` loads the library and runs the registrations above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cpu_isa", [] { return std::string(msd_fast::cpu_isa_name()); },
        "The instruction set of the fused CPU loss kernel in use: avx512, avx2 or baseline.");
  m.attr("has_cuda") = py::bool_(
#ifdef MSD_FAST_WITH_CUDA
      true
#else
      false
#endif
  );
}
