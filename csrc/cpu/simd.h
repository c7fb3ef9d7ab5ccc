// Vector helpers of the CPU row kernels (csrc/cpu/*.cpp), the CPU counterpart of the device
// utilities in csrc/cuda/common.cuh.
//
// The extension is built without -march flags, so the hot row kernels are compiled for x86-64-v4,
// -v3 and the baseline and picked once at load time (GCC target_clones, IPF_MULTIVERSION). What
// they call must be inlined into each clone to be vectorised for its instruction set
// (IPF_INLINE), and the loops must vectorise without -ffast-math: row reductions use kLanes
// independent partial sums in a fixed order, and exp is a branch-free polynomial (exp_d).
// Selects such as `z > 0 ? z : z * slope` and exp's range clamps vectorise in the clones without
// AVX-512 masking only because the build passes -fno-trapping-math (setup.py, CMakeLists.txt):
// without it GCC 12 kept them scalar in the x86-64-v3 clone, and the attention's softmax pass took
// 23% of the forward on an AVX2 EPYC instead of 6-8%. The flag changes no value (it allows no
// reassociation or contraction); nothing here reads floating-point exception flags.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define IPF_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define IPF_MULTIVERSION
#endif
// Helpers called from the row kernels must be inlined into each target clone to be vectorised
// for its instruction set.
#if defined(__GNUC__)
#define IPF_INLINE inline __attribute__((always_inline))
#else
#define IPF_INLINE inline
#endif
// Rows of one scratch buffer are written at runtime offsets the compiler cannot tell apart, which
// would otherwise keep those loops scalar; no iteration of an IPF_IVDEP loop depends on another.
#if defined(__GNUC__) && !defined(__clang__)
#define IPF_IVDEP _Pragma("GCC ivdep")
#else
#define IPF_IVDEP
#endif

namespace inpaint_fast {
namespace cpu {

// 32-byte GCC vector types, which is how a max reduction vectorises without -ffast-math (the lane
// pattern below does not, for max): the x86-64-v3 and -v4 clones lower a compare-select of them to
// one ymm vmaxps / vmaxpd. 64-byte types do not work for this: GCC 12 split their select into
// scalar vmaxss and stack moves in the v3 clone (seen in the disassembly; the attention softmax's
// max pass ran scalar on AVX2 CPUs).
typedef float f32x8 __attribute__((vector_size(32)));
typedef double f64x4 __attribute__((vector_size(32)));
template <typename T>
struct Vec32;
template <>
struct Vec32<float> {
  using type = f32x8;
};
template <>
struct Vec32<double> {
  using type = f64x4;
};

// Independent partial sums of a row reduction (one AVX2 register of floats).
constexpr int kLanes = 8;

// exp(x) to ~1 ulp without branches or calls, so that loops over it vectorise (libm's exp does not
// without -ffast-math). Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then the degree-13 Taylor
// polynomial (truncation < 5e-18 relative) and 2^n assembled in the exponent bits. Beyond the
// double range the result is inf (x > 709.78) or 0 (x < -708, libm would give a subnormal), so that
// sigmoid saturates to exactly 0 and 1 like torch.sigmoid (DFNet's alpha = 0 / 1 facts rely on it).
IPF_INLINE double exp_d(double x_in) {
  const double x = std::min(std::max(x_in, -708.0), 709.0);
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52: t's low mantissa bits hold round(x / ln2)
  const double t = x * 1.4426950408889634 + kShift;
  const double n = t - kShift;
  const double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  int64_t bits, shift_bits;
  std::memcpy(&bits, &t, sizeof bits);
  std::memcpy(&shift_bits, &kShift, sizeof shift_bits);
  bits = (bits - shift_bits + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const double e = p * scale;
  return x_in > 709.782712893384 ? std::numeric_limits<double>::infinity() : (x_in < -708.0 ? 0.0 : e);
}

// e^x in float to ~2 ulp for x in [-87.34, 88.3], branch-free (for the attention's probabilities,
// which are float for float and bfloat16 inputs): x = n ln2 + r with ln2 split in two (Cody-Waite),
// |r| <= ln2/2, the degree-7 Taylor polynomial of e^r (truncation < 6e-9 relative, below float's
// 6e-8 unit) and 2^n in the exponent bits (2^n must stay a normal float, hence the range).
IPF_INLINE float exp_f_in_range(float x) {
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: t's low mantissa bits hold round(x / ln2)
  const float t = x * 1.44269504088896341f + kShift;
  const float n = t - kShift;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits, shift_bits;
  std::memcpy(&bits, &t, sizeof bits);
  std::memcpy(&shift_bits, &kShift, sizeof shift_bits);
  bits = (bits - shift_bits + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Below this, e^x leaves float's normal range: exp_f and exp_f_nonpositive return 0.
constexpr float kExpFLow = -87.3365479f;

// e^x in float, exp_f_in_range on [-87.34, 88.3]: below -87.33 the result is 0, above 88.72 inf,
// and in between e^88.3.
IPF_INLINE float exp_f(float x_in) {
  const float e = exp_f_in_range(std::min(std::max(x_in, kExpFLow), 88.3f));
  return x_in > 88.7228391f ? std::numeric_limits<float>::infinity() : (x_in < kExpFLow ? 0.0f : e);
}

// exp_f for arguments that cannot overflow, as in the forward softmax, where x = s * scale -
// max(s * scale) is <= 0 up to one rounding: the same values as exp_f for x <= 88.3 (NaN stays
// NaN), without the upper clamp and overflow select, which took a third of the instructions of
// the vectorised loop (selects that keep NaN compile to compare-and-blend pairs).
IPF_INLINE float exp_f_nonpositive(float x_in) {
  const float e = exp_f_in_range(x_in < kExpFLow ? kExpFLow : x_in);
  return x_in < kExpFLow ? 0.0f : e;
}

// exp in the accumulation type of a kernel: exp_f for float, exp_d for double; the _nonpositive
// form for arguments that cannot overflow (exp_d needs no such variant: it is used in double only).
IPF_INLINE float exp_acc(float x) {
  return exp_f(x);
}
IPF_INLINE double exp_acc(double x) {
  return exp_d(x);
}
IPF_INLINE float exp_acc_nonpositive(float x) {
  return exp_f_nonpositive(x);
}
IPF_INLINE double exp_acc_nonpositive(double x) {
  return exp_d(x);
}

IPF_INLINE double sigmoid_d(double v) {
  return 1.0 / (1.0 + exp_d(-v));
}

template <typename Acc>
IPF_INLINE Acc reduce_lanes(const Acc* acc) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Sum of a[0..n) in double with kLanes partial sums: vectorises without -ffast-math, fixed order.
template <typename T>
IPF_INLINE double sum_row(const T* __restrict a, int64_t n) {
  double acc[kLanes] = {};
  int64_t x = 0;
  for (; x + kLanes <= n; x += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[x + l];
  double tail = 0;
  for (; x < n; ++x) tail += a[x];
  return reduce_lanes(acc) + tail;
}

template <typename T, typename U>
IPF_INLINE double dot_row(const T* __restrict a, const U* __restrict b, int64_t n) {
  double acc[kLanes] = {};
  int64_t x = 0;
  for (; x + kLanes <= n; x += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(a[x + l]) * b[x + l];
  double tail = 0;
  for (; x < n; ++x) tail += static_cast<double>(a[x]) * b[x];
  return reduce_lanes(acc) + tail;
}

}  // namespace cpu
}  // namespace inpaint_fast
