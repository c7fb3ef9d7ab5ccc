// C++ test of the attention's register-tiled GEMM (csrc/cpu/strip_gemm.h) against a double
// reference, both drivers (A by rows, strip_gemm; A given as its transpose, strip_gemm_transposed_a,
// overwriting C and adding to it) and every instruction set the CPU runs (AVX2 + FMA, AVX-512), on
// shapes that exercise every edge: row counts that are not a multiple of the 6- or 14-row tile,
// column counts that are not a multiple of the 16-column panel or the 32-column pair, depths below,
// at and above the 256-deep k block (with a tail), and padded row strides. Also checks that
// nothing outside C's m x n block is written, and that the AVX-512 tiles give bitwise the AVX2
// tiles' C (they sum in the same order). Prints which instruction sets it could not run; exits 77
// (ctest: skipped) on CPUs without AVX2 + FMA, non-zero on failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../../csrc/cpu/strip_gemm.h"

namespace {

using namespace inpaint_fast::cpu;

int failures = 0;

// A (m x k) is stored by rows at stride lda, or (transposed) as A^T (k x m) by rows at stride lda.
// With `accumulate`, C starts as random values that the product is added to.
void check(int64_t m, int64_t k, int64_t n, int64_t lda, int64_t ldc, bool transposed, bool accumulate,
           std::mt19937& rng) {
  const bool has_avx512 = strip_gemm_supported(StripGemmIsa::kAvx512);
  std::normal_distribution<float> normal;
  std::vector<float> a((transposed ? k : m) * lda), b(k * n);
  for (float& v : a) v = normal(rng);
  for (float& v : b) v = normal(rng);
  const auto a_at = [&](int64_t i, int64_t kk) { return transposed ? a[kk * lda + i] : a[i * lda + kk]; };
  std::vector<float> packed(strip_gemm_packed_size(k, n));
  strip_gemm_pack_b(b.data(), n, k, n, packed.data());

  const float sentinel = 12345.0f;
  std::vector<float> c(m * ldc + 16, sentinel);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = accumulate ? normal(rng) : sentinel;
  const std::vector<float> c0 = c;
  const auto run = [&](StripGemmIsa isa, std::vector<float>& out) {
    if (transposed) {
      strip_gemm_transposed_a(isa, a.data(), lda, m, k, packed.data(), n, out.data(), ldc, accumulate);
    } else {
      strip_gemm(isa, a.data(), lda, m, k, packed.data(), n, out.data(), ldc);
    }
  };
  run(StripGemmIsa::kAvx2, c);
  // The AVX-512 tiles against the AVX2 tiles' C, element by element (outside C both keep the sentinel).
  int64_t differ = 0;
  if (has_avx512) {
    std::vector<float> c512 = c0;
    run(StripGemmIsa::kAvx512, c512);
    for (size_t j = 0; j < c.size(); ++j) differ += std::memcmp(&c[j], &c512[j], sizeof(float)) != 0;
  }

  // Rounding bound of a float sum of products, blocked as the kernel blocks it: each k block is
  // summed with FMAs (<= kc roundings), then the blocks (and C's old value) are added one by one
  // (<= k / kc + 1 more), so |error| <= (kc + blocks + 2) * 2^-24 * (|c0| + sum |a b|). A wrong or
  // missing term is far above it.
  const int64_t kc = std::min<int64_t>(k, kStripGemmKc);
  const int64_t blocks = (k + kStripGemmKc - 1) / kStripGemmKc;
  const double unit = std::ldexp(1.0, -24);
  double worst = 0;  // largest error / bound
  int64_t stray = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      const float got = c[i * ldc + j];
      if (j >= n) {
        stray += got != sentinel;
        continue;
      }
      double want = accumulate ? c0[i * ldc + j] : 0.0, magnitude = std::fabs(want);
      for (int64_t kk = 0; kk < k; ++kk) {
        const double t = static_cast<double>(a_at(i, kk)) * b[kk * n + j];
        want += t;
        magnitude += std::fabs(t);
      }
      const double bound = (kc + blocks + 2) * unit * magnitude + 1e-30;
      worst = std::max(worst, std::fabs(got - want) / bound);
    }
  }
  for (int64_t j = m * ldc; j < static_cast<int64_t>(c.size()); ++j) stray += c[j] != sentinel;
  const bool ok = worst <= 1.0 && stray == 0 && differ == 0;
  failures += !ok;
  std::printf("%s %s m=%lld k=%lld n=%lld lda=%lld ldc=%lld: error / bound %.3g, %lld elements written outside C%s%lld\n",
              ok ? "ok  " : "FAIL",
              transposed ? (accumulate ? "transposed A, C +=" : "transposed A, C =") : "A by rows, C =",
              static_cast<long long>(m), static_cast<long long>(k), static_cast<long long>(n),
              static_cast<long long>(lda), static_cast<long long>(ldc), worst, static_cast<long long>(stray),
              has_avx512 ? ", AVX-512 elements not bitwise AVX2's: " : "", has_avx512 ? static_cast<long long>(differ) : 0LL);
}

}  // namespace

int main() {
  if (!avx2_kernels_supported()) {
    std::printf("skipped: this CPU has no AVX2 + FMA, the kernel cannot run (avx2_kernels_supported() is false)\n");
    return 77;
  }
  if (!strip_gemm_supported(StripGemmIsa::kAvx512))
    std::printf("AVX-512 tiles not run: this CPU has no AVX-512 (avx512_kernels_supported() is false)\n");
  std::mt19937 rng(0);
  const int64_t shapes[][3] = {
      {1, 1, 1},     {5, 3, 7},      {6, 16, 16},    {7, 17, 33},   {13, 255, 31},   {64, 256, 256},
      {64, 257, 256}, {64, 1000, 37}, {128, 256, 300}, {31, 600, 32}, {64, 4096, 48}, {25, 300, 80},
      {15, 40, 47},   {14, 9, 64},
  };
  for (const auto& s : shapes) {
    check(s[0], s[1], s[2], s[1], s[2], false, false, rng);            // packed rows
    check(s[0], s[1], s[2], s[1] + 5, s[2] + 16, false, false, rng);  // padded strides
    for (const bool accumulate : {false, true}) {
      check(s[0], s[1], s[2], s[0], s[2], true, accumulate, rng);
      check(s[0], s[1], s[2], s[0] + 5, s[2] + 16, true, accumulate, rng);
    }
  }
  // The backward's key-side shapes: m = N positions, k = a strip's 128 rows, n = Cq or C + Cp.
  check(4096, 128, 32, 4096 + 16, 32, true, true, rng);
  check(1000, 128, 256, 1000 + 16, 256, true, true, rng);
  return failures == 0 ? 0 : 1;
}
