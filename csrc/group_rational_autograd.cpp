// mmkat: the autograd kernels of mmkat::group_rational_forward, mmkat::group_rational_forward_to,
// mmkat::group_rational_bias_forward, mmkat::group_rational_linear and mmkat::group_rational_kan, in C++.
//
// Registered at the Autograd dispatch key, so that a differentiable call costs one trip through the
// dispatcher, as a native activation does: no Python frame on the way in (forward) or out (backward).
//   * Nothing needs a gradient (no_grad, inference, frozen weights): redispatch straight to the backend
//     kernel, no graph node is made.
//   * Otherwise one node holds x and the coefficients; its backward calls mmkat::group_rational_backward,
//     which returns dx and both coefficient gradients from one pass over x and dy.
// group_rational_linear(x, ..., weight, bias) = linear(F(x), weight, bias) keeps x, the coefficients and the
// weight for backward but not F(x): backward recomputes F(x) (bitwise the same: the kernels are
// deterministic) for the weight gradient, then runs the rational's backward on the input gradient.
// Both calls go through the dispatcher (not to a kernel directly), so tracers below Autograd (fake tensors,
// AOTAutograd, torch.compile) record the two functional ops and never see this file.
#include <ATen/core/dispatch/Dispatcher.h>
#include <array>
#include <torch/autograd.h>
#include <torch/library.h>

#include "group_rational.h"

namespace mmkat {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
using BackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                   const at::Tensor&, const at::Tensor&, int64_t);

const c10::TypedOperatorHandle<ForwardSig>& forward_op() {
  static const auto op = find_op<ForwardSig>("mmkat::group_rational_forward");
  return op;
}

const c10::TypedOperatorHandle<BackwardSig>& backward_op() {
  static const auto op = find_op<BackwardSig>("mmkat::group_rational_backward");
  return op;
}

// A plain backward runs with grad mode off; create_graph=True turns it on and asks for a differentiable gradient,
// which these ops do not provide: say so rather than return a gradient without a history.
void refuse_double_backward(const char* op) {
  TORCH_CHECK(!at::GradMode::is_enabled(), op,
              " has no double backward: its gradient cannot be differentiated again (create_graph=True). Use "
              "impl='reference' for higher-order gradients.");
}

bool has_tensor(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

bool asks_grad(const at::Tensor& t) { return t.requires_grad(); }
bool asks_grad(const std::optional<at::Tensor>& t) { return has_tensor(t) && t->requires_grad(); }

// Whether a call records a graph node: grad mode is on and one of the tensors (an absent optional one does not
// count) asks for a gradient.
template <typename... Tensors>
bool records(const Tensors&... tensors) {
  return at::GradMode::is_enabled() && (asks_grad(tensors) || ...);
}

// The forward and backward of the ops whose gradient is mmkat::group_rational_backward's (group_rational_forward,
// group_rational_forward_to): the node keeps x and the coefficients; `trailing` is the number of non-tensor
// arguments after them (groups, dtype), which get no gradient.
void save_for_rational_backward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight_numerator,
                                const at::Tensor& weight_denominator, int64_t groups) {
  ctx->save_for_backward({x, weight_numerator, weight_denominator});
  ctx->saved_data["groups"] = groups;
}

variable_list rational_backward(AutogradContext* ctx, const variable_list& grad_outputs, const char* op,
                                size_t trailing) {
  const variable_list saved = ctx->get_saved_variables();
  const int64_t groups = ctx->saved_data["groups"].toInt();
  at::Tensor dy = grad_outputs[0];
  if (!dy.defined()) dy = at::zeros_like(saved[0]);
  refuse_double_backward(op);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto [dx, d_num, d_den] = backward_op().call(dy, saved[0], saved[1], saved[2], groups);
  variable_list grads{ctx->needs_input_grad(0) ? dx : at::Tensor(), ctx->needs_input_grad(1) ? d_num : at::Tensor(),
                      ctx->needs_input_grad(2) ? d_den : at::Tensor()};
  grads.resize(3 + trailing);
  return grads;
}

