// mmkat._C: the Python module, the operator schema (TORCH_LIBRARY) and the input checks.
//
// The operators are functional (they return new tensors), so torch.compile, fake tensors and
// torch.library.opcheck handle them. Where each piece is registered:
//   * the schemas and the CPU kernels: here (the kernels live in group_rational_cpu.cpp);
//   * the CUDA kernels: group_rational_cuda.cu (compiled only when a CUDA toolkit was found);
//   * the autograd kernels of group_rational_forward, group_rational_forward_to, group_rational_bias_forward,
//     group_rational_linear and group_rational_kan: group_rational_autograd.cpp;
//   * group_rational_linear and group_rational_kan below autograd (no gradient wanted, meta and fake tensors):
//     here, composed of group_rational_forward_to, group_rational_forward and aten::linear;
//   * the fake (meta) kernels used by torch.compile: mmkat/ops/rational.py.
#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>
#include <torch/library.h>

#include "group_rational.h"
#include "rational_math.h"

#ifndef MMKAT_TORCH_VERSION
#define MMKAT_TORCH_VERSION "unknown"
#endif
#ifndef MMKAT_CUDA_ARCHS
#define MMKAT_CUDA_ARCHS ""
#endif
#ifndef MMKAT_CUDA_BUILD
#define MMKAT_CUDA_BUILD ""  // the CUDA kernels' build options that were set, "NAME=VALUE,..." (none: "")
#endif
#ifdef MMKAT_WITH_CUDA
constexpr long kWithCuda = 1;
#else
constexpr long kWithCuda = 0;
#endif

namespace mmkat {

void check_group_rational_inputs(const at::Tensor& x, const at::Tensor& weight_numerator,
                                 const at::Tensor& weight_denominator, int64_t groups, const char* op) {
  TORCH_CHECK(x.is_floating_point(), op, ": x must be a floating-point tensor (float32, float64, float16 or ",
              "bfloat16), got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension (..., C), got a 0-d tensor");
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  const int64_t channels = x.size(-1);
  TORCH_CHECK(channels % groups == 0, op, ": the last dimension of x (C = ", channels,
              ") must be divisible by groups = ", groups);
  TORCH_CHECK(weight_numerator.is_floating_point() && weight_denominator.is_floating_point(), op,
              ": weight_numerator and weight_denominator must be floating-point, got ",
              weight_numerator.scalar_type(), " and ", weight_denominator.scalar_type());
  TORCH_CHECK(weight_numerator.dim() == 2 && weight_numerator.size(0) == 1 && weight_numerator.size(1) == kNumerator,
              op, ": weight_numerator must have shape [1, ", kNumerator, "], got ", weight_numerator.sizes());
  TORCH_CHECK(weight_denominator.dim() == 2 && weight_denominator.size(0) == groups &&
                  weight_denominator.size(1) == kDenominator,
              op, ": weight_denominator must have shape [groups=", groups, ", ", kDenominator, "], got ",
              weight_denominator.sizes());
  TORCH_CHECK(weight_numerator.device() == x.device() && weight_denominator.device() == x.device(), op,
              ": x, weight_numerator and weight_denominator must be on one device, got ", x.device(), ", ",
              weight_numerator.device(), " and ", weight_denominator.device());
}

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& x, const char* op) {
  TORCH_CHECK(grad_output.sizes() == x.sizes(), op, ": grad_output must have the shape of x ", x.sizes(), ", got ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.device() == x.device(), op, ": grad_output must be on ", x.device(), ", got ",
              grad_output.device());
}

void check_bias(const at::Tensor& bias, const at::Tensor& x, const char* op) {
  TORCH_CHECK(bias.is_floating_point(), op, ": bias must be a floating-point tensor, got ", bias.scalar_type());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x.size(-1), op, ": bias must have shape [C=", x.size(-1),
              "] (the last dimension of x), got ", bias.sizes());
  TORCH_CHECK(bias.device() == x.device(), op, ": bias must be on ", x.device(), ", got ", bias.device());
}

