#pragma once
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace msd_fast {
// Shape/dtype/device checks shared by the CPU and CUDA reductions.
// (total [], per-exit means [3, N], d total / d logits per exit, d total / d features per exit)
using FusedOut = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

void check_reduce_inputs(const at::Tensor& partials, const at::Tensor& weights);
// Checks of scale_grads_'s inputs (csrc/scale_grads.cpp), shared by its CPU and CUDA kernels; true when
// there is something to scale.
bool check_scale_inputs(at::TensorList grads, const at::Tensor& scale);
}  // namespace msd_fast