class GroupRationalFunction : public torch::autograd::Function<GroupRationalFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight_numerator,
                            const at::Tensor& weight_denominator, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = forward_op().call(x, weight_numerator, weight_denominator, groups);
    save_for_rational_backward(ctx, x, weight_numerator, weight_denominator, groups);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return rational_backward(ctx, grad_outputs, "mmkat::group_rational_forward", 1);
  }
};

using ForwardToSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, at::ScalarType);

const c10::TypedOperatorHandle<ForwardToSig>& forward_to_op() {
  static const auto op = find_op<ForwardToSig>("mmkat::group_rational_forward_to");
  return op;
}

// F(x) written in `dtype` (e.g. act1's fp32 input, its output in the autocast dtype fc1 computes in): the backward
// hands dy, in that dtype, to mmkat::group_rational_backward as it is (the CUDA kernel reads a bfloat16 / float16
// dy of a float32 x directly; otherwise it is converted to x's type, as the backward of a cast would), so no
// converted copy of dy is made.
class GroupRationalToFunction : public torch::autograd::Function<GroupRationalToFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight_numerator,
                            const at::Tensor& weight_denominator, int64_t groups, at::ScalarType dtype) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = forward_to_op().call(x, weight_numerator, weight_denominator, groups, dtype);
    save_for_rational_backward(ctx, x, weight_numerator, weight_denominator, groups);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return rational_backward(ctx, grad_outputs, "mmkat::group_rational_forward_to", 2);
  }
};

at::Tensor group_rational_forward_to_autograd(const at::Tensor& x, const at::Tensor& weight_numerator,
                                              const at::Tensor& weight_denominator, int64_t groups,
                                              at::ScalarType dtype) {
  if (!records(x, weight_numerator, weight_denominator)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_to_op().call(x, weight_numerator, weight_denominator, groups, dtype);
  }
  return GroupRationalToFunction::apply(x, weight_numerator, weight_denominator, groups, dtype);
}

using BiasForwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
using BiasBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);

const c10::TypedOperatorHandle<BiasForwardSig>& bias_forward_op() {
  static const auto op = find_op<BiasForwardSig>("mmkat::group_rational_bias_forward");
  return op;
}

const c10::TypedOperatorHandle<BiasBackwardSig>& bias_backward_op() {
  static const auto op = find_op<BiasBackwardSig>("mmkat::group_rational_bias_backward");
  return op;
}