namespace {

at::Tensor plus_bias_in_math_type(const at::Tensor& x, const at::Tensor& bias) {
  const at::ScalarType math = math_type(x);
  return x.to(math) + bias.to(math);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_rational_bias_backward_composite(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& bias, const at::Tensor& weight_numerator,
    const at::Tensor& weight_denominator, int64_t groups) {
  using BackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                     const at::Tensor&, const at::Tensor&, int64_t);
  static const auto backward = find_op<BackwardSig>("mmkat::group_rational_backward");
  auto [dz, d_num, d_den] =
      backward.call(grad_output, plus_bias_in_math_type(x, bias), weight_numerator, weight_denominator, groups);
  at::Tensor d_bias = dz.reshape({-1, x.size(-1)}).sum(0);
  return {dz.to(x.scalar_type()), d_bias.to(bias.scalar_type()), d_num, d_den};
}

at::Tensor group_rational_bias_forward_cpu(const at::Tensor& x, const at::Tensor& bias,
                                           const at::Tensor& weight_numerator, const at::Tensor& weight_denominator,
                                           int64_t groups) {
  constexpr const char* op = "mmkat::group_rational_bias_forward";
  check_group_rational_inputs(x, weight_numerator, weight_denominator, groups, op);
  check_bias(bias, x, op);
  return group_rational_forward_to_cpu(plus_bias_in_math_type(x, bias), weight_numerator, weight_denominator, groups,
                                       x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_rational_bias_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& bias, const at::Tensor& weight_numerator,
    const at::Tensor& weight_denominator, int64_t groups) {
  constexpr const char* op = "mmkat::group_rational_bias_backward";
  check_group_rational_inputs(x, weight_numerator, weight_denominator, groups, op);
  check_grad_output(grad_output, x, op);
  check_bias(bias, x, op);
  return group_rational_bias_backward_composite(grad_output, x, bias, weight_numerator, weight_denominator, groups);
}

at::Tensor group_rational_forward_to_cpu(const at::Tensor& x, const at::Tensor& weight_numerator,
                                         const at::Tensor& weight_denominator, int64_t groups, at::ScalarType dtype) {
  at::Tensor y = group_rational_forward_cpu(x, weight_numerator, weight_denominator, groups);
  return y.scalar_type() == dtype ? y : y.to(dtype);
}

at::Tensor group_rational_forward_to(const at::Tensor& x, const at::Tensor& weight_numerator,
                                     const at::Tensor& weight_denominator, int64_t groups, at::ScalarType dtype) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                            at::ScalarType)>("mmkat::group_rational_forward_to");
  return op.call(x, weight_numerator, weight_denominator, groups, dtype);
}

namespace {

// linear(a, weight, bias) with the weight and bias cast to `dtype`, as nn.Linear computes under autocast.
at::Tensor linear_in(const at::Tensor& a, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     at::ScalarType dtype) {
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = bias->to(dtype);
  return at::linear(a, weight.to(dtype), b);
}

// group_rational_linear without autograd: linear(F(x), weight, bias) computed in `dtype` (the caller's choice:
// the autocast dtype under autocast, x's otherwise), F(x) written straight in it.
at::Tensor group_rational_linear_composite(const at::Tensor& x, const at::Tensor& weight_numerator,
                                           const at::Tensor& weight_denominator, int64_t groups,
                                           const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                           at::ScalarType dtype) {
  return linear_in(group_rational_forward_to(x, weight_numerator, weight_denominator, groups, dtype), weight, bias,
                   dtype);
}

// group_rational_kan without autograd: a whole KAN block, linear(F2(linear(F1(x), w1, b1)), w2, b2), in `dtype`.
// The same calls as the separate modules make (under autocast, nn.Linear casts its weight and bias to `dtype`).
at::Tensor group_rational_kan_composite(const at::Tensor& x, const at::Tensor& numerator1,
                                        const at::Tensor& denominator1, int64_t groups1, const at::Tensor& weight1,
                                        const std::optional<at::Tensor>& bias1, const at::Tensor& numerator2,
                                        const at::Tensor& denominator2, int64_t groups2, const at::Tensor& weight2,
                                        const std::optional<at::Tensor>& bias2, at::ScalarType dtype) {
  using ForwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
  static const auto forward = find_op<ForwardSig>("mmkat::group_rational_forward");
  const at::Tensor h = group_rational_linear_composite(x, numerator1, denominator1, groups1, weight1, bias1, dtype);
  return linear_in(forward.call(h, numerator2, denominator2, groups2), weight2, bias2, dtype);
}

}  // namespace
}  // namespace mmkat

