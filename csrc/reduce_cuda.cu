// Deterministic per-exit reduction on CUDA: one block per (term, exit) row, a fixed per-thread stride
// and a fixed shared-memory tree, float64 accumulation; then one thread adds the rows in a fixed order.
// No atomics, so the same inputs give bit-identical outputs run after run.
#include <torch/extension.h>
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

}  // namespace

TORCH_LIBRARY_IMPL(msd_fast, CUDA, m) { m.impl("reduce_exit_losses", &reduce_exit_losses_cuda); }

}  // namespace msd_fast
