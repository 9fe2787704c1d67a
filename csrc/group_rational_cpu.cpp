// mmkat: CPU kernels of the group-rational op.
//
// x is viewed as [rows, C] with C = groups * D. Work is cut into chunks of whole rows whose size depends
// only on C (never on the thread count), threads take chunks, and each chunk reduces its own coefficient
// gradients; the per-chunk partial sums are then added in chunk order. The result is therefore bitwise
// the same for any number of threads. Math runs in float (double for float64 inputs).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <c10/util/SmallVector.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "group_rational.h"
#include "rational_math.h"

namespace mmkat {
namespace {

constexpr int64_t kChunkElements = 1 << 15;
constexpr int kLanes = 8;  // accumulator lanes of the backward loop (a multiple of any SIMD width used)

int64_t rows_per_chunk(int64_t channels) {
  return std::max<int64_t>(1, kChunkElements / std::max<int64_t>(channels, 1));
}

// Per-group coefficients in the math type: a[6] shared, |b|[groups][4], and sign(b) (sign(0) = +1) for the
// backward. Read straight from the (usually already contiguous, math-typed) parameters: no temporaries.
template <typename T>
struct Coefficients {
  T a[kNumerator];
  c10::SmallVector<T, 16 * kDenominator> babs, sign;
  Coefficients(const at::Tensor& weight_numerator, const at::Tensor& weight_denominator, int64_t groups)
      : babs(groups * kDenominator), sign(groups * kDenominator) {
    const at::ScalarType math = c10::CppTypeToScalarType<T>::value;
    const at::Tensor wn = weight_numerator.to(math).contiguous();
    const at::Tensor wd = weight_denominator.to(math).contiguous();
    const T* pn = wn.const_data_ptr<T>();
    const T* pd = wd.const_data_ptr<T>();
    std::copy(pn, pn + kNumerator, a);
    for (int64_t i = 0; i < groups * kDenominator; ++i) {
      babs[i] = std::abs(pd[i]);
      sign[i] = pd[i] < T(0) ? T(-1) : T(1);
    }
  }
};

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MMKAT_X86_DISPATCH 1
#define MMKAT_INLINE inline __attribute__((always_inline))
#else
#define MMKAT_X86_DISPATCH 0
#define MMKAT_INLINE inline
#endif

constexpr int64_t kTile = 256;  // half-precision inputs are converted to the math type tile by tile

// One (row, group) segment of d contiguous elements. fp32/fp64 run straight over the data; fp16/bf16 go
// through a small buffer in the math type so that the arithmetic loop vectorises. The vectorised loop takes
// the direct form and the largest |x|; where that passes kFarThreshold (huge or infinite inputs, rare), the
// elements beyond it are evaluated again in the divided-through form.
template <typename scalar_t, typename T>
MMKAT_INLINE void forward_segment(const scalar_t* x, scalar_t* y, int64_t d, const T* a, const T* b) {
  const T bound = static_cast<T>(kFarThreshold);
  if constexpr (std::is_same_v<scalar_t, T>) {
    T top = 0;
#pragma omp simd reduction(max : top)
    for (int64_t k = 0; k < d; ++k) {
      const T ax = magnitude(x[k]);
      y[k] = rational_forward_direct<T>(x[k], ax, a, b);
      top = std::max(top, ax);
    }
    if (!(top <= bound)) {
      for (int64_t k = 0; k < d; ++k) {
        if (magnitude(x[k]) > bound) y[k] = rational_forward_far<T>(x[k], a, b);
      }
    }
  } else {
    T buf[kTile];
    for (int64_t t0 = 0; t0 < d; t0 += kTile) {
      const int64_t n = std::min(kTile, d - t0);
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<T>(x[t0 + i]);
      T top = 0;
#pragma omp simd reduction(max : top)
      for (int64_t i = 0; i < n; ++i) {
        const T ax = magnitude(buf[i]);
        top = std::max(top, ax);
        buf[i] = rational_forward_direct<T>(buf[i], ax, a, b);
      }
      if (!(top <= bound)) {
        for (int64_t i = 0; i < n; ++i) {
          const T xi = static_cast<T>(x[t0 + i]);
          if (magnitude(xi) > bound) buf[i] = rational_forward_far<T>(xi, a, b);
        }
      }
      for (int64_t i = 0; i < n; ++i) y[t0 + i] = static_cast<scalar_t>(buf[i]);
    }
  }
}

// Backward over n elements of math-type data; acc holds one row of 10 sums per vector lane, so the lane
// loop vectorises without a reduction clause (and the order of additions is fixed). The loop takes the
// direct form and returns the largest |x|: where that passes kFarThreshold, backward_chunk recomputes the
// (chunk, group)'s sums with backward_redo.
template <typename T>
MMKAT_INLINE T backward_math(const T* x, const T* dy, T* dx, int64_t n, const T* a, const T* b, T (*acc)[kLanes]) {
  T top[kLanes] = {};  // per lane, like the sums
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const T xv = x[k + l];  // read before dx is written: dx may alias x
      top[l] = std::max(top[l], magnitude(xv));
      dx[k + l] = rational_backward_direct<T, kLanes>(xv, dy[k + l], a, b, &acc[0][l]);
    }
  }
  for (; k < n; ++k) {
    const T xv = x[k];
    top[0] = std::max(top[0], magnitude(xv));
    dx[k] = rational_backward_direct<T, kLanes>(xv, dy[k], a, b, &acc[0][0]);
  }
  T most = top[0];
  for (int l = 1; l < kLanes; ++l) most = std::max(most, top[l]);
  return most;
}

