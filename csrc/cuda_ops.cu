// The extension's CUDA kernels (one .cu file: each nvcc compile costs minutes).
// - reduce_exit_losses: deterministic per-exit reduction, one block per (term, exit) row, a fixed per-thread
//   stride and a fixed shared-memory tree, float64 accumulation; then one thread adds the rows in a fixed
//   order. No atomics, so the same inputs give bit-identical outputs run after run.
// - scale_grads_: grads *= scale in place, every block returning at once when the scale it reads is 1
//   (csrc/scale_grads.cpp says why).
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "msd_ops.h"

namespace msd_fast {
namespace {

constexpr int kThreads = 256;

__global__ void row_means_kernel(const float* __restrict__ partials,  // [3 * N, B]
                                 float* __restrict__ per_exit,        // [3 * N]
                                 int64_t B) {
  __shared__ double buf[kThreads];
  const float* row = partials + static_cast<int64_t>(blockIdx.x) * B;
  double acc = 0.0;
  for (int64_t b = threadIdx.x; b < B; b += kThreads) acc += static_cast<double>(row[b]);
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) per_exit[blockIdx.x] = static_cast<float>(buf[0] / static_cast<double>(B));
}

__global__ void weighted_total_kernel(const float* __restrict__ per_exit,  // [3, N]
                                      const float* __restrict__ weights,   // [3]
                                      float* __restrict__ total, int64_t N) {
  double tot = 0.0;
  for (int k = 0; k < 3; ++k) {
    double s = 0.0;
    for (int64_t n = 0; n < N; ++n) s += static_cast<double>(per_exit[k * N + n]);
    tot += static_cast<double>(weights[k]) * s;
  }
  *total = static_cast<float>(tot);
}

std::tuple<at::Tensor, at::Tensor> reduce_exit_losses_cuda(const at::Tensor& partials, const at::Tensor& weights) {
  check_reduce_inputs(partials, weights);
  const c10::cuda::CUDAGuard guard(partials.device());
  const int64_t N = partials.size(1), B = partials.size(2);
  auto per_exit = at::empty({3, N}, partials.options());
  auto total = at::empty({}, partials.options());
  const auto w = weights.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(partials.device().index()).stream();
  row_means_kernel<<<static_cast<unsigned>(3 * N), kThreads, 0, stream>>>(partials.data_ptr<float>(),
                                                                         per_exit.data_ptr<float>(), B);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  weighted_total_kernel<<<1, 1, 0, stream>>>(per_exit.data_ptr<float>(), w.data_ptr<float>(),
                                             total.data_ptr<float>(), N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {per_exit, total};
}

// Up to kMaxScaled tensors per launch (2 x 8 exits: the logits' and the features' gradients); longer lists
// take several launches. Passed by value as kernel parameters.
constexpr int kMaxScaled = 16;
struct ScaledTensors {
  void* data[kMaxScaled];
  int64_t numel[kMaxScaled];
  int dtype[kMaxScaled];  // 0 float32, 1 float16, 2 bfloat16
};

template <typename T>
__device__ void scale_span(T* __restrict__ x, int64_t n, float g) {
  // Grid-stride over the tensor's elements; the product in float32, rounded once (as at::_foreach_mul).
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    x[i] = static_cast<T>(static_cast<float>(x[i]) * g);
  }
}

__global__ void scale_grads_kernel(ScaledTensors t,             // blockIdx.y: which tensor
                                   const float* __restrict__ scale) {  // [1], read on the device
  const float g = *scale;
  if (g == 1.0f) return;  // loss.backward(): the saved gradients are already the answer (NaN scales on)
  const int k = blockIdx.y;
  switch (t.dtype[k]) {
    case 0: scale_span(static_cast<float*>(t.data[k]), t.numel[k], g); break;
    case 1: scale_span(static_cast<c10::Half*>(t.data[k]), t.numel[k], g); break;
    default: scale_span(static_cast<c10::BFloat16*>(t.data[k]), t.numel[k], g); break;
  }
}

void scale_grads_cuda(at::TensorList grads, const at::Tensor& scale) {
  if (!check_scale_inputs(grads, scale)) return;
  const c10::cuda::CUDAGuard guard(scale.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(scale.device().index()).stream();
  // Enough blocks to stream the largest tensor when the scale is not 1, few enough that the g == 1 launch
  // (every block reads one float and returns) stays a few microseconds.
  const int64_t max_blocks = 2 * static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  for (size_t first = 0; first < grads.size(); first += kMaxScaled) {
    const size_t count = std::min<size_t>(kMaxScaled, grads.size() - first);
    ScaledTensors t{};
    int64_t largest = 1;
    for (size_t i = 0; i < count; ++i) {
      const at::Tensor& x = grads[first + i];
      t.data[i] = x.data_ptr();
      t.numel[i] = x.numel();
      t.dtype[i] = x.scalar_type() == at::kFloat ? 0 : x.scalar_type() == at::kHalf ? 1 : 2;
      largest = std::max(largest, x.numel());
    }
    const int64_t blocks = std::min(max_blocks, (largest + kThreads * 4 - 1) / (kThreads * 4));
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(count));
    scale_grads_kernel<<<grid, kThreads, 0, stream>>>(t, scale.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(msd_fast, CUDA, m) {
  m.impl("reduce_exit_losses", &reduce_exit_losses_cuda);
  m.impl("scale_grads_", &scale_grads_cuda);
}

}  // namespace msd_fast
