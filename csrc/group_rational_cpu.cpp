// mmkat: CPU kernels of the group-rational op.
//
// x is viewed as [rows, C] with C = groups * D. Work is cut into chunks of whole rows whose size depends
// only on C (never on the thread count), threads take chunks, and each chunk reduces its own coefficient
// gradients; the per-chunk partial sums are then added in chunk order. The result is therefore bitwise
// the same for any number of threads. Math runs in float (double for float64 inputs).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>

#include <algorithm>
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

// Per-group coefficients in the math type: a[6] shared, |b|[groups][4].
template <typename T>
struct Coefficients {
  T a[kNumerator];
  std::vector<T> babs;
  Coefficients(const at::Tensor& weight_numerator, const at::Tensor& weight_denominator, int64_t groups)
      : babs(groups * kDenominator) {
    const at::ScalarType math = c10::CppTypeToScalarType<T>::value;
    const at::Tensor wn = weight_numerator.to(math).contiguous();
    const at::Tensor wd = weight_denominator.to(math).abs().contiguous();
    std::copy(wn.data_ptr<T>(), wn.data_ptr<T>() + kNumerator, a);
    std::copy(wd.data_ptr<T>(), wd.data_ptr<T>() + groups * kDenominator, babs.begin());
  }
};

template <typename scalar_t>
void forward_kernel(const scalar_t* x, scalar_t* y, int64_t rows, int64_t channels, int64_t groups,
                    const Coefficients<at::opmath_type<scalar_t>>& coeffs) {
  using T = at::opmath_type<scalar_t>;
  const int64_t d = channels / groups;
  const int64_t chunk = rows_per_chunk(channels);
  const int64_t chunks = (rows + chunk - 1) / chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t r_end = std::min(rows, (c + 1) * chunk);
      for (int64_t r = c * chunk; r < r_end; ++r) {
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t off = r * channels + g * d;
          const T* babs = coeffs.babs.data() + g * kDenominator;
          // Local copies keep the coefficients in registers inside the vectorised loop.
          const T a[kNumerator] = {coeffs.a[0], coeffs.a[1], coeffs.a[2], coeffs.a[3], coeffs.a[4], coeffs.a[5]};
          const T b[kDenominator] = {babs[0], babs[1], babs[2], babs[3]};
#pragma omp simd
          for (int64_t k = 0; k < d; ++k) {
            y[off + k] = static_cast<scalar_t>(rational_forward<T>(static_cast<T>(x[off + k]), a, b));
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* dy, const scalar_t* x, scalar_t* dx,
                     at::opmath_type<scalar_t>* partials,  // [chunks][groups][kCoeffGrads]
                     int64_t rows, int64_t channels, int64_t groups,
                     const Coefficients<at::opmath_type<scalar_t>>& coeffs) {
  using T = at::opmath_type<scalar_t>;
  const int64_t d = channels / groups;
  const int64_t chunk = rows_per_chunk(channels);
  const int64_t chunks = (rows + chunk - 1) / chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      T* out = partials + c * groups * kCoeffGrads;
      std::fill(out, out + groups * kCoeffGrads, T(0));
      const int64_t r_end = std::min(rows, (c + 1) * chunk);
      for (int64_t g = 0; g < groups; ++g) {
        const T* babs = coeffs.babs.data() + g * kDenominator;
        const T a[kNumerator] = {coeffs.a[0], coeffs.a[1], coeffs.a[2], coeffs.a[3], coeffs.a[4], coeffs.a[5]};
        const T b[kDenominator] = {babs[0], babs[1], babs[2], babs[3]};
        // One accumulator row per vector lane: the lane loop vectorises without a reduction clause.
        T acc[kCoeffGrads][kLanes] = {};
        for (int64_t r = c * chunk; r < r_end; ++r) {
          const int64_t off = r * channels + g * d;
          int64_t k = 0;
          for (; k + kLanes <= d; k += kLanes) {
#pragma omp simd
            for (int l = 0; l < kLanes; ++l) {
              dx[off + k + l] = static_cast<scalar_t>(rational_backward<T, kLanes>(
                  static_cast<T>(x[off + k + l]), static_cast<T>(dy[off + k + l]), a, b, &acc[0][l]));
            }
          }
          for (; k < d; ++k) {
            dx[off + k] = static_cast<scalar_t>(rational_backward<T, kLanes>(
                static_cast<T>(x[off + k]), static_cast<T>(dy[off + k]), a, b, &acc[0][0]));
          }
        }
        T* o = out + g * kCoeffGrads;
        for (int i = 0; i < kCoeffGrads; ++i) {
          T sum = 0;
          for (int l = 0; l < kLanes; ++l) sum += acc[i][l];
          o[i] = sum;
        }
      }
    }
  });
}