// F(x + bias): one node holds x, the bias and the coefficients; its backward returns all four gradients from
// one pass (mmkat::group_rational_bias_backward).
class GroupRationalBiasFunction : public torch::autograd::Function<GroupRationalBiasFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& bias,
                            const at::Tensor& weight_numerator, const at::Tensor& weight_denominator, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = bias_forward_op().call(x, bias, weight_numerator, weight_denominator, groups);
    ctx->save_for_backward({x, bias, weight_numerator, weight_denominator});
    ctx->saved_data["groups"] = groups;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    at::Tensor dy = grad_outputs[0];
    if (!dy.defined()) dy = at::zeros_like(saved[0]);
    refuse_double_backward("mmkat::group_rational_bias_forward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [dx, d_bias, d_num, d_den] = bias_backward_op().call(dy, saved[0], saved[1], saved[2], saved[3], groups);
    return {ctx->needs_input_grad(0) ? dx : at::Tensor(), ctx->needs_input_grad(1) ? d_bias : at::Tensor(),
            ctx->needs_input_grad(2) ? d_num : at::Tensor(), ctx->needs_input_grad(3) ? d_den : at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor group_rational_bias_forward_autograd(const at::Tensor& x, const at::Tensor& bias,
                                                const at::Tensor& weight_numerator,
                                                const at::Tensor& weight_denominator, int64_t groups) {
  if (!records(x, bias, weight_numerator, weight_denominator)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return bias_forward_op().call(x, bias, weight_numerator, weight_denominator, groups);
  }
  return GroupRationalBiasFunction::apply(x, bias, weight_numerator, weight_denominator, groups);
}

using LinearSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&,
                             const std::optional<at::Tensor>&, at::ScalarType);

const c10::TypedOperatorHandle<LinearSig>& linear_op() {
  static const auto op = find_op<LinearSig>("mmkat::group_rational_linear");
  return op;
}

// t in `dtype`, without an aten::to call where it is already (below autograd an op must not return its input).
at::Tensor in_dtype(const at::Tensor& t, at::ScalarType dtype) { return t.scalar_type() == dtype ? t : t.to(dtype); }

// The gradients of linear(F(x), weight, bias) computed in `compute`, given dy (the output's gradient) and the
// forward's x, coefficients and weight: F(x) is recomputed (bitwise the same: the kernels are deterministic) for
// the weight gradient, and the rational's backward runs on the input gradient. Returns (dx, d_num, d_den, d_weight,
// d_bias), each undefined where `needs` (x, numerator, denominator, weight, bias) says it is not wanted.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rational_linear_backward(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight_numerator, const at::Tensor& weight_denominator,
    int64_t groups, const at::Tensor& weight, at::ScalarType compute, at::ScalarType bias_dtype,
    const std::array<bool, 5>& needs) {
  at::Tensor dx, d_num, d_den, d_weight, d_bias;
  const int64_t out_features = weight.size(0), in_features = weight.size(1);
  const at::Tensor dy2 = in_dtype(dy, compute).reshape({-1, out_features});
  if (needs[3]) {
    const at::Tensor a = group_rational_forward_to(x, weight_numerator, weight_denominator, groups, compute);
    d_weight = in_dtype(dy2.t().mm(a.reshape({-1, in_features})), weight.scalar_type());
  }
  if (needs[4]) d_bias = in_dtype(dy2.sum(0), bias_dtype);
  if (needs[0] || needs[1] || needs[2]) {
    const at::Tensor da = dy2.mm(in_dtype(weight, compute)).reshape(x.sizes());
    std::tie(dx, d_num, d_den) = backward_op().call(da, x, weight_numerator, weight_denominator, groups);
    if (!needs[0]) dx = at::Tensor();
    if (!needs[1]) d_num = at::Tensor();
    if (!needs[2]) d_den = at::Tensor();
  }
  return {dx, d_num, d_den, d_weight, d_bias};
}

class GroupRationalLinearFunction : public torch::autograd::Function<GroupRationalLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight_numerator,
                            const at::Tensor& weight_denominator, int64_t groups, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::ScalarType compute) {
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = linear_op().call(x, weight_numerator, weight_denominator, groups, weight, bias, compute);
    }
    ctx->save_for_backward({x, weight_numerator, weight_denominator, weight});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["compute"] = static_cast<int64_t>(compute);
    ctx->saved_data["has_bias"] = has_tensor(bias);
    ctx->saved_data["bias_dtype"] = static_cast<int64_t>(has_tensor(bias) ? bias->scalar_type() : weight.scalar_type());
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    refuse_double_backward("mmkat::group_rational_linear");
    const variable_list saved = ctx->get_saved_variables();
    variable_list grads(7);  // one per forward argument, groups and dtype included
    const at::Tensor& dy = grad_outputs[0];
    if (!dy.defined()) return grads;  // no gradient flowed into the output: none flows out
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    // needs_input_grad counts tensor inputs only: x 0, the coefficients 1 and 2, weight 3, bias 4.
    const std::array<bool, 5> needs{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2),
                                    ctx->needs_input_grad(3),
                                    ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(4)};
    std::tie(grads[0], grads[1], grads[2], grads[4], grads[5]) = rational_linear_backward(
        dy, saved[0], saved[1], saved[2], ctx->saved_data["groups"].toInt(), saved[3],
        static_cast<at::ScalarType>(ctx->saved_data["compute"].toInt()),
        static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt()), needs);
    return grads;
  }
};

