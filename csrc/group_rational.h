// mmkat: declarations shared by the bindings (group_rational.cpp) and the kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

namespace mmkat {

// The typed handle of the operator `name` ("mmkat::..."), for calls through the dispatcher; callers keep it in a
// function-local static (looked up once: the schemas are defined when the library loads, before any call).
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// Checks shared by every backend; the messages name what was expected. `op` names the caller.
void check_group_rational_inputs(const at::Tensor& x, const at::Tensor& weight_numerator,
                                 const at::Tensor& weight_denominator, int64_t groups, const char* op);
// The backward's extra checks: grad_output matches x in shape and device.
void check_grad_output(const at::Tensor& grad_output, const at::Tensor& x, const char* op);
// The bias ops' check: bias is a floating-point [C] tensor on x's device.
void check_bias(const at::Tensor& bias, const at::Tensor& x, const char* op);

at::Tensor group_rational_forward_cpu(const at::Tensor& x, const at::Tensor& weight_numerator,
                                      const at::Tensor& weight_denominator, int64_t groups);
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_rational_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight_numerator,
    const at::Tensor& weight_denominator, int64_t groups);

// mmkat::group_rational_forward_to through the dispatcher (to the tensor's backend; for the fused linear op).
at::Tensor group_rational_forward_to(const at::Tensor& x, const at::Tensor& weight_numerator,
                                     const at::Tensor& weight_denominator, int64_t groups, at::ScalarType dtype);
// The forward with its result written in `dtype` (one rounding from the math type: the same values as the
// forward followed by .to(dtype) whenever dtype is not wider than x's type).
at::Tensor group_rational_forward_to_cpu(const at::Tensor& x, const at::Tensor& weight_numerator,
                                         const at::Tensor& weight_denominator, int64_t groups, at::ScalarType dtype);

// The type the kernels compute in: float64 for float64 inputs, float32 otherwise.
inline at::ScalarType math_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The bias ops composed of the plain ones: z = x + bias formed in the math type, mmkat::group_rational_backward
// at z through the dispatcher, d_bias the per-channel sums of dz; (dx in x's type, d_bias in the bias's type,
// d_num, d_den). The CPU kernel of group_rational_bias_backward, and the CUDA one's fallback.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_rational_bias_backward_composite(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& bias, const at::Tensor& weight_numerator,
    const at::Tensor& weight_denominator, int64_t groups);

// F(x + bias) and its backward (dx, d_bias, d_num, d_den) on the CPU: x + bias formed in the math type, then the
// kernels above (the CUDA kernels add the bias in registers).
at::Tensor group_rational_bias_forward_cpu(const at::Tensor& x, const at::Tensor& bias,
                                           const at::Tensor& weight_numerator, const at::Tensor& weight_denominator,
                                           int64_t groups);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_rational_bias_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& bias, const at::Tensor& weight_numerator,
    const at::Tensor& weight_denominator, int64_t groups);

}  // namespace mmkat