// Adds the per-chunk partial sums in chunk order, then forms d(numerator) [1, 6] (summed over groups)
// and d(denominator) [groups, 4] (times sign(b), sign(0) = +1).
template <typename T>
void reduce_partials(const T* partials, int64_t chunks, int64_t groups, const at::Tensor& weight_denominator,
                     T* d_num, T* d_den) {
  std::vector<T> per_group(groups * kCoeffGrads, T(0));
  for (int64_t c = 0; c < chunks; ++c) {
    const T* p = partials + c * groups * kCoeffGrads;
    for (int64_t i = 0; i < groups * kCoeffGrads; ++i) per_group[i] += p[i];
  }
  const at::Tensor wd = weight_denominator.to(c10::CppTypeToScalarType<T>::value).contiguous();
  const T* b = wd.const_data_ptr<T>();
  for (int i = 0; i < kNumerator; ++i) {
    d_num[i] = T(0);
    for (int64_t g = 0; g < groups; ++g) d_num[i] += per_group[g * kCoeffGrads + i];
  }
  for (int64_t g = 0; g < groups; ++g) {
    for (int j = 0; j < kDenominator; ++j) {
      const T sign = b[g * kDenominator + j] < T(0) ? T(-1) : T(1);
      d_den[g * kDenominator + j] = sign * per_group[g * kCoeffGrads + kNumerator + j];
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
    forward_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), rows, channels, groups,
                             coeffs);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_rational_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight_numerator,
    const at::Tensor& weight_denominator, int64_t groups) {
  check_group_rational_inputs(x, weight_numerator, weight_denominator, groups, "mmkat::group_rational_backward");
  TORCH_CHECK(grad_output.sizes() == x.sizes(), "mmkat::group_rational_backward: grad_output must have the shape of x ",
              x.sizes(), ", got ", grad_output.sizes());
  TORCH_CHECK(grad_output.device() == x.device(), "mmkat::group_rational_backward: grad_output must be on ",
              x.device(), ", got ", grad_output.device());
  auto xc = x.contiguous();
  auto dyc = grad_output.to(x.scalar_type()).contiguous();
  auto dx = at::empty_like(xc);
  const at::ScalarType math = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t channels = x.size(-1);
  const int64_t rows = channels == 0 ? 0 : xc.numel() / channels;
  const int64_t chunks = rows == 0 ? 0 : (rows + rows_per_chunk(channels) - 1) / rows_per_chunk(channels);
  auto partials = at::empty({chunks, groups, kCoeffGrads}, x.options().dtype(math));
  if (chunks > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_rational_backward_cpu", [&] {
      Coefficients<at::opmath_type<scalar_t>> coeffs(weight_numerator, weight_denominator, groups);
      backward_kernel<scalar_t>(dyc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                dx.mutable_data_ptr<scalar_t>(), partials.mutable_data_ptr<at::opmath_type<scalar_t>>(),
                                rows, channels, groups, coeffs);
    });
  }
  auto d_num = at::empty({1, kNumerator}, partials.options());
  auto d_den = at::empty({groups, kDenominator}, partials.options());
  AT_DISPATCH_FLOATING_TYPES(math, "group_rational_reduce_cpu", [&] {
    reduce_partials<scalar_t>(partials.const_data_ptr<scalar_t>(), chunks, groups, weight_denominator,
                              d_num.mutable_data_ptr<scalar_t>(), d_den.mutable_data_ptr<scalar_t>());
  });
  return {dx, d_num.to(weight_numerator.scalar_type()), d_den.to(weight_denominator.scalar_type())};
}

}  // namespace mmkat
