// mmkat: the autograd kernel of mmkat::group_rational_forward, in C++.
//
// Registered at the Autograd dispatch key, so that a differentiable call costs one trip through the
// dispatcher, as a native activation does: no Python frame on the way in (forward) or out (backward).
//   * Nothing needs a gradient (no_grad, inference, frozen weights): redispatch straight to the backend
//     kernel, no graph node is made.
//   * Otherwise one node holds x and the coefficients; its backward calls mmkat::group_rational_backward,
//     which returns dx and both coefficient gradients from one pass over x and dy.
// Both calls go through the dispatcher (not to a kernel directly), so tracers below Autograd (fake tensors,
// AOTAutograd, torch.compile) record the two functional ops and never see this file.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>


namespace mmkat {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
using BackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                   const at::Tensor&, const at::Tensor&, int64_t);

// Looked up once (the schemas are defined when the library loads, before any call).
const c10::TypedOperatorHandle<ForwardSig>& forward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mmkat::group_rational_forward", "").typed<ForwardSig>();
  return op;
}

const c10::TypedOperatorHandle<BackwardSig>& backward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mmkat::group_rational_backward", "").typed<BackwardSig>();
  return op;
}

class GroupRationalFunction : public torch::autograd::Function<GroupRationalFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight_numerator,
                            const at::Tensor& weight_denominator, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = forward_op().call(x, weight_numerator, weight_denominator, groups);
    ctx->save_for_backward({x, weight_numerator, weight_denominator});
    ctx->saved_data["groups"] = groups;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    at::Tensor dy = grad_outputs[0];
    if (!dy.defined()) dy = at::zeros_like(saved[0]);
    // A plain backward runs with grad mode off; create_graph=True turns it on and asks for a differentiable
    // gradient, which this op does not provide: say so rather than return a gradient without a history.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "mmkat::group_rational_forward has no double backward: its gradient cannot be differentiated "
                "again (create_graph=True). Use impl='reference' for higher-order gradients.");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [dx, d_num, d_den] = backward_op().call(dy, saved[0], saved[1], saved[2], groups);
    return {ctx->needs_input_grad(0) ? dx : at::Tensor(), ctx->needs_input_grad(1) ? d_num : at::Tensor(),
            ctx->needs_input_grad(2) ? d_den : at::Tensor(), at::Tensor()};
  }
};

at::Tensor group_rational_forward_autograd(const at::Tensor& x, const at::Tensor& weight_numerator,
                                           const at::Tensor& weight_denominator, int64_t groups) {
  const bool record = at::GradMode::is_enabled() &&
                      (x.requires_grad() || weight_numerator.requires_grad() || weight_denominator.requires_grad());
  if (!record) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op().call(x, weight_numerator, weight_denominator, groups);
  }
  return GroupRationalFunction::apply(x, weight_numerator, weight_denominator, groups);
}

}  // namespace
}  // namespace mmkat

TORCH_LIBRARY_IMPL(mmkat, Autograd, m) {
  m.impl("group_rational_forward", &mmkat::group_rational_forward_autograd);
}
