// mmkat: CUDA kernels of the group-rational op.
//
// Layout: x is viewed as [rows, C], C = groups * D. A block works on ONE group (blockIdx.x) and a strided
// set of rows (blockIdx.y); inside it, TPR threads cover one row segment of the group with 16-byte vectors
// and the other threads take the next rows. Every thread therefore sees a single group, keeps that group's
// coefficients in registers and accumulates the 10 coefficient gradients in fp32 registers.
// Backward reduces them warp -> block in a fixed tree, writes one partial per block, and a second tiny
// kernel adds the partials in a fixed order: no atomics, bitwise-reproducible gradients for a given shape
// and GPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_pipeline_primitives.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "group_rational.h"
#include "rational_math.h"

namespace mmkat {
namespace {

// Tuning knobs, set by setup.py from MMKAT_* environment variables for kernel experiments; the defaults are
// the fastest measured on an H200 (see benchmarks/).
#ifndef MMKAT_CUDA_UNROLL
#define MMKAT_CUDA_UNROLL 1
#endif
#ifndef MMKAT_VEC_BYTES
#define MMKAT_VEC_BYTES 16
#endif
#ifndef MMKAT_MIN_BLOCKS
#define MMKAT_MIN_BLOCKS 4  // caps the kernels at 64 registers: the bf16 backward runs ~5% faster
#endif
#ifndef MMKAT_THREADS
#define MMKAT_THREADS 256
#endif
#ifndef MMKAT_LOAD_STAGES
#define MMKAT_LOAD_STAGES 3  // 2 to 4: the "ahead" kernels below (the vectorized paths); 0: the plain kernels
#endif
#ifndef MMKAT_FUSED_REDUCE
#define MMKAT_FUSED_REDUCE 0  // 0: a separate kernel adds the backward's coefficient partials; 1: its last blocks do
#endif
#ifndef MMKAT_BLOCKS_PER_SM
#define MMKAT_BLOCKS_PER_SM (2 * 2048 / MMKAT_THREADS)  // ~2 waves at full occupancy
#endif

constexpr int kThreads = MMKAT_THREADS;
constexpr int kUnroll = MMKAT_CUDA_UNROLL;     // row segments in flight per thread and iteration
constexpr int kVecBytes = MMKAT_VEC_BYTES;     // bytes per vector access (16 or 8)
constexpr int kMinBlocks = MMKAT_MIN_BLOCKS;   // __launch_bounds__ minimum resident blocks per SM
constexpr int kMinBlocksBias = 3;  // the bias backward: its per-channel sums need more registers (<= 80)
constexpr int kStages = MMKAT_LOAD_STAGES;     // vectorized kernels: 0 plain, else loads in flight per thread
constexpr bool kFusedReduce = MMKAT_FUSED_REDUCE != 0;
static_assert(kStages == 0 || (kStages >= 2 && kStages <= 8), "MMKAT_LOAD_STAGES must be 0 or 2..8");

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Vec {
  scalar_t v[VEC];
};

// One 16-byte (or scalar) memory transaction per vector. c10::Half / c10::BFloat16 are classes, and a
// plain struct copy of 8 of them may be split into 8 two-byte accesses: go through uint4 instead.
template <typename V>
__device__ __forceinline__ V load_vec(const void* p) {
  if constexpr (sizeof(V) == 16) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    V v;
    memcpy(&v, &raw, 16);
    return v;
  } else if constexpr (sizeof(V) == 8) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
    V v;
    memcpy(&v, &raw, 8);
    return v;
  } else {
    return *reinterpret_cast<const V*>(p);
  }
}

template <typename V>
__device__ __forceinline__ void store_vec(void* p, const V& v) {
  if constexpr (sizeof(V) == 16) {
    uint4 raw;
    memcpy(&raw, &v, 16);
    *reinterpret_cast<uint4*>(p) = raw;
  } else if constexpr (sizeof(V) == 8) {
    uint2 raw;
    memcpy(&raw, &v, 8);
    *reinterpret_cast<uint2*>(p) = raw;
  } else {
    *reinterpret_cast<V*>(p) = v;
  }
}

// Whether an element of a vector has |x| > kFarThreshold and needs the per-element path. For 16-bit types
// the test reads the bits, a few integer operations per pair of elements instead of a compare and select per
// element: adding (0x8000 - the first far magnitude pattern) to a 16-bit magnitude sets its top bit exactly
// when the element is far (bfloat16: beyond 0x4780 = 65536; float16 has no finite value beyond 65536, so
// inf 0x7c00 and above), and the halves of a word cannot carry into each other (0x7fff + 0x387f < 0x10000).
// NaN counts as far there; the per-element path then gives it the direct form, as the float test does.
template <typename scalar_t, int VEC>
__device__ __forceinline__ bool any_far(const Vec<scalar_t, VEC>& v) {
  constexpr bool kBF16 = std::is_same_v<scalar_t, c10::BFloat16>;
  if constexpr ((kBF16 || std::is_same_v<scalar_t, c10::Half>) && VEC % 2 == 0) {
    static_assert(kFarThreshold == 65536.0, "the bit patterns below are those of 65536");
    constexpr uint32_t kAdd = (kBF16 ? 0x387fu : 0x0400u) * 0x10001u;
    uint32_t w[VEC / 2];
    memcpy(w, &v, sizeof(w));
    uint32_t hit = 0;
#pragma unroll
    for (int i = 0; i < VEC / 2; ++i) hit |= (w[i] & 0x7fff7fffu) + kAdd;
    return (hit & 0x80008000u) != 0;
  } else {
    using T = at::opmath_type<scalar_t>;
    T amax = T(0);
#pragma unroll
    for (int k = 0; k < VEC; ++k) amax = fmax(amax, magnitude(static_cast<T>(v.v[k])));  // NaN is passed over
    return amax > T(kFarThreshold);
  }
}

