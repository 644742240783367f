// Autograd for msd_fast::fused_msd_loss, in C++.
//
// The op computes d total / d logits and d total / d features during its forward, so backward is only
// "scale the saved gradients by the incoming gradient". Written as a Python autograd rule
// (torch.library.register_autograd) that bookkeeping cost more than the whole CPU kernel at training
// shapes (a Python setup_context in the forward, a Python backward called back from the engine); here it
// is a C++ autograd::Function registered at the Autograd key, so an eager call never enters Python after
// the dispatcher. Tracing (torch.compile, opcheck) sees the same rule: the forward redispatches below
// autograd (to the CPU kernel, or to the Python fake kernel under FakeTensorMode).
#include <ATen/TensorSubclassLikeUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace msd_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using FusedOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

FusedOut call_fused_below_autograd(const at::Tensor& logits, const at::Tensor& target,
                                   const std::optional<at::Tensor>& features, const at::Tensor& weights,
                                   double temperature, bool teacher_last) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("msd_fast::fused_msd_loss", "")
                       .typed<FusedOut(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                       const at::Tensor&, double, bool)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(logits, target, features, weights, temperature, teacher_last);
}

// True when g is a plain dense CPU float32 tensor holding exactly 1 (what loss.backward() passes).
// Reading a CPU scalar costs no device sync; traced / fake / functional tensors never take this path
// (their value is unknown or reading it would specialise the graph).
bool is_plain_cpu_one(const at::Tensor& g) {
  return g.defined() && g.device().is_cpu() && g.scalar_type() == at::kFloat && g.numel() == 1 &&
         !at::isTensorSubclassLike(g) && g.layout() == at::kStrided && g.item<float>() == 1.0f;
}

class FusedMSDLossFunction : public torch::autograd::Function<FusedMSDLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                               const std::optional<at::Tensor>& features, const at::Tensor& weights,
                               double temperature, bool teacher_last) {
    auto [total, per_exit, grad_logits, grad_features] =
        call_fused_below_autograd(logits, target, features, weights, temperature, teacher_last);
    ctx->saved_data["has_features"] = features.has_value();
    ctx->save_for_backward({grad_logits, grad_features});
    ctx->mark_non_differentiable({per_exit, grad_logits, grad_features});
    ctx->set_materialize_grads(false);  // no zero-filled [N, B, C] grads for the logging outputs
    return {total, per_exit, grad_logits, grad_features};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& g = grad_outputs[0];
    variable_list out(6);  // one slot per forward input: logits, target, features, weights, temperature, teacher_last
    if (!g.defined()) return out;
    auto saved = ctx->get_saved_variables();
    const bool has_features = ctx->saved_data["has_features"].toBool();
    if (is_plain_cpu_one(g)) {  // loss.backward(): the saved gradients are the answer, no pass over them
      out[0] = saved[0];
      if (has_features) out[2] = saved[1];
      return out;
    }
    out[0] = g.mul(saved[0]);
    if (has_features) out[2] = g.mul(saved[1]);
    return out;
  }
};

FusedOut fused_msd_loss_autograd(const at::Tensor& logits, const at::Tensor& target,
                                 const std::optional<at::Tensor>& features, const at::Tensor& weights,
                                 double temperature, bool teacher_last) {
  auto outs = FusedMSDLossFunction::apply(logits, target, features, weights, temperature, teacher_last);
  return {outs[0], outs[1], outs[2], outs[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(msd_fast, Autograd, m) {
  m.impl("fused_msd_loss", &fused_msd_loss_autograd);
}

}  // namespace msd_fast
