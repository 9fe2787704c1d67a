// mmkat: the per-element math of the group-rational function, shared by the CPU and CUDA kernels.
//
//   P(x) = a0 + a1 x + a2 x^2 + a3 x^3 + a4 x^4 + a5 x^5
//   Q(x) = 1 + |b0| |x| + |b1| |x|^2 + |b2| |x|^3 + |b3| |x|^4          (the released kernels' form)
//   F(x) = P(x) / Q(x)
//
// `babs` always holds |b| (taken once per group by the caller). The denominator gradients are returned
// WITHOUT the factor sign(b_j): it is constant over a group, so the caller multiplies the reduced sum by
// it once (with sign(0) = +1).
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define MMKAT_HD __host__ __device__ __forceinline__
#else
#define MMKAT_HD inline
#endif

namespace mmkat {

// 1 / q for the direct form's denominator, q = Q(|x|) >= 1 (or NaN). On the GPU, in fp32: the hardware's
// approximate reciprocal refined by one Newton step, within one unit in the last place of 1 / q and without the
// slow path of a correctly rounded division (q is never 0, subnormal or, for |x| <= kFarThreshold and
// coefficients of sane size, infinite). Elsewhere, and in fp64, the division.
template <typename T>
MMKAT_HD T reciprocal_of_denominator(T q) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(q));
    const float e = fmaf(-q, r, 1.0f);
    return fmaf(r, e, r);
  }
#endif
  return T(1) / q;
}

constexpr int kNumerator = 6;    // a0..a5
constexpr int kDenominator = 4;  // b0..b3
constexpr int kCoeffGrads = kNumerator + kDenominator;

// Huge inputs. The direct form overflows long before F does: P(x) ~ a5 x^5 passes the fp32 range at
// |x| ~ 1e7.6 while F(x) ~ (a5 / |b3|) x. For |x| > kFarThreshold the function is evaluated divided through
// by x^5 and x^4 (t = 1/x, u = |t|):
//   F(x) = x Pr(t) / Qr(u),  Pr(t) = P(x) / x^5 = a5 + a4 t + a3 t^2 + a2 t^3 + a1 t^4 + a0 t^5,
//                            Qr(u) = Q(|x|) / x^4 = |b3| + |b2| u + |b1| u^2 + |b0| u^3 + u^4,
// finite wherever F(x) is representable and Qr does not underflow (|b3| > 0, or |x| below ~1e11), and at
// x = +-inf the limit +-inf with the sign of a5 x (NaN when a5 = 0). NaN stays NaN. Below the threshold the
// direct form cannot overflow unless sum |a_k| exceeds ~1e14, and keeps its bits. The threshold is a constant
// (not a per-group bound) so that torch.compile's fused forward compares against a literal.
constexpr double kFarThreshold = 65536.0;  // 2^16, above every finite fp16 value

template <typename T>
MMKAT_HD T magnitude(T v) {  // |v| without a libm call (vectorises on the CPU, the same on the GPU)
  return v < T(0) ? -v : v;
}

template <typename T>
MMKAT_HD T numerator(T x, const T* a) {
  T p = a[5];
  p = p * x + a[4];
  p = p * x + a[3];
  p = p * x + a[2];
  p = p * x + a[1];
  p = p * x + a[0];
  return p;
}

template <typename T>
MMKAT_HD T denominator(T ax, const T* babs) {
  T q = babs[3];
  q = q * ax + babs[2];
  q = q * ax + babs[1];
  q = q * ax + babs[0];
  q = q * ax + T(1);
  return q;
}

// F(x) in the direct form (|x| <= kFarThreshold; ax = |x|).
template <typename T>
MMKAT_HD T rational_forward_direct(T x, T ax, const T* a, const T* babs) {
#if defined(__CUDA_ARCH__)
  // P times the reciprocal of Q (within an ulp of the quotient, without the division's slow path)
  return numerator(x, a) * reciprocal_of_denominator(denominator(ax, babs));
#else
  return numerator(x, a) / denominator(ax, babs);
#endif
}

// The divided-through form's polynomials (|x| > kFarThreshold, t = 1/x, u = |t|): the direct form's
// coefficients in reverse order.
template <typename T>
MMKAT_HD T numerator_far(T t, const T* a) {  // Pr(t) = P(x) / x^5
  T pr = a[0];
  pr = pr * t + a[1];
  pr = pr * t + a[2];
  pr = pr * t + a[3];
  pr = pr * t + a[4];
  pr = pr * t + a[5];
  return pr;
}

template <typename T>
MMKAT_HD T denominator_far(T u, const T* babs) {  // Qr(u) = Q(|x|) / x^4
  T qr = T(1);
  qr = qr * u + babs[0];
  qr = qr * u + babs[1];
  qr = qr * u + babs[2];
  qr = qr * u + babs[3];
  return qr;
}

// F(x) in the divided-through form.
template <typename T>
MMKAT_HD T rational_forward_far(T x, const T* a, const T* babs) {
  const T t = T(1) / x;
  return x * numerator_far(t, a) / denominator_far(magnitude(t), babs);
}

template <typename T>
MMKAT_HD T rational_forward(T x, const T* a, const T* babs) {
  const T ax = magnitude(x);
  return ax > T(kFarThreshold) ? rational_forward_far(x, a, babs) : rational_forward_direct(x, ax, a, babs);
}