// The rare path, element by element: the sums again, each element beyond the threshold contributing (and
// getting its dx) through the divided-through form. The other elements keep the dx of the vectorised loop.
template <typename scalar_t, typename T>
MMKAT_INLINE void backward_redo(const T* x, const T* dy, scalar_t* dx, int64_t n, const T* a, const T* b,
                                T (*acc)[kLanes]) {
  const T bound = static_cast<T>(kFarThreshold);
  for (int64_t k = 0; k < n; ++k) {
    T share[kCoeffGrads] = {};
    if (magnitude(x[k]) > bound) {
      dx[k] = static_cast<scalar_t>(rational_backward_far<T, 1>(x[k], dy[k], a, b, share));
    } else {
      rational_backward_direct<T, 1>(x[k], dy[k], a, b, share);
    }
    for (int i = 0; i < kCoeffGrads; ++i) acc[i][k % kLanes] += share[i];
  }
}

// Returns the largest |x| seen (first pass) or 0 (redo).
template <bool kRedo, typename scalar_t, typename T>
MMKAT_INLINE T backward_segment(const scalar_t* x, const scalar_t* dy, scalar_t* dx, int64_t d, const T* a,
                                const T* b, T (*acc)[kLanes]) {
  T top = 0;
  if constexpr (std::is_same_v<scalar_t, T>) {
    if constexpr (kRedo) {
      backward_redo<scalar_t, T>(x, dy, dx, d, a, b, acc);
    } else {
      top = backward_math<T>(x, dy, dx, d, a, b, acc);
    }
  } else {
    T xb[kTile], gb[kTile];
    for (int64_t t0 = 0; t0 < d; t0 += kTile) {
      const int64_t n = std::min(kTile, d - t0);
      for (int64_t i = 0; i < n; ++i) {
        xb[i] = static_cast<T>(x[t0 + i]);
        gb[i] = static_cast<T>(dy[t0 + i]);
      }
      if constexpr (kRedo) {
        backward_redo<scalar_t, T>(xb, gb, dx + t0, n, a, b, acc);
      } else {
        top = std::max(top, backward_math<T>(xb, gb, xb, n, a, b, acc));  // dx overwrites x in the buffer
        for (int64_t i = 0; i < n; ++i) dx[t0 + i] = static_cast<scalar_t>(xb[i]);
      }
    }
  }
  return top;
}

struct Problem {
  int64_t rows, channels, groups, d, chunk;
};

template <typename scalar_t>
MMKAT_INLINE void forward_chunk(const scalar_t* x, scalar_t* y, const Problem& P,
                                const Coefficients<at::opmath_type<scalar_t>>& coeffs, int64_t c) {
  using T = at::opmath_type<scalar_t>;
  const T* a = coeffs.a;
  const int64_t r_end = std::min(P.rows, (c + 1) * P.chunk);
  for (int64_t r = c * P.chunk; r < r_end; ++r) {
    for (int64_t g = 0; g < P.groups; ++g) {
      const int64_t off = r * P.channels + g * P.d;
      forward_segment<scalar_t, T>(x + off, y + off, P.d, a, coeffs.babs.data() + g * kDenominator);
    }
  }
}