struct Layout {
  int64_t rows, channels, groups, d;
  int vec;        // elements per vector load
  int per_row;    // vectors per row segment of a group (d / vec)
  int tpr;        // threads per row segment
  int rpi;        // row segments per block iteration (kThreads / tpr)
};

// Loads a group's coefficients into registers (a shared, |b| for the group) in the math type T.
template <typename T>
__device__ __forceinline__ void load_coefficients(const T* __restrict__ wn, const T* __restrict__ wd, int64_t g,
                                                  T* a, T* babs) {
#pragma unroll
  for (int i = 0; i < kNumerator; ++i) a[i] = wn[i];
#pragma unroll
  for (int j = 0; j < kDenominator; ++j) babs[j] = fabs(wd[g * kDenominator + j]);
}

// VEC consecutive values of a math-type array (the bias), in 16-byte loads where VEC fills them.
template <typename T, int VEC>
__device__ __forceinline__ void load_math_vec(const T* __restrict__ p, T* out) {
  constexpr int kPer = 16 / sizeof(T);
  if constexpr (VEC % kPer == 0) {
#pragma unroll
    for (int i = 0; i < VEC / kPer; ++i) {
      const Vec<T, kPer> v = load_vec<Vec<T, kPer>>(p + i * kPer);
#pragma unroll
      for (int k = 0; k < kPer; ++k) out[i * kPer + k] = v.v[k];
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = __ldg(p + k);
  }
}

// out_t: the result's type (scalar_t, or a narrower type for group_rational_forward_to: one rounding).
// kBias: F(x + bias) with bias [C] in the math type (group_rational_bias_forward), the sum taken in the math type.
template <typename scalar_t, typename out_t, int VEC, bool kBias = false>
__global__ void __launch_bounds__(kThreads, kMinBlocks) forward_kernel(const scalar_t* __restrict__ x, out_t* __restrict__ y,
                                                           const at::opmath_type<scalar_t>* __restrict__ wn,
                                                           const at::opmath_type<scalar_t>* __restrict__ wd,
                                                           const at::opmath_type<scalar_t>* __restrict__ bias,
                                                           Layout L) {
  using T = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  using VO = Vec<out_t, VEC>;
  const int64_t g = blockIdx.x;
  T a[kNumerator], babs[kDenominator];
  load_coefficients(wn, wd, g, a, babs);
  const int lane = threadIdx.x % L.tpr;
  const int64_t r0 = threadIdx.x / L.tpr;
  if (r0 >= L.rpi) return;
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * L.rpi;
  for (int64_t r = blockIdx.y * L.rpi + r0; r < L.rows; r += row_step * kUnroll) {
    for (int cv = lane; cv < L.per_row; cv += L.tpr) {
      V in[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t ru = r + u * row_step;
        if (ru < L.rows) in[u] = load_vec<V>(x + ru * L.channels + g * L.d + cv * VEC);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t ru = r + u * row_step;
        if (ru < L.rows) {
          VO out;
          T xv[VEC];
          if constexpr (kBias) load_math_vec<T, VEC>(bias + g * L.d + cv * VEC, xv);
          T amax = T(0);
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            if constexpr (kBias) {
              xv[k] += static_cast<T>(in[u].v[k]);
            } else {
              xv[k] = static_cast<T>(in[u].v[k]);
            }
            amax = fmax(amax, magnitude(xv[k]));  // NaN is passed over: it takes the direct form anyway
          }
          if (amax > T(kFarThreshold)) {  // rare: a huge or infinite element; each element picks its form
#pragma unroll
            for (int k = 0; k < VEC; ++k) out.v[k] = static_cast<out_t>(rational_forward<T>(xv[k], a, babs));
          } else {
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
              out.v[k] = static_cast<out_t>(rational_forward_direct<T>(xv[k], fabs(xv[k]), a, babs));
            }
          }
          store_vec(y + ru * L.channels + g * L.d + cv * VEC, out);
        }
      }
    }
  }
}

// Fixed-order tree reduction of kCoeffGrads values over a block; the result lands in thread 0.
template <typename T>
__device__ __forceinline__ void block_reduce(T* vals) {
  __shared__ T smem[kThreads / 32][kCoeffGrads];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < kCoeffGrads; ++k) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) vals[k] += __shfl_down_sync(0xffffffffu, vals[k], off);
  }
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < kCoeffGrads; ++k) smem[warp][k] = vals[k];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < kCoeffGrads; ++k) {
      T s = smem[0][k];
      for (int w = 1; w < kThreads / 32; ++w) s += smem[w][k];
      vals[k] = s;
    }
  }
}

// The sum of load(i) over i = first, first + step, ... < end in a fixed order: kChains running sums, each over
// every kChains-th term (their loads are in flight together), then added in order.
template <int kChains, typename T, typename Load>
__device__ __forceinline__ T chained_sum(int64_t first, int64_t step, int64_t end, Load&& load) {
  T chain[kChains];
#pragma unroll
  for (int c = 0; c < kChains; ++c) chain[c] = T(0);
  int64_t i = first;
  for (; i + (kChains - 1) * step < end; i += kChains * step) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) chain[c] += load(i + c * step);
  }
  for (; i < end; i += step) chain[0] += load(i);
#pragma unroll
  for (int c = 1; c < kChains; ++c) chain[0] += chain[c];
  return chain[0];
}