// Backward of one element: returns dL/dx and adds its share to the 10 coefficient-gradient sums,
// g[k * kStride]:
//   k = 0..5: dy x^k / Q                       (numerator)
//   k = 6..9: -dy P / Q^2 |x|^(k-5)            (denominator, sign(b_j) applied by the caller)
// (kStride > 1 lets a CPU loop keep one accumulator row per vector lane.) The direct form, |x| <= kFarThreshold:
template <typename T, int kStride = 1>
MMKAT_HD T rational_backward_direct(T x, T dy, const T* a, const T* babs, T* g) {
  const bool negative = x < T(0);  // sign(x) = -1, else +1 (sign(0) = +1)
#if defined(__CUDA_ARCH__)
  const T ax = fabs(x);  // an operand modifier of the instructions that read it, not an instruction
#else
  const T ax = magnitude(x);
#endif
  // The powers of x, shared by P, P', Q, Q' and the ten coefficient sums (|x|^2 = x^2, |x|^4 = x^4): every
  // polynomial below is then one fused multiply-add per term (the k a_k and (j+1) |b_j| are the same for
  // every element: the compiler computes them once per thread).
  const T x2 = x * x;
  const T x3 = x2 * x;
  const T x4 = x2 * x2;
  const T x5 = x4 * x;
  const T ax3 = x2 * ax;
  T p = a[1] * x + a[0];
  p = a[2] * x2 + p;
  p = a[3] * x3 + p;
  p = a[4] * x4 + p;
  p = a[5] * x5 + p;
  T dp = (T(2) * a[2]) * x + a[1];
  dp = (T(3) * a[3]) * x2 + dp;
  dp = (T(4) * a[4]) * x3 + dp;
  dp = (T(5) * a[5]) * x4 + dp;
  T q = babs[0] * ax + T(1);
  q = babs[1] * x2 + q;
  q = babs[2] * ax3 + q;
  q = babs[3] * x4 + q;
  T dq = (T(2) * babs[1]) * ax + babs[0];
  dq = (T(3) * babs[2]) * x2 + dq;
  dq = (T(4) * babs[3]) * ax3 + dq;
  const T iq = reciprocal_of_denominator(q);
  const T f = p * iq;
  // dF/dx = P'/Q - sign(x) Q'(|x|) P / Q^2 = (P' - F sign(x) Q'(|x|)) / Q
  const T fs = negative ? -f : f;  // F sign(x)
  const T t = dy * iq;
  const T dx = t * (dp - fs * dq);
  g[0 * kStride] += t;
  g[1 * kStride] += t * x;
  g[2 * kStride] += t * x2;
  g[3 * kStride] += t * x3;
  g[4 * kStride] += t * x4;
  g[5 * kStride] += t * x5;
  const T c = -(t * f);
  g[6 * kStride] += c * ax;
  g[7 * kStride] += c * x2;
  g[8 * kStride] += c * ax3;
  g[9 * kStride] += c * x4;
  return dx;
}

// The same in the divided-through form, |x| > kFarThreshold: P = x^5 Pr(t), P' = x^4 P'r(t), Q = x^4 Qr(u),
// Q' = |x|^3 Q'r(u), so dF/dx = (P'r - Pr Q'r / Qr) / Qr, dF/da_k = x^k / Q, dF/d|b_j| = -F |x|^(j+1) / Q.
template <typename T, int kStride = 1>
MMKAT_HD T rational_backward_far(T x, T dy, const T* a, const T* babs, T* g) {
  const T t = T(1) / x;
  const T u = magnitude(t);
  const T pr = numerator_far(t, a);
  T dpr = a[1];  // P' / x^4 = 5 a5 + 4 a4 t + 3 a3 t^2 + 2 a2 t^3 + a1 t^4
  dpr = dpr * t + T(2) * a[2];
  dpr = dpr * t + T(3) * a[3];
  dpr = dpr * t + T(4) * a[4];
  dpr = dpr * t + T(5) * a[5];
  const T qr = denominator_far(u, babs);
  T dqr = babs[0];  // Q' / |x|^3
  dqr = dqr * u + T(2) * babs[1];
  dqr = dqr * u + T(3) * babs[2];
  dqr = dqr * u + T(4) * babs[3];
  const T iq = T(1) / qr;
  const T dx = dy * (dpr - pr * iq * dqr) * iq;
  T w = dy * iq;  // dy x^4 / Q
  g[5 * kStride] += w * x;
  g[4 * kStride] += w;
  w *= t;
  g[3 * kStride] += w;
  w *= t;
  g[2 * kStride] += w;
  w *= t;
  g[1 * kStride] += w;
  w *= t;
  g[0 * kStride] += w;
  T c = -dy * (x * pr * iq) * iq;  // -dy F x^4 / Q, F = x Pr / Qr as in the forward
  g[9 * kStride] += c;
  c *= u;
  g[8 * kStride] += c;
  c *= u;
  g[7 * kStride] += c;
  c *= u;
  g[6 * kStride] += c;
  return dx;
}

template <typename T, int kStride = 1>
MMKAT_HD T rational_backward(T x, T dy, const T* a, const T* babs, T* g) {
  const T ax = magnitude(x);
  if (ax > T(kFarThreshold)) return rational_backward_far<T, kStride>(x, dy, a, babs, g);
  return rational_backward_direct<T, kStride>(x, dy, a, babs, g);
}

}  // namespace mmkat