at::Tensor group_rational_linear_autograd(const at::Tensor& x, const at::Tensor& weight_numerator,
                                          const at::Tensor& weight_denominator, int64_t groups,
                                          const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                          at::ScalarType dtype) {
  if (!records(x, weight_numerator, weight_denominator, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return linear_op().call(x, weight_numerator, weight_denominator, groups, weight, bias, dtype);
  }
  return GroupRationalLinearFunction::apply(x, weight_numerator, weight_denominator, groups, weight, bias, dtype);
}

using KanSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&,
                          const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, int64_t,
                          const at::Tensor&, const std::optional<at::Tensor>&, at::ScalarType);

const c10::TypedOperatorHandle<KanSig>& kan_op() {
  static const auto op = find_op<KanSig>("mmkat::group_rational_kan");
  return op;
}

// A whole KAN block, y = linear(F2(linear(F1(x), weight1, bias1)), weight2, bias2) in `dtype`, as two graph nodes
// that keep what the separate calls keep and free it when they do: KanInnerFunction, z = F2(linear(F1(x))), keeps
// x, the coefficients, weight1 and h = linear(F1(x)) (not F1(x), recomputed as in group_rational_linear);
// KanOuterFunction, y = linear(z, weight2, bias2), keeps z and weight2 in `dtype`, and is done with them (its
// backward runs first) before F2's backward makes its gradient of h: one node for the whole block would hold z
// through the rest of the backward, at the moment backward holds the most. Each backward makes the separate calls'
// kernel calls in their order (fc2's gradients as aten::addmm's backward forms them, F2's backward, then
// group_rational_linear's), so the gradients are theirs.
class KanInnerFunction : public torch::autograd::Function<KanInnerFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& numerator1,
                            const at::Tensor& denominator1, int64_t groups1, const at::Tensor& weight1,
                            const std::optional<at::Tensor>& bias1, const at::Tensor& numerator2,
                            const at::Tensor& denominator2, int64_t groups2, at::ScalarType dtype) {
    at::Tensor h, z;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      h = linear_op().call(x, numerator1, denominator1, groups1, weight1, bias1, dtype);
      z = forward_op().call(h, numerator2, denominator2, groups2);
    }
    ctx->save_for_backward({x, numerator1, denominator1, weight1, h, numerator2, denominator2});
    ctx->saved_data["groups1"] = groups1;
    ctx->saved_data["groups2"] = groups2;
    ctx->saved_data["dtype"] = static_cast<int64_t>(dtype);
    ctx->saved_data["bias1"] = static_cast<int64_t>(has_tensor(bias1) ? bias1->scalar_type() : at::kFloat);
    ctx->saved_data["has_bias1"] = has_tensor(bias1);
    return z;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    refuse_double_backward("mmkat::group_rational_kan");
    variable_list grads(10);  // one per forward argument, the ints and the dtype included
    const at::Tensor& dz = grad_outputs[0];
    if (!dz.defined()) return grads;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const bool has_bias1 = ctx->saved_data["has_bias1"].toBool();
    // needs_input_grad counts the tensor inputs that were given: x 0, numerator1 1, denominator1 2, weight1 3,
    // bias1 4 (if given), then numerator2 and denominator2.
    const size_t second = has_bias1 ? 5 : 4;
    const std::array<bool, 5> needs1{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2),
                                     ctx->needs_input_grad(3), has_bias1 && ctx->needs_input_grad(4)};
    const variable_list saved = ctx->get_saved_variables();
    auto [dh, d_num2, d_den2] =
        backward_op().call(dz, saved[4], saved[5], saved[6], ctx->saved_data["groups2"].toInt());
    if (ctx->needs_input_grad(second)) grads[6] = d_num2;
    if (ctx->needs_input_grad(second + 1)) grads[7] = d_den2;
    if (needs1[0] || needs1[1] || needs1[2] || needs1[3] || needs1[4]) {
      std::tie(grads[0], grads[1], grads[2], grads[4], grads[5]) = rational_linear_backward(
          dh, saved[0], saved[1], saved[2], ctx->saved_data["groups1"].toInt(), saved[3],
          static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt()),
          static_cast<at::ScalarType>(ctx->saved_data["bias1"].toInt()), needs1);
    }
    return grads;
  }
};