template <typename scalar_t>
MMKAT_INLINE void backward_chunk(const scalar_t* dy, const scalar_t* x, scalar_t* dx,
                                 at::opmath_type<scalar_t>* out,  // [groups][kCoeffGrads] of this chunk
                                 const Problem& P, const Coefficients<at::opmath_type<scalar_t>>& coeffs, int64_t c) {
  using T = at::opmath_type<scalar_t>;
  const int64_t r_end = std::min(P.rows, (c + 1) * P.chunk);
  for (int64_t g = 0; g < P.groups; ++g) {
    const T* b = coeffs.babs.data() + g * kDenominator;
    T acc[kCoeffGrads][kLanes] = {};
    const T bound = static_cast<T>(kFarThreshold);
    T top = 0;
    for (int64_t r = c * P.chunk; r < r_end; ++r) {
      const int64_t off = r * P.channels + g * P.d;
      top = std::max(top, backward_segment<false, scalar_t, T>(x + off, dy + off, dx + off, P.d, coeffs.a, b, acc));
    }
    if (!(top <= bound)) {  // rare: this (chunk, group)'s sums again, with the divided-through form where needed
      std::fill(&acc[0][0], &acc[0][0] + kCoeffGrads * kLanes, T(0));
      for (int64_t r = c * P.chunk; r < r_end; ++r) {
        const int64_t off = r * P.channels + g * P.d;
        backward_segment<true, scalar_t, T>(x + off, dy + off, dx + off, P.d, coeffs.a, b, acc);
      }
    }
    for (int i = 0; i < kCoeffGrads; ++i) {
      T sum = 0;
      for (int l = 0; l < kLanes; ++l) sum += acc[i][l];
      out[g * kCoeffGrads + i] = sum;
    }
  }
}

// The same chunk code compiled twice: for the baseline ISA and, on x86-64, for AVX2 + FMA, picked at run
// time by what the CPU supports (as ATen does for its own kernels). The choice is fixed per machine, so
// results stay bitwise reproducible there.
template <typename scalar_t>
void forward_chunk_base(const scalar_t* x, scalar_t* y, const Problem& P,
                        const Coefficients<at::opmath_type<scalar_t>>& coeffs, int64_t c) {
  forward_chunk<scalar_t>(x, y, P, coeffs, c);
}
template <typename scalar_t>
void backward_chunk_base(const scalar_t* dy, const scalar_t* x, scalar_t* dx, at::opmath_type<scalar_t>* out,
                         const Problem& P, const Coefficients<at::opmath_type<scalar_t>>& coeffs, int64_t c) {
  backward_chunk<scalar_t>(dy, x, dx, out, P, coeffs, c);
}
#if MMKAT_X86_DISPATCH
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void forward_chunk_avx2(const scalar_t* x, scalar_t* y, const Problem& P,
                                                            const Coefficients<at::opmath_type<scalar_t>>& coeffs,
                                                            int64_t c) {
  forward_chunk<scalar_t>(x, y, P, coeffs, c);
}
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void backward_chunk_avx2(const scalar_t* dy, const scalar_t* x, scalar_t* dx,
                                                             at::opmath_type<scalar_t>* out, const Problem& P,
                                                             const Coefficients<at::opmath_type<scalar_t>>& coeffs,
                                                             int64_t c) {
  backward_chunk<scalar_t>(dy, x, dx, out, P, coeffs, c);
}
#endif

bool use_avx2() {
#if MMKAT_X86_DISPATCH
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                std::getenv("MMKAT_CPU_BASELINE") == nullptr;
  return supported;
#else
  return false;
#endif
}

Problem make_problem(int64_t rows, int64_t channels, int64_t groups) {
  return Problem{rows, channels, groups, channels / groups, rows_per_chunk(channels)};
}

int64_t num_chunks(const Problem& P) { return (P.rows + P.chunk - 1) / P.chunk; }