// Where a backward kernel's blocks leave their coefficient gradients. Each block adds its 10 sums (block_reduce)
// and writes them as its partial [blockIdx.y, blockIdx.x (the group), 10]. By default reduce_kernel, launched
// after, adds the partials. With MMKAT_FUSED_REDUCE=1 (an option, not yet run on a GPU) the blocks instead count
// themselves done per group (counters, zeroed before the launch): the last block of a group adds that group's
// partials, writes its d_den row and its numerator sums, and the last group to finish adds those over the groups
// into d_num. Every sum runs in an order fixed by the shape and grid (never by which block finishes last), so the
// gradients are bitwise reproducible.
template <typename T>
struct CoeffSink {
  T* partials;             // [gridDim.y, groups, 10]
  unsigned int* counters;  // [groups + 1], zero at launch (fused only)
  T* per_group;            // [groups, kNumerator] numerator sums per group (fused only)
  const T* wd;             // the denominator weights [groups, kDenominator] (their signs)
  T* d_num;                // [kNumerator]
  T* d_den;                // [groups, kDenominator]
};

#if MMKAT_FUSED_REDUCE
// Whether this block is the last of `count` to arrive at *counter. Every thread's earlier global writes are made
// visible first (each fences, then the barrier), and the last block fences again before it reads the others'.
__device__ __forceinline__ bool arrive_last(unsigned int* counter, unsigned int count) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == count - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// The last block of group g: the group's 10 sums over the gridDim.y partials, the threads split into kSlices
// interleaved sets of partial rows per coefficient (chained_sum, 4 running sums), then the sets added in order.
template <typename T>
__device__ void finish_group(const CoeffSink<T>& sink, int64_t groups) {
  constexpr int kSlices = kThreads / kCoeffGrads;
  __shared__ T slice_sums[kSlices][kCoeffGrads];
  const int64_t g = blockIdx.x, blocks_y = gridDim.y, stride = groups * kCoeffGrads;
  const int k = threadIdx.x % kCoeffGrads, slice = threadIdx.x / kCoeffGrads;
  if (slice < kSlices) {
    const T* p = sink.partials + g * kCoeffGrads + k;
    slice_sums[slice][k] =
        chained_sum<4, T>(slice, kSlices, blocks_y, [&](int64_t b) { return __ldcg(p + b * stride); });
  }
  __syncthreads();
  if (threadIdx.x < kCoeffGrads) {
    T total = slice_sums[0][k];
    for (int s = 1; s < kSlices; ++s) total += slice_sums[s][k];
    if (k < kNumerator) {
      sink.per_group[g * kNumerator + k] = total;
    } else {
      const int64_t i = g * kDenominator + (k - kNumerator);
      sink.d_den[i] = (sink.wd[i] < T(0) ? T(-1) : T(1)) * total;  // d|b|/db = sign(b), sign(0) = +1
    }
  }
  if (arrive_last(sink.counters + groups, static_cast<unsigned int>(groups)) && threadIdx.x < kNumerator) {
    T s = T(0);
    for (int64_t gi = 0; gi < groups; ++gi) s += __ldcg(sink.per_group + gi * kNumerator + threadIdx.x);
    sink.d_num[threadIdx.x] = s;
  }
}
#endif

template <typename T>
__device__ __forceinline__ void store_block_partials(T* acc, const CoeffSink<T>& sink, int64_t groups) {
  block_reduce(acc);
  if (threadIdx.x == 0) {
    T* out = sink.partials + (static_cast<int64_t>(blockIdx.y) * groups + blockIdx.x) * kCoeffGrads;
#pragma unroll
    for (int k = 0; k < kCoeffGrads; ++k) out[k] = acc[k];
  }
#if MMKAT_FUSED_REDUCE
  if (arrive_last(sink.counters + blockIdx.x, gridDim.y)) finish_group(sink, groups);
#endif
}

