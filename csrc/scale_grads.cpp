// msd_fast::scale_grads_(Tensor(a!)[] grads, Tensor scale): grads *= scale in place, skipped when scale == 1.
//
// Why an op of its own: the fused loss writes d total / d inputs during its forward, so its backward only has
// to multiply them by the incoming gradient g. Out of place (at::_foreach_mul) that is a full read and write
// of N x B x C elements and 2N new buffers on every backward, although g is 1 whenever the loss is the
// tensor backward() starts from. Here the saved buffers are scaled where they are, and the g == 1 case
// costs nothing: on the CPU the value is read on the host (free), on CUDA the kernel reads it on the device
// (csrc/cuda_ops.cu), so no host sync and CUDA graphs replay it with whatever g is at replay time.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "msd_ops.h"

namespace msd_fast {

bool check_scale_inputs(at::TensorList grads, const at::Tensor& scale) {
  TORCH_CHECK(scale.numel() == 1 && scale.scalar_type() == at::kFloat,
              "scale_grads_: scale must be a float32 tensor with one element, got ", scale.scalar_type(), " ",
              scale.sizes());
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& t = grads[i];
    TORCH_CHECK(t.device() == scale.device(), "scale_grads_: grads[", i, "] is on ", t.device(),
                " but scale is on ", scale.device());
    TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
                "scale_grads_: grads[", i, "] must be float32, float16 or bfloat16, got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), "scale_grads_: grads[", i, "] must be contiguous");
  }
  return !grads.empty();
}

namespace {

void scale_grads_cpu(at::TensorList grads, const at::Tensor& scale) {
  if (!check_scale_inputs(grads, scale) || scale.item<float>() == 1.0f) return;
  at::_foreach_mul_(grads, scale);  // the same rounding as the out-of-place _foreach_mul it replaces
}

}  // namespace

TORCH_LIBRARY_IMPL(msd_fast, CPU, m) { m.impl("scale_grads_", &scale_grads_cpu); }

}  // namespace msd_fast