TORCH_LIBRARY(mmkat, m) {
  m.def(
      "group_rational_forward(Tensor x, Tensor weight_numerator, Tensor weight_denominator, int groups) "
      "-> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "group_rational_backward(Tensor grad_output, Tensor x, Tensor weight_numerator, "
      "Tensor weight_denominator, int groups) -> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  // F(x + bias), bias [C] (a KAN block's fc1 bias taken into act2): its backward returns (dx, d_bias, d_num,
  // d_den), the bias gradient (per-channel sums of dx) from the same pass over x and dy.
  m.def(
      "group_rational_bias_forward(Tensor x, Tensor bias, Tensor weight_numerator, Tensor weight_denominator, "
      "int groups) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "group_rational_bias_backward(Tensor grad_output, Tensor x, Tensor bias, Tensor weight_numerator, "
      "Tensor weight_denominator, int groups) -> (Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "group_rational_forward_to(Tensor x, Tensor weight_numerator, Tensor weight_denominator, int groups, "
      "ScalarType dtype) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  // linear(F(x), weight, bias) whose backward recomputes F(x) from x instead of keeping it: a KAN block's
  // act1 -> fc1 with one activation fewer held for backward.
  m.def(
      "group_rational_linear(Tensor x, Tensor weight_numerator, Tensor weight_denominator, int groups, "
      "Tensor weight, Tensor? bias, ScalarType dtype) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  // A whole KAN block in one call, linear(F2(linear(F1(x), weight1, bias1)), weight2, bias2) computed in dtype:
  // the kernels and kept tensors of the separate calls (act1's output recomputed as in group_rational_linear), with
  // two autograd nodes instead of several (eager calls on small tensors are bound by their host cost).
  m.def(
      "group_rational_kan(Tensor x, Tensor numerator1, Tensor denominator1, int groups1, Tensor weight1, "
      "Tensor? bias1, Tensor numerator2, Tensor denominator2, int groups2, Tensor weight2, Tensor? bias2, "
      "ScalarType dtype) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(mmkat, CompositeExplicitAutograd, m) {
  m.impl("group_rational_linear", &mmkat::group_rational_linear_composite);
  m.impl("group_rational_kan", &mmkat::group_rational_kan_composite);
}

TORCH_LIBRARY_IMPL(mmkat, CPU, m) {
  m.impl("group_rational_forward", &mmkat::group_rational_forward_cpu);
  m.impl("group_rational_forward_to", &mmkat::group_rational_forward_to_cpu);
  m.impl("group_rational_backward", &mmkat::group_rational_backward_cpu);
  m.impl("group_rational_bias_forward", &mmkat::group_rational_bias_forward_cpu);
  m.impl("group_rational_bias_backward", &mmkat::group_rational_bias_backward_cpu);
}

// A plain extension module: importing mmkat._C loads this library, which runs the registrations above.
static struct PyModuleDef mmkat_c_module = {
    PyModuleDef_HEAD_INIT, "_C", "mmkat's compiled group-rational operator (torch.ops.mmkat).", -1, nullptr,
};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&mmkat_c_module);
  if (module == nullptr) return nullptr;
  if (PyModule_AddIntConstant(module, "with_cuda", kWithCuda) < 0 ||
      PyModule_AddStringConstant(module, "cuda_archs", MMKAT_CUDA_ARCHS) < 0 ||
      PyModule_AddStringConstant(module, "cuda_build", MMKAT_CUDA_BUILD) < 0 ||
      PyModule_AddStringConstant(module, "built_with_torch", MMKAT_TORCH_VERSION) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