// grad_t: dy's type (scalar_t, or bfloat16 / float16 for a float32 x: the gradient of a half-precision matmul
// read as it is, without a converted copy).
// kBias: the backward of F(x + bias) (group_rational_bias_backward). Each thread also sums its dx values per
// channel (in the math type, before rounding), which needs one row segment per thread (per_row <= kThreads: the
// caller checks); the block adds its rows' sums in a fixed order and writes them to bias_partials
// [blocks_y, C], which bias_reduce_kernel sums.
template <typename scalar_t, typename grad_t, int VEC, bool kBias = false>
__global__ void __launch_bounds__(kThreads, kBias ? kMinBlocksBias : kMinBlocks) backward_kernel(const grad_t* __restrict__ dy,
                                                            const scalar_t* __restrict__ x,
                                                            scalar_t* __restrict__ dx,
                                                            const at::opmath_type<scalar_t>* __restrict__ wn,
                                                            const at::opmath_type<scalar_t>* __restrict__ wd,
                                                            CoeffSink<at::opmath_type<scalar_t>> sink,
                                                            const at::opmath_type<scalar_t>* __restrict__ bias,
                                                            at::opmath_type<scalar_t>* __restrict__ bias_partials,
                                                            Layout L) {
  using T = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  const int64_t g = blockIdx.x;
  T a[kNumerator], babs[kDenominator];
  load_coefficients(wn, wd, g, a, babs);
  T acc[kCoeffGrads];
#pragma unroll
  for (int k = 0; k < kCoeffGrads; ++k) acc[k] = T(0);
  // kBias: each thread's per-channel sums of dx live in its own shared-memory slot (registers would spill), laid
  // out [rpi][d] over the block since thread = r0 * tpr + lane and d = tpr * VEC.
  __shared__ Vec<T, kBias ? VEC : 1> colsum[kBias ? kThreads : 1];
  if constexpr (kBias) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) colsum[threadIdx.x].v[k] = T(0);
  }
  const int lane = threadIdx.x % L.tpr;
  const int64_t r0 = threadIdx.x / L.tpr;
  if (r0 < L.rpi) {
    const int64_t row_step = static_cast<int64_t>(gridDim.y) * L.rpi;
    for (int64_t r = blockIdx.y * L.rpi + r0; r < L.rows; r += row_step * kUnroll) {
      for (int cv = lane; cv < L.per_row; cv += L.tpr) {
        V xin[kUnroll];
        Vec<grad_t, VEC> gin[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t ru = r + u * row_step;
          if (ru < L.rows) {
            const int64_t off = ru * L.channels + g * L.d + cv * VEC;
            xin[u] = load_vec<V>(x + off);
            gin[u] = load_vec<Vec<grad_t, VEC>>(dy + off);
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t ru = r + u * row_step;
          if (ru < L.rows) {
            V out;
            T xv[VEC], gv[VEC], dv[VEC], bv[kBias ? VEC : 1];
            if constexpr (kBias) load_math_vec<T, VEC>(bias + g * L.d + cv * VEC, bv);  // (L1-cached)
            T amax = T(0);
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
              xv[k] = static_cast<T>(xin[u].v[k]);
              if constexpr (kBias) xv[k] += bv[k];
              gv[k] = static_cast<T>(gin[u].v[k]);
              amax = fmax(amax, magnitude(xv[k]));  // NaN is passed over: it takes the direct form anyway
            }
            if (amax > T(kFarThreshold)) {  // rare: a huge or infinite element; each element picks its form
#pragma unroll
              for (int k = 0; k < VEC; ++k) {
                dv[k] = rational_backward<T>(xv[k], gv[k], a, babs, acc);
              }
            } else {  // the hot path: the direct form, no per-element test
#pragma unroll
              for (int k = 0; k < VEC; ++k) dv[k] = rational_backward_direct<T>(xv[k], gv[k], a, babs, acc);
            }
            if constexpr (kBias) {
              Vec<T, VEC> sums = colsum[threadIdx.x];
#pragma unroll
              for (int k = 0; k < VEC; ++k) sums.v[k] += dv[k];
              colsum[threadIdx.x] = sums;
            }
#pragma unroll
            for (int k = 0; k < VEC; ++k) out.v[k] = static_cast<scalar_t>(dv[k]);
            store_vec(dx + ru * L.channels + g * L.d + cv * VEC, out);
          }
        }
      }
    }
  }
  if constexpr (kBias) {
    // The block's per-channel sums, added over its rpi rows in a fixed order.
    __syncthreads();
    const T* rows_sums = reinterpret_cast<const T*>(colsum);
    for (int64_t c = threadIdx.x; c < L.d; c += kThreads) {
      T s = rows_sums[c];
      for (int i = 1; i < L.rpi; ++i) s += rows_sums[i * L.d + c];
      bias_partials[static_cast<int64_t>(blockIdx.y) * L.channels + g * L.d + c] = s;
    }
  }
  store_block_partials(acc, sink, L.groups);
}

// The vectorized kernels with their loads issued ahead ("ahead" kernels). A block's threads walk the group's
// [rows, D] segment as one flat sequence of vectors (no idle lanes when a block's threads are not a multiple of
// the vectors per row), and each thread copies the x (and dy) vectors of its next kStages - 1 steps into its
// own shared-memory slots (cp.async: no registers held) while it computes the current one. A thread reads only
// the slots it filled itself, so it waits on its own copies and no barrier is needed. Offsets count vectors in
// 32 bits: the callers take the plain kernels where vector_offsets_fit says no.
struct Cursor {
  int32_t off;  // offset of the vector in x, in vectors
  int32_t col;  // its index inside the group's row segment
};

// body(off, xin, gin) for each of this thread's vectors, in order; gin is x's vector again when kGrad is false.
template <bool kGrad, typename V, typename G, typename Body>
__device__ __forceinline__ void walk_ahead(const Layout& L, const V* __restrict__ x, const G* __restrict__ dy,
                                           Body&& body) {
  constexpr int S = kStages >= 2 ? kStages : 2;  // (never instantiated with kStages 0)
  __shared__ V xs[S][kThreads];
  __shared__ G gs[kGrad ? S : 1][kGrad ? kThreads : 1];
  const int32_t per_row = L.per_row;
  const int32_t row_vectors = static_cast<int32_t>(L.channels / L.vec);
  const int32_t end = static_cast<int32_t>(L.rows) * row_vectors;  // the first offset past the last row
  // One step moves a thread over gridDim.y * kThreads vectors of the group: whole rows, then columns (and one
  // more row where the columns wrap past the segment's end).
  const int32_t step = static_cast<int32_t>(gridDim.y) * kThreads;
  const int32_t step_cols = step % per_row;
  const int32_t step_off = (step / per_row) * row_vectors + step_cols;
  const int32_t wrap = row_vectors - per_row;
  const int32_t first = static_cast<int32_t>(blockIdx.y) * kThreads + threadIdx.x;
  Cursor cur{(first / per_row) * row_vectors + static_cast<int32_t>(blockIdx.x) * per_row + first % per_row,
             first % per_row};
  Cursor ahead = cur;
  auto advance = [&](Cursor& c) {
    c.col += step_cols;
    c.off += step_off;
    if (c.col >= per_row) {
      c.col -= per_row;
      c.off += wrap;
    }
  };
  V* xslot = &xs[0][threadIdx.x];
  G* gslot = &gs[0][kGrad ? threadIdx.x : 0];
  auto issue = [&](int slot) {
    if (ahead.off < end) {
      __pipeline_memcpy_async(xslot + slot * kThreads, x + ahead.off, sizeof(V));
      if constexpr (kGrad) __pipeline_memcpy_async(gslot + slot * kThreads, dy + ahead.off, sizeof(G));
    }
    __pipeline_commit();  // an empty group past the end keeps the count of groups in flight fixed
    advance(ahead);
  };
#pragma unroll
  for (int i = 0; i < S - 1; ++i) issue(i);
  int slot = 0;
  while (cur.off < end) {
    issue(slot == 0 ? S - 1 : slot - 1);  // the slot computed one step ago is free again
    __pipeline_wait_prior(S - 1);
    const V xin = xslot[slot * kThreads];
    if constexpr (kGrad) {
      body(cur.off, xin, gslot[slot * kThreads]);
    } else {
      body(cur.off, xin, xin);
    }
    advance(cur);
    slot = slot + 1 == S ? 0 : slot + 1;
  }
}

