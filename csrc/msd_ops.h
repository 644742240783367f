#pragma once
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace msd_fast {
// Shape/dtype/device checks shared by the CPU and CUDA reductions.
// (total [], per-exit means [3, N], d total / d logits per exit, d total / d features per exit)
using FusedOut = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>;

void check_reduce_inputs(const at::Tensor& partials, const at::Tensor& weights);
}  // namespace msd_fast
