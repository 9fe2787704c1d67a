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

// 1 / q, correctly rounded: bitwise the same as the division 1 / q, but on the GPU the reciprocal
// instruction sequence is shorter than the general division routine.
template <typename T>
MMKAT_HD T reciprocal(T q) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) return __frcp_rn(q);
#endif
  return T(1) / q;
}

constexpr int kNumerator = 6;    // a0..a5
constexpr int kDenominator = 4;  // b0..b3
constexpr int kCoeffGrads = kNumerator + kDenominator;

template <typename T>
MMKAT_HD T rational_forward(T x, const T* a, const T* babs) {
  const T ax = x < T(0) ? -x : x;
  T p = a[5];
  p = p * x + a[4];
  p = p * x + a[3];
  p = p * x + a[2];
  p = p * x + a[1];
  p = p * x + a[0];
  T q = babs[3];
  q = q * ax + babs[2];
  q = q * ax + babs[1];
  q = q * ax + babs[0];
  q = q * ax + T(1);
  return p / q;
}

// Returns dL/dx for one element and adds its share to the 10 coefficient-gradient sums, g[k * kStride]:
//   k = 0..5: dy x^k / Q                       (numerator)
//   k = 6..9: -dy P / Q^2 |x|^(k-5)            (denominator, sign(b_j) applied by the caller)
// (kStride > 1 lets a CPU loop keep one accumulator row per vector lane.)
template <typename T, int kStride = 1>
MMKAT_HD T rational_backward(T x, T dy, const T* a, const T* babs, T* g) {
  const T sx = x < T(0) ? T(-1) : T(1);  // sign(0) = +1
  const T ax = x * sx;
  T p = a[5];
  p = p * x + a[4];
  p = p * x + a[3];
  p = p * x + a[2];
  p = p * x + a[1];
  p = p * x + a[0];
  T dp = T(5) * a[5];
  dp = dp * x + T(4) * a[4];
  dp = dp * x + T(3) * a[3];
  dp = dp * x + T(2) * a[2];
  dp = dp * x + a[1];
  T q = babs[3];
  q = q * ax + babs[2];
  q = q * ax + babs[1];
  q = q * ax + babs[0];
  q = q * ax + T(1);
  T dq = T(4) * babs[3];
  dq = dq * ax + T(3) * babs[2];
  dq = dq * ax + T(2) * babs[1];
  dq = dq * ax + babs[0];
  const T iq = reciprocal(q);
  const T f = p * iq;
  // dF/dx = P'/Q - sign(x) Q'(|x|) P / Q^2 = (P' - F sign(x) Q'(|x|)) / Q
  const T dx = dy * (dp - f * sx * dq) * iq;
  T t = dy * iq;
  g[0 * kStride] += t;
  t *= x;
  g[1 * kStride] += t;
  t *= x;
  g[2 * kStride] += t;
  t *= x;
  g[3 * kStride] += t;
  t *= x;
  g[4 * kStride] += t;
  t *= x;
  g[5 * kStride] += t;
  const T c = -dy * f * iq;
  T u = c * ax;
  g[6 * kStride] += u;
  u *= ax;
  g[7 * kStride] += u;
  u *= ax;
  g[8 * kStride] += u;
  u *= ax;
  g[9 * kStride] += u;
  return dx;
}

}  // namespace mmkat