template <typename scalar_t, typename out_t, int VEC>
__global__ void __launch_bounds__(kThreads, kMinBlocks) forward_kernel_ahead(const scalar_t* __restrict__ x,
                                                                 out_t* __restrict__ y,
                                                                 const at::opmath_type<scalar_t>* __restrict__ wn,
                                                                 const at::opmath_type<scalar_t>* __restrict__ wd,
                                                                 Layout L) {
  using T = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  T a[kNumerator], babs[kDenominator];
  load_coefficients(wn, wd, blockIdx.x, a, babs);
  walk_ahead<false>(L, reinterpret_cast<const V*>(x), reinterpret_cast<const V*>(x),
                    [&](int32_t off, const V& in, const V&) {
                      Vec<out_t, VEC> out;
                      if (__builtin_expect(any_far(in), 0)) {  // rare: each element picks its form
#pragma unroll
                        for (int k = 0; k < VEC; ++k) {
                          out.v[k] = static_cast<out_t>(rational_forward<T>(static_cast<T>(in.v[k]), a, babs));
                        }
                      } else {
#pragma unroll
                        for (int k = 0; k < VEC; ++k) {
                          const T xv = static_cast<T>(in.v[k]);
                          out.v[k] = static_cast<out_t>(rational_forward_direct<T>(xv, fabs(xv), a, babs));
                        }
                      }
                      store_vec(y + static_cast<int64_t>(off) * VEC, out);
                    });
}

template <typename scalar_t, typename grad_t, int VEC>
__global__ void __launch_bounds__(kThreads, kMinBlocks) backward_kernel_ahead(const grad_t* __restrict__ dy,
                                                                  const scalar_t* __restrict__ x,
                                                                  scalar_t* __restrict__ dx,
                                                                  const at::opmath_type<scalar_t>* __restrict__ wn,
                                                                  const at::opmath_type<scalar_t>* __restrict__ wd,
                                                                  CoeffSink<at::opmath_type<scalar_t>> sink,
                                                                  Layout L) {
  using T = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  using G = Vec<grad_t, VEC>;
  T a[kNumerator], babs[kDenominator];
  load_coefficients(wn, wd, blockIdx.x, a, babs);
  T acc[kCoeffGrads];
#pragma unroll
  for (int k = 0; k < kCoeffGrads; ++k) acc[k] = T(0);
  walk_ahead<true>(L, reinterpret_cast<const V*>(x), reinterpret_cast<const G*>(dy),
                   [&](int32_t off, const V& xin, const G& gin) {
                     V out;
                     if (__builtin_expect(any_far(xin), 0)) {  // rare: each element picks its form
#pragma unroll
                       for (int k = 0; k < VEC; ++k) {
                         out.v[k] = static_cast<scalar_t>(
                             rational_backward<T>(static_cast<T>(xin.v[k]), static_cast<T>(gin.v[k]), a, babs, acc));
                       }
                     } else {  // the hot path: the direct form, no per-element test
#pragma unroll
                       for (int k = 0; k < VEC; ++k) {
                         out.v[k] = static_cast<scalar_t>(rational_backward_direct<T>(
                             static_cast<T>(xin.v[k]), static_cast<T>(gin.v[k]), a, babs, acc));
                       }
                     }
                     store_vec(dx + static_cast<int64_t>(off) * VEC, out);
                   });
  store_block_partials(acc, sink, L.groups);
}

#if !MMKAT_FUSED_REDUCE
// The coefficient gradients from the per-block partials [blocks_y, groups, 10], one block of kThreads threads.
// Each pass covers up to kThreads outputs (group x coefficient); the threads of a pass split the partials' rows
// into `slices` interleaved sets, each thread summing its set with 8 independent running sums (chained_sum: their loads
// are in flight together), then one thread per output adds the slices' sums; then the numerator is summed over
// groups and the denominator sums are multiplied by sign(b) (sign(0) = +1). Every order is fixed by the shape and
// grid, so the result is bitwise reproducible.
template <typename T>
__global__ void __launch_bounds__(kThreads) reduce_kernel(const T* __restrict__ partials, int64_t blocks_y,
                                                          int64_t groups, const T* __restrict__ wd,
                                                          T* __restrict__ per_group,  // [groups, 10] scratch
                                                          T* __restrict__ d_num, T* __restrict__ d_den) {
  __shared__ T slice_sums[kThreads];
  const int64_t outputs = groups * kCoeffGrads;
  const int64_t width = std::min<int64_t>(outputs, kThreads);  // outputs per pass
  const int64_t slices = kThreads / width;
  const int64_t slice = threadIdx.x / width, column = threadIdx.x % width;
  for (int64_t first = 0; first < outputs; first += width) {
    const int64_t o = first + column;
    T sum = T(0);
    if (slice < slices && o < outputs) {
      sum = chained_sum<8, T>(slice, slices, blocks_y, [&](int64_t b) { return partials[b * outputs + o]; });
    }
    slice_sums[threadIdx.x] = sum;
    __syncthreads();
    if (slice == 0 && o < outputs) {
      T total = slice_sums[column];
      for (int64_t s = 1; s < slices; ++s) total += slice_sums[s * width + column];
      per_group[o] = total;
    }
    __syncthreads();
  }
  if (threadIdx.x < kNumerator) {
    T s = T(0);
    for (int64_t g = 0; g < groups; ++g) s += per_group[g * kCoeffGrads + threadIdx.x];
    d_num[threadIdx.x] = s;
  }
  for (int64_t i = threadIdx.x; i < groups * kDenominator; i += kThreads) {
    const int64_t g = i / kDenominator, j = i % kDenominator;
    d_den[i] = (wd[i] < T(0) ? T(-1) : T(1)) * per_group[g * kCoeffGrads + kNumerator + j];
  }
}
#endif