template <typename scalar_t>
void forward_kernel(const scalar_t* x, scalar_t* y, const Problem& P,
                    const Coefficients<at::opmath_type<scalar_t>>& coeffs) {
  const bool avx2 = use_avx2();
  at::parallel_for(0, num_chunks(P), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
#if MMKAT_X86_DISPATCH
      if (avx2) {
        forward_chunk_avx2<scalar_t>(x, y, P, coeffs, c);
        continue;
      }
#endif
      forward_chunk_base<scalar_t>(x, y, P, coeffs, c);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* dy, const scalar_t* x, scalar_t* dx,
                     at::opmath_type<scalar_t>* partials,  // [chunks][groups][kCoeffGrads]
                     const Problem& P, const Coefficients<at::opmath_type<scalar_t>>& coeffs) {
  const bool avx2 = use_avx2();
  at::parallel_for(0, num_chunks(P), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      auto* out = partials + c * P.groups * kCoeffGrads;
#if MMKAT_X86_DISPATCH
      if (avx2) {
        backward_chunk_avx2<scalar_t>(dy, x, dx, out, P, coeffs, c);
        continue;
      }
#endif
      backward_chunk_base<scalar_t>(dy, x, dx, out, P, coeffs, c);
    }
  });
}

// Adds the per-chunk partial sums in chunk order, then forms d(numerator) [1, 6] (summed over groups)
// and d(denominator) [groups, 4] (times sign(b), sign(0) = +1).
template <typename T>
void reduce_partials(const T* partials, int64_t chunks, int64_t groups, const T* sign, T* d_num, T* d_den) {
  c10::SmallVector<T, 16 * kCoeffGrads> per_group(groups * kCoeffGrads, T(0));
  for (int64_t c = 0; c < chunks; ++c) {
    const T* p = partials + c * groups * kCoeffGrads;
    for (int64_t i = 0; i < groups * kCoeffGrads; ++i) per_group[i] += p[i];
  }
  for (int i = 0; i < kNumerator; ++i) {
    d_num[i] = T(0);
    for (int64_t g = 0; g < groups; ++g) d_num[i] += per_group[g * kCoeffGrads + i];
  }
  for (int64_t g = 0; g < groups; ++g) {
    for (int j = 0; j < kDenominator; ++j) {
      d_den[g * kDenominator + j] = sign[g * kDenominator + j] * per_group[g * kCoeffGrads + kNumerator + j];
    }
  }
}

}  // namespace

at::Tensor group_rational_forward_cpu(const at::Tensor& x, const at::Tensor& weight_numerator,
                                      const at::Tensor& weight_denominator, int64_t groups) {
  check_group_rational_inputs(x, weight_numerator, weight_denominator, groups, "mmkat::group_rational_forward");
  auto xc = x.contiguous();
  auto y = at::empty_like(xc);
  const int64_t channels = x.size(-1);
  const int64_t rows = channels == 0 ? 0 : xc.numel() / channels;
  if (rows == 0 || channels == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_rational_forward_cpu", [&] {
    Coefficients<at::opmath_type<scalar_t>> coeffs(weight_numerator, weight_denominator, groups);
    forward_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                             make_problem(rows, channels, groups), coeffs);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_rational_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight_numerator,
    const at::Tensor& weight_denominator, int64_t groups) {
  check_group_rational_inputs(x, weight_numerator, weight_denominator, groups, "mmkat::group_rational_backward");
  check_grad_output(grad_output, x, "mmkat::group_rational_backward");
  auto xc = x.contiguous();
  auto dyc = grad_output.to(x.scalar_type()).contiguous();
  auto dx = at::empty_like(xc);
  const at::ScalarType math = math_type(x);
  const int64_t channels = x.size(-1);
  const int64_t rows = channels == 0 ? 0 : xc.numel() / channels;
  const Problem problem = make_problem(rows, channels, groups);
  const int64_t chunks = num_chunks(problem);
  auto d_num = at::empty({1, kNumerator}, x.options().dtype(math));
  auto d_den = at::empty({groups, kDenominator}, x.options().dtype(math));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_rational_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    Coefficients<T> coeffs(weight_numerator, weight_denominator, groups);
    c10::SmallVector<T, 16 * kCoeffGrads> partials(chunks * groups * kCoeffGrads);
    if (chunks > 0) {
      backward_kernel<scalar_t>(dyc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                dx.mutable_data_ptr<scalar_t>(), partials.data(), problem, coeffs);
    }
    reduce_partials<T>(partials.data(), chunks, groups, coeffs.sign.data(), d_num.mutable_data_ptr<T>(),
                       d_den.mutable_data_ptr<T>());
  });
  return {dx, d_num.to(weight_numerator.scalar_type()), d_den.to(weight_denominator.scalar_type())};
}

}  // namespace mmkat
