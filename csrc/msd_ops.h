#pragma once
#include <ATen/ATen.h>

namespace msd_fast {
// Shape/dtype/device checks shared by the CPU and CUDA reductions.
void check_reduce_inputs(const at::Tensor& partials, const at::Tensor& weights);
}  // namespace msd_fast
