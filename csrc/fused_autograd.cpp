// Autograd for msd_fast::fused_msd_loss, in C++.
//
// The op computes d total / d logits and d total / d features during its forward, so backward is only
// "scale the saved gradients by the incoming gradient" (in place with msd_fast::scale_grads_ when this
// backward is their last reader: nothing at all for g == 1, see may_scale_in_place). Written as a Python
// autograd rule (torch.library.register_autograd) that bookkeeping cost more than the whole CPU kernel at
// training shapes (a Python setup_context in the forward, a Python backward called back from the engine);
// here it is a C++ autograd::Function registered at the Autograd key, so an eager call never enters Python
// after the dispatcher. Tracing (torch.compile, opcheck) sees the same rule: the forward redispatches below
// autograd (to the CPU kernel, or to the Python fake kernel under FakeTensorMode).
#include <ATen/Functions.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <optional>

#include "msd_ops.h"

namespace msd_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

FusedOut call_fused_below_autograd(at::TensorList logits, const at::Tensor& target, at::TensorList features,
                                   const at::Tensor& weights, double temperature, bool teacher_last,
                                   std::optional<int64_t> ignore_index) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("msd_fast::fused_msd_loss", "")
                       .typed<FusedOut(at::TensorList, const at::Tensor&, at::TensorList, const at::Tensor&, double,
                                       bool, std::optional<int64_t>)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(logits, target, features, weights, temperature, teacher_last, ignore_index);
}

// True when g is a plain dense CPU float32 tensor holding exactly 1 (what loss.backward() passes).
// Reading a CPU scalar costs no device sync; traced / fake / functional tensors never take this path
// (their value is unknown or reading it would specialise the graph).
bool is_plain_cpu_one(const at::Tensor& g) {
  return g.defined() && g.device().is_cpu() && g.scalar_type() == at::kFloat && g.numel() == 1 &&
         !at::isTensorSubclassLike(g) && g.layout() == at::kStrided && g.item<float>() == 1.0f;
}

// True when the backward may scale the saved gradients in place (msd_fast::scale_grads_) instead of into
// new buffers: this backward is the buffers' last reader (the graph is not retained for another backward),
// no graph is being built over the backward (create_graph), every tensor is a plain dense one (traced,
// fake or functional tensors keep the out-of-place rule, which compilers handle as any other op), and the
// op has a kernel for the gradients' device in this build.
bool may_scale_in_place(const variable_list& saved, const at::Tensor& g) {
  if (saved.empty() || torch::autograd::get_current_graph_task_keep_graph() || at::GradMode::is_enabled()) {
    return false;
  }
  if (at::isTensorSubclassLike(g) || g.layout() != at::kStrided || g.numel() != 1 ||
      g.scalar_type() != at::kFloat || g.device() != saved[0].device()) {
    return false;
  }
  for (const auto& t : saved) {
    if (at::isTensorSubclassLike(t) || !t.is_contiguous()) return false;
  }
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("msd_fast::scale_grads_", "");
  const auto key = c10::computeDispatchKey(std::nullopt, std::nullopt, g.device());
  return op.hasKernelForDispatchKey(key);
}

void scale_grads_in_place(const variable_list& saved, const at::Tensor& g) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("msd_fast::scale_grads_", "")
                       .typed<void(at::TensorList, const at::Tensor&)>();
  at::AutoDispatchBelowADInplaceOrView guard;  // the buffers are autograd's own: no version bump to track
  op.call(saved, g);
}

// Outputs, flattened for autograd: total, per_exit, then the N logits gradients, then the features' (N or 0).
class FusedMSDLossFunction : public torch::autograd::Function<FusedMSDLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList logits, const at::Tensor& target,
                               at::TensorList features, const at::Tensor& weights, double temperature,
                               bool teacher_last, std::optional<int64_t> ignore_index) {
    auto [total, per_exit, grad_logits, grad_features] =
        call_fused_below_autograd(logits, target, features, weights, temperature, teacher_last, ignore_index);
    ctx->saved_data["N"] = static_cast<int64_t>(logits.size());
    ctx->saved_data["F"] = static_cast<int64_t>(features.size());
    variable_list saved(grad_logits);
    saved.insert(saved.end(), grad_features.begin(), grad_features.end());
    ctx->save_for_backward(saved);
    variable_list outs{total, per_exit};
    outs.insert(outs.end(), saved.begin(), saved.end());
    ctx->mark_non_differentiable(variable_list(outs.begin() + 1, outs.end()));
    ctx->set_materialize_grads(false);  // no zero-filled [B, C] grads for the logging outputs
    return outs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const int64_t N = ctx->saved_data["N"].toInt(), F = ctx->saved_data["F"].toInt();
    // One slot per forward input as autograd counts them: N logits, target, F features, weights,
    // temperature, teacher_last, ignore_index.
    variable_list out(N + F + 5);
    const at::Tensor& g = grad_outputs[0];
    if (!g.defined()) return out;
    auto saved = ctx->get_saved_variables();
    // loss.backward() on the CPU: the saved gradients are the answer; no pass over them. Else, when this
    // backward is their last reader, they are scaled where they are (on CUDA one launch that reads g on the
    // device and does nothing when it is 1: no pass over N x B x C for loss.backward(), no host sync).
    // Otherwise (retain_graph, create_graph, tracing) products into new buffers.
    std::vector<at::Tensor> scaled;
    if (is_plain_cpu_one(g)) {
      scaled = std::vector<at::Tensor>(saved.begin(), saved.end());
    } else if (may_scale_in_place(saved, g)) {
      scale_grads_in_place(saved, g);
      scaled = std::vector<at::Tensor>(saved.begin(), saved.end());
    } else if (at::GradMode::is_enabled() && g.requires_grad()) {
      // create_graph with a g that needs a gradient: one product per tensor, because autograd of
      // _foreach_mul by a tensor fails when that tensor requires grad ("inconsistent range for TensorList
      // output", torch 2.14).
      for (const auto& t : saved) scaled.push_back(t * g);
    } else {
      scaled = at::_foreach_mul(saved, g);
    }
    for (int64_t n = 0; n < N; ++n) out[n] = scaled[n];
    for (int64_t n = 0; n < F; ++n) out[N + 1 + n] = scaled[N + n];
    return out;
  }
};

FusedOut fused_msd_loss_autograd(at::TensorList logits, const at::Tensor& target, at::TensorList features,
                                 const at::Tensor& weights, double temperature, bool teacher_last,
                                 std::optional<int64_t> ignore_index) {
  auto outs = FusedMSDLossFunction::apply(logits, target, features, weights, temperature, teacher_last,
                                          ignore_index);
  const size_t N = logits.size(), F = features.size();
  return {outs[0], outs[1], std::vector<at::Tensor>(outs.begin() + 2, outs.begin() + 2 + N),
          std::vector<at::Tensor>(outs.begin() + 2 + N, outs.begin() + 2 + N + F)};
}

}  // namespace

TORCH_LIBRARY_IMPL(msd_fast, Autograd, m) {
  m.impl("fused_msd_loss", &fused_msd_loss_autograd);
}

}  // namespace msd_fast