// kVecBytes-wide vectors when a group's segment is a whole number of them and every buffer is aligned.
Layout make_layout(const at::Tensor& x, int64_t groups, std::initializer_list<const void*> buffers) {
  Layout L;
  L.channels = x.size(-1);
  L.rows = L.channels == 0 ? 0 : x.numel() / L.channels;
  L.groups = groups;
  L.d = L.channels / groups;
  const int64_t max_vec = std::max<int64_t>(1, kVecBytes / x.element_size());
  bool aligned = true;
  for (const void* p : buffers) aligned = aligned && reinterpret_cast<uintptr_t>(p) % kVecBytes == 0;
  L.vec = (L.d % max_vec == 0 && aligned) ? static_cast<int>(max_vec) : 1;
  L.per_row = static_cast<int>(L.d / L.vec);
  L.tpr = std::max(1, std::min(L.per_row, kThreads));
  L.rpi = kThreads / L.tpr;
  return L;
}

// Enough blocks to fill the GPU a few times over, never more than there are row segments.
// Multiprocessors of a device, asked of the driver once per device (not on every call).
int multiprocessor_count(int device) {
  static std::array<std::atomic<int>, 64> cache{};  // 0: not asked yet
  int sms = device >= 0 && device < static_cast<int>(cache.size()) ? cache[device].load(std::memory_order_relaxed) : 0;
  if (sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (device >= 0 && device < static_cast<int>(cache.size())) cache[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

dim3 make_grid(const Layout& L, int device) {
  const int sms = multiprocessor_count(device);
  const int64_t target_blocks = static_cast<int64_t>(sms) * MMKAT_BLOCKS_PER_SM;
  int64_t by = std::max<int64_t>(1, target_blocks / L.groups);
  by = std::min<int64_t>(by, (L.rows + L.rpi - 1) / L.rpi);
  by = std::min<int64_t>(by, 65535);
  return dim3(static_cast<unsigned>(L.groups), static_cast<unsigned>(std::max<int64_t>(by, 1)));
}

// Whether backward_kernel_ahead's 32-bit vector offsets hold for this tensor and grid: the largest offset a
// cursor reaches is below the end plus kStages + 1 steps, each at most (step / per_row + 2) rows of vectors.
[[maybe_unused]] bool vector_offsets_fit(const Layout& L, dim3 grid) {
  const int64_t row_vectors = L.channels / L.vec;
  const int64_t step = static_cast<int64_t>(grid.y) * kThreads;
  const int64_t reach = L.rows * row_vectors + (kStages + 1) * (step / L.per_row + 2) * row_vectors;
  return reach < (int64_t{1} << 31);
}

template <typename scalar_t, typename Launch>
void with_vec(int vec, Launch&& launch) {
  constexpr int kMax = kVecBytes / sizeof(scalar_t) > 0 ? kVecBytes / sizeof(scalar_t) : 1;
  if (vec == kMax) {
    launch(std::integral_constant<int, kMax>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

}  // namespace

namespace {

// The bias in the math type, contiguous and 16-byte aligned (the kernels read it in 16-byte vectors), for the
// kBias kernels; an undefined tensor when there is none.
at::Tensor math_bias(const at::Tensor* bias, at::ScalarType math) {
  if (bias == nullptr) return at::Tensor();
  at::Tensor b = bias->to(math).contiguous();
  return reinterpret_cast<uintptr_t>(b.const_data_ptr()) % 16 == 0 ? b : b.clone();
}

// Per-channel sums of the [blocks_y, C] partials of the kBias backward, in a fixed order (chained_sum: 8 running sums
// per channel, then added in order): d_bias [C] in the math type.
template <typename T>
__global__ void __launch_bounds__(kThreads) bias_reduce_kernel(const T* __restrict__ partials, int64_t blocks_y,
                                                               int64_t channels, T* __restrict__ d_bias) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= channels) return;
  d_bias[c] = chained_sum<8, T>(0, 1, blocks_y, [&](int64_t b) { return partials[b * channels + c]; });
}

// The forward, its result in `dtype`: x's own type, or (x float32) bfloat16 / float16 written by the kernel;
// with a bias, F(x + bias).
at::Tensor forward_cuda(const at::Tensor& x, const at::Tensor& weight_numerator, const at::Tensor& weight_denominator,
                        int64_t groups, at::ScalarType dtype, const char* op, const at::Tensor* bias = nullptr) {
  check_group_rational_inputs(x, weight_numerator, weight_denominator, groups, op);
  if (bias != nullptr) check_bias(*bias, x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const bool narrowing = x.scalar_type() == at::kFloat && (dtype == at::kBFloat16 || dtype == at::kHalf);
  if (dtype != x.scalar_type() && !narrowing) {  // widening or an unusual pair: compute, then convert
    return forward_cuda(x, weight_numerator, weight_denominator, groups, x.scalar_type(), op, bias).to(dtype);
  }
  auto xc = x.contiguous();
  auto y = at::empty_like(xc, xc.options().dtype(dtype));
  const Layout L = make_layout(xc, groups, {xc.const_data_ptr(), y.const_data_ptr()});
  if (L.rows == 0 || L.channels == 0) return y;
  const at::ScalarType math = math_type(x);
  auto wn = weight_numerator.to(math).contiguous();
  auto wd = weight_denominator.to(math).contiguous();
  const at::Tensor bc = math_bias(bias, math);
  const dim3 grid = make_grid(L, x.get_device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](auto in_tag, auto out_tag) {
    using scalar_t = decltype(in_tag);
    using out_t = decltype(out_tag);
    using T = at::opmath_type<scalar_t>;
    with_vec<scalar_t>(L.vec, [&](auto vec) {
      constexpr int kVec = decltype(vec)::value;
      if (bias != nullptr) {
        forward_kernel<scalar_t, out_t, kVec, true><<<grid, kThreads, 0, stream>>>(
            xc.const_data_ptr<scalar_t>(), y.mutable_data_ptr<out_t>(), wn.const_data_ptr<T>(),
            wd.const_data_ptr<T>(), bc.const_data_ptr<T>(), L);
        return;
      }
      if constexpr (kStages >= 2 && kVec > 1) {
        if (vector_offsets_fit(L, grid)) {
          forward_kernel_ahead<scalar_t, out_t, kVec><<<grid, kThreads, 0, stream>>>(
              xc.const_data_ptr<scalar_t>(), y.mutable_data_ptr<out_t>(), wn.const_data_ptr<T>(),
              wd.const_data_ptr<T>(), L);
          return;
        }
      }
      forward_kernel<scalar_t, out_t, kVec><<<grid, kThreads, 0, stream>>>(
          xc.const_data_ptr<scalar_t>(), y.mutable_data_ptr<out_t>(), wn.const_data_ptr<T>(), wd.const_data_ptr<T>(),
          nullptr, L);
    });
  };
  if (dtype == at::kBFloat16 && narrowing) {
    launch(float{}, c10::BFloat16{});
  } else if (dtype == at::kHalf && narrowing) {
    launch(float{}, c10::Half{});
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_rational_forward_cuda",
                                    [&] { launch(scalar_t{}, scalar_t{}); });
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

// dx, d_num, d_den (in the math type) and, with a bias, d_bias (in the math type, or the bias's type where the
// composite fallback ran; undefined without a bias).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_output,
                                                                         const at::Tensor& x,
                                                                         const at::Tensor& weight_numerator,
                                                                         const at::Tensor& weight_denominator,
                                                                         int64_t groups, const char* op,
                                                                         const at::Tensor* bias = nullptr) {
  check_group_rational_inputs(x, weight_numerator, weight_denominator, groups, op);
  check_grad_output(grad_output, x, op);
  if (bias != nullptr) check_bias(*bias, x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::ScalarType math = math_type(x);
  auto xc = x.contiguous();
  // A bfloat16 / float16 dy for a float32 x is read by the kernel as it is; other mismatches are converted.
  const bool narrow_dy = x.scalar_type() == at::kFloat &&
                         (grad_output.scalar_type() == at::kBFloat16 || grad_output.scalar_type() == at::kHalf);
  auto dyc = (narrow_dy ? grad_output : grad_output.to(x.scalar_type())).contiguous();
  auto dx = at::empty_like(xc);
  const Layout L = make_layout(xc, groups, {xc.const_data_ptr(), dyc.const_data_ptr(), dx.const_data_ptr()});
  if (bias != nullptr && L.per_row > kThreads) {
    // More vectors per row segment than threads (a thread would see several channels): the composite, the plain
    // backward at x + bias then the per-channel sums of its dx.
    auto [dz, d_bias, d_num, d_den] =
        group_rational_bias_backward_composite(grad_output, x, *bias, weight_numerator, weight_denominator, groups);
    return {dz, d_num, d_den, d_bias};
  }
  auto wn = weight_numerator.to(math).contiguous();
  auto wd = weight_denominator.to(math).contiguous();
  const at::Tensor bc = math_bias(bias, math);
  auto d_num = at::empty({1, kNumerator}, wn.options());
  auto d_den = at::empty({groups, kDenominator}, wn.options());
  at::Tensor d_bias = bias != nullptr ? at::empty({L.channels}, wn.options()) : at::Tensor();
  if (L.rows == 0 || L.channels == 0) {
    d_num.zero_();
    d_den.zero_();
    if (d_bias.defined()) d_bias.zero_();
  } else {
    const dim3 grid = make_grid(L, x.get_device());
    // One scratch allocation: the per-block partials [grid.y, groups, 10], the per-group sums [groups, 10], with a
    // bias the per-block channel sums [grid.y, C], then (fused reduction) the blocks' counters, groups + 1
    // unsigned ints in as many math-type elements, zeroed here.
    const int64_t partial_count = static_cast<int64_t>(grid.y) * groups * kCoeffGrads;
    const int64_t bias_offset = partial_count + groups * kCoeffGrads;
    const int64_t bias_count = bias != nullptr ? static_cast<int64_t>(grid.y) * L.channels : 0;
    const int64_t counter_offset = bias_offset + bias_count;
    const int64_t counter_count = kFusedReduce ? groups + 1 : 0;
    auto scratch = at::empty({counter_offset + counter_count}, wn.options());
    auto stream = c10::cuda::getCurrentCUDAStream();
    if constexpr (kFusedReduce) {
      char* counters = static_cast<char*>(scratch.mutable_data_ptr()) + counter_offset * scratch.element_size();
      C10_CUDA_CHECK(cudaMemsetAsync(counters, 0, counter_count * sizeof(unsigned int), stream));
    }
    auto launch = [&](auto x_tag, auto grad_tag) {
      using x_t = decltype(x_tag);
      using grad_t = decltype(grad_tag);
      using T = at::opmath_type<x_t>;
      T* base = scratch.mutable_data_ptr<T>();
      const CoeffSink<T> sink{base, reinterpret_cast<unsigned int*>(base + counter_offset), base + partial_count,
                              wd.const_data_ptr<T>(), d_num.mutable_data_ptr<T>(), d_den.mutable_data_ptr<T>()};
      with_vec<x_t>(L.vec, [&](auto vec) {
        constexpr int kVec = decltype(vec)::value;
        if (bias != nullptr) {
          backward_kernel<x_t, grad_t, kVec, true><<<grid, kThreads, 0, stream>>>(
              dyc.const_data_ptr<grad_t>(), xc.const_data_ptr<x_t>(), dx.mutable_data_ptr<x_t>(),
              wn.const_data_ptr<T>(), wd.const_data_ptr<T>(), sink, bc.const_data_ptr<T>(), base + bias_offset, L);
          return;
        }
        if constexpr (kStages >= 2 && kVec > 1) {
          if (vector_offsets_fit(L, grid)) {
            backward_kernel_ahead<x_t, grad_t, kVec><<<grid, kThreads, 0, stream>>>(
                dyc.const_data_ptr<grad_t>(), xc.const_data_ptr<x_t>(), dx.mutable_data_ptr<x_t>(),
                wn.const_data_ptr<T>(), wd.const_data_ptr<T>(), sink, L);
            return;
          }
        }
        backward_kernel<x_t, grad_t, kVec><<<grid, kThreads, 0, stream>>>(
            dyc.const_data_ptr<grad_t>(), xc.const_data_ptr<x_t>(), dx.mutable_data_ptr<x_t>(),
            wn.const_data_ptr<T>(), wd.const_data_ptr<T>(), sink, nullptr, nullptr, L);
      });
    };
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_rational_backward_cuda", [&] {
      using T = at::opmath_type<scalar_t>;
      if (dyc.scalar_type() == at::kBFloat16 && narrow_dy) {
        launch(float{}, c10::BFloat16{});
      } else if (dyc.scalar_type() == at::kHalf && narrow_dy) {
        launch(float{}, c10::Half{});
      } else {
        launch(scalar_t{}, scalar_t{});
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      T* base = scratch.mutable_data_ptr<T>();
#if !MMKAT_FUSED_REDUCE
      reduce_kernel<T><<<1, kThreads, 0, stream>>>(base, grid.y, groups, wd.const_data_ptr<T>(), base + partial_count,
                                                   d_num.mutable_data_ptr<T>(), d_den.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
      if (bias != nullptr) {
        const auto blocks = static_cast<unsigned>((L.channels + kThreads - 1) / kThreads);
        bias_reduce_kernel<T><<<blocks, kThreads, 0, stream>>>(base + bias_offset, grid.y, L.channels,
                                                               d_bias.mutable_data_ptr<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return {dx, d_num, d_den, d_bias};
}

}  // namespace

at::Tensor group_rational_forward_cuda(const at::Tensor& x, const at::Tensor& weight_numerator,
                                       const at::Tensor& weight_denominator, int64_t groups) {
  return forward_cuda(x, weight_numerator, weight_denominator, groups, x.scalar_type(),
                      "mmkat::group_rational_forward");
}

at::Tensor group_rational_forward_to_cuda(const at::Tensor& x, const at::Tensor& weight_numerator,
                                          const at::Tensor& weight_denominator, int64_t groups, at::ScalarType dtype) {
  return forward_cuda(x, weight_numerator, weight_denominator, groups, dtype, "mmkat::group_rational_forward_to");
}

at::Tensor group_rational_bias_forward_cuda(const at::Tensor& x, const at::Tensor& bias,
                                            const at::Tensor& weight_numerator, const at::Tensor& weight_denominator,
                                            int64_t groups) {
  return forward_cuda(x, weight_numerator, weight_denominator, groups, x.scalar_type(),
                      "mmkat::group_rational_bias_forward", &bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_rational_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight_numerator,
    const at::Tensor& weight_denominator, int64_t groups) {
  auto [dx, d_num, d_den, none] = backward_cuda(grad_output, x, weight_numerator, weight_denominator, groups,
                                                "mmkat::group_rational_backward");
  return {dx, d_num.to(weight_numerator.scalar_type()), d_den.to(weight_denominator.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_rational_bias_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& bias, const at::Tensor& weight_numerator,
    const at::Tensor& weight_denominator, int64_t groups) {
  auto [dx, d_num, d_den, d_bias] = backward_cuda(grad_output, x, weight_numerator, weight_denominator, groups,
                                                  "mmkat::group_rational_bias_backward", &bias);
  return {dx, d_bias.to(bias.scalar_type()), d_num.to(weight_numerator.scalar_type()),
          d_den.to(weight_denominator.scalar_type())};
}

}  // namespace mmkat

TORCH_LIBRARY_IMPL(mmkat, CUDA, m) {
  m.impl("group_rational_forward", &mmkat::group_rational_forward_cuda);
  m.impl("group_rational_forward_to", &mmkat::group_rational_forward_to_cuda);
  m.impl("group_rational_backward", &mmkat::group_rational_backward_cuda);
  m.impl("group_rational_bias_forward", &mmkat::group_rational_bias_forward_cuda);
  m.impl("group_rational_bias_backward", &mmkat::group_rational_bias_backward_cuda);
}