class KanOuterFunction : public torch::autograd::Function<KanOuterFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& z, const at::Tensor& weight2,
                            const std::optional<at::Tensor>& bias2, at::ScalarType dtype) {
    at::Tensor weight2_cast, y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      weight2_cast = in_dtype(weight2, dtype);
      std::optional<at::Tensor> b;
      if (has_tensor(bias2)) b = in_dtype(*bias2, dtype);
      y = at::linear(z, weight2_cast, b);
    }
    ctx->save_for_backward({z, weight2_cast});
    ctx->saved_data["dtype"] = static_cast<int64_t>(dtype);
    ctx->saved_data["weight2"] = static_cast<int64_t>(weight2.scalar_type());
    ctx->saved_data["bias2"] = static_cast<int64_t>(has_tensor(bias2) ? bias2->scalar_type() : at::kFloat);
    ctx->saved_data["has_bias2"] = has_tensor(bias2);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    refuse_double_backward("mmkat::group_rational_kan");
    variable_list grads(4);
    const at::Tensor& dy = grad_outputs[0];
    if (!dy.defined()) return grads;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& z = saved[0];
    const at::Tensor& weight2 = saved[1];  // in dtype
    // what aten::addmm's backward computes for linear(z, weight2, bias2), and the casts' backward (.to())
    const at::Tensor dy2 =
        in_dtype(dy, static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt())).reshape({-1, weight2.size(0)});
    if (ctx->needs_input_grad(1)) {
      grads[1] = in_dtype(dy2.t().mm(z.reshape({-1, weight2.size(1)})),
                          static_cast<at::ScalarType>(ctx->saved_data["weight2"].toInt()));
    }
    if (ctx->saved_data["has_bias2"].toBool() && ctx->needs_input_grad(2)) {
      grads[2] = in_dtype(dy2.sum(0), static_cast<at::ScalarType>(ctx->saved_data["bias2"].toInt()));
    }
    if (ctx->needs_input_grad(0)) grads[0] = dy2.mm(weight2).reshape(z.sizes());
    return grads;
  }
};

at::Tensor group_rational_kan_autograd(const at::Tensor& x, const at::Tensor& numerator1,
                                       const at::Tensor& denominator1, int64_t groups1, const at::Tensor& weight1,
                                       const std::optional<at::Tensor>& bias1, const at::Tensor& numerator2,
                                       const at::Tensor& denominator2, int64_t groups2, const at::Tensor& weight2,
                                       const std::optional<at::Tensor>& bias2, at::ScalarType dtype) {
  if (!records(x, numerator1, denominator1, weight1, bias1, numerator2, denominator2, weight2, bias2)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return kan_op().call(x, numerator1, denominator1, groups1, weight1, bias1, numerator2, denominator2, groups2,
                         weight2, bias2, dtype);
  }
  const at::Tensor z = KanInnerFunction::apply(x, numerator1, denominator1, groups1, weight1, bias1, numerator2,
                                               denominator2, groups2, dtype);
  return KanOuterFunction::apply(z, weight2, bias2, dtype);
}

at::Tensor group_rational_forward_autograd(const at::Tensor& x, const at::Tensor& weight_numerator,
                                           const at::Tensor& weight_denominator, int64_t groups) {
  if (!records(x, weight_numerator, weight_denominator)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op().call(x, weight_numerator, weight_denominator, groups);
  }
  return GroupRationalFunction::apply(x, weight_numerator, weight_denominator, groups);
}

}  // namespace
}  // namespace mmkat

TORCH_LIBRARY_IMPL(mmkat, Autograd, m) {
  m.impl("group_rational_forward", &mmkat::group_rational_forward_autograd);
  m.impl("group_rational_forward_to", &mmkat::group_rational_forward_to_autograd);
  m.impl("group_rational_linear", &mmkat::group_rational_linear_autograd);
  m.impl("group_rational_bias_forward", &mmkat::group_rational_bias_forward_autograd);
  m.impl("group_rational_kan", &mmkat::group_rational_kan_autograd);
}
