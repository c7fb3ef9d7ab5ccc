// Register-tiled float32 GEMM for the attention's strip products (csrc/cpu/short_long_attention.cpp):
// C (m x n) = A (m x k, rows at stride lda) . B (k x n), with B packed once into column panels.
//
// Why not BLAS for these: the products of a strip are short in m (64 query rows in the forward,
// 128 in the backward) and their right-hand operand (the keys, the values, the queries) is the
// same for every strip of an image. MKL packs both operands on every call; at the forward's P.V
// shape (m = 64, k = N = 4096, n = C + Cp = 256) it ran at 41-68 GFLOP/s on one core of an AVX2 EPYC
// against 67-75 for a 2048^3 GEMM, and its packing copies took 12-17% of the forward
// (benchmarks/NOTES.md). Here B is packed once per image and A (a strip, or a block of rows of a
// position-major operand) is read in place, its rows being contiguous. The backward's key-side
// products (Q_I dS and dA_I P, whose right-hand operand is the strip itself) run transposed, as
// (dS^T) Qt_I and (P^T) dAt_I: C (N x channels) = A . B with A given as its transpose (the strip,
// read down its columns: strip_gemm_transposed_a) and B a strip's block of rows of a position-major
// operand (rows x channels, small enough to pack per strip).
//
// Blocking (one level, BLIS-style): k is cut into blocks of kStripGemmKc; for each block every
// panel of kStripGemmNr columns (kStripGemmKc x 16 floats = 16 KiB, in L1) is swept by micro-tiles
// of kStripGemmMr rows, each accumulating its 6 x 16 block of C in 12 ymm registers over the k
// block, starting from zero; the block's sum is then added to C. Summing each k block apart keeps
// the rounding error of a long k (the forward's 4096 keys) at BLAS's level: accumulating straight
// into C gave 7x the error of MKL's result at k = 4096, measured.
//
// Instruction set: AVX2 + FMA, checked at run time (avx2_kernels_supported). By default the caller
// uses it only where AVX-512 is absent (avx2_kernels_preferred): against MKL's zmm kernels a ymm
// kernel would run at half width, and it has not been measured on such a CPU.
//
// Only short_long_attention.cpp includes this header: the names keep internal linkage.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "avx2_kernels.h"

namespace inpaint_fast {
namespace cpu {
namespace {

constexpr int kStripGemmMr = 6;
constexpr int kStripGemmNr = 16;
constexpr int64_t kStripGemmKc = 256;

// Panels of the packed form of a k x n matrix (kStripGemmNr columns each).
inline int64_t strip_gemm_panels(int64_t n) {
  return (n + kStripGemmNr - 1) / kStripGemmNr;
}

// Floats of the packed form of a k x n matrix.
inline int64_t strip_gemm_packed_size(int64_t k, int64_t n) {
  return strip_gemm_panels(n) * kStripGemmNr * k;
}

// Panel p of the packed form of B (k x n) given by its rows: the panels hold kStripGemmNr columns
// each, panel p holding B[:, p*Nr : p*Nr + Nr] as k rows of Nr contiguous floats; the last panel's
// missing columns are zero. row(kk) points at B[kk, :], n contiguous elements (rows may come from
// different tensors) of float or of a type that converts to it (bfloat16: converted as packed).
// The panels are independent, so callers may pack them in parallel.
template <typename RowPtr>
inline void strip_gemm_pack_b_panel_from_rows(RowPtr row, int64_t k, int64_t n, int64_t p, float* packed) {
  using E = std::remove_cv_t<std::remove_pointer_t<decltype(row(0))>>;
  constexpr int64_t nr = kStripGemmNr;
  const int64_t j0 = p * nr;
  const int64_t w = std::min(nr, n - j0);
  float* dst = packed + j0 * k;
  for (int64_t kk = 0; kk < k; ++kk) {
    const E* src = row(kk) + j0;
    for (int64_t jj = 0; jj < w; ++jj) dst[kk * nr + jj] = static_cast<float>(src[jj]);
    std::fill(dst + kk * nr + w, dst + kk * nr + nr, 0.0f);
  }
}

// All panels of B (k x n) given by its rows (above).
template <typename RowPtr>
inline void strip_gemm_pack_b_from_rows(RowPtr row, int64_t k, int64_t n, float* packed) {
  for (int64_t p = 0; p < strip_gemm_panels(n); ++p) strip_gemm_pack_b_panel_from_rows(row, k, n, p, packed);
}

// The same for B (k x n) with rows at stride ldb.
inline void strip_gemm_pack_b(const float* b, int64_t ldb, int64_t k, int64_t n, float* packed) {
  strip_gemm_pack_b_from_rows([&](int64_t kk) { return b + kk * ldb; }, k, n, packed);
}

// Panel p of the packed form (as strip_gemm_pack_b writes it) of a k x n matrix B given by its
// columns: column(j) points at B[:, j], k contiguous elements (a row of B's transpose, such as one
// channel of a channel-major tensor) of float or of a type that converts to it. Packs without a
// transposed copy of B; the panels are independent, so callers may pack them in parallel.
template <typename ColumnPtr>
inline void strip_gemm_pack_b_panel_from_columns(ColumnPtr column, int64_t k, int64_t n, int64_t p, float* packed) {
  using E = std::remove_cv_t<std::remove_pointer_t<decltype(column(0))>>;
  constexpr int64_t nr = kStripGemmNr;
  const int64_t j0 = p * nr;
  const int64_t w = std::min(nr, n - j0);
  const E* src[kStripGemmNr];
  for (int64_t jj = 0; jj < w; ++jj) src[jj] = column(j0 + jj);
  float* dst = packed + j0 * k;
  for (int64_t kk = 0; kk < k; ++kk) {
    for (int64_t jj = 0; jj < w; ++jj) dst[kk * nr + jj] = static_cast<float>(src[jj][kk]);
    for (int64_t jj = w; jj < nr; ++jj) dst[kk * nr + jj] = 0.0f;
  }
}

#if IPF_AVX2_KERNELS

// One micro-tile: c (MR x 16, stride ldc) = [c +] a (MR x kc) . b (kc x 16, packed), where a's
// element (r, kk) is a[r * lda + kk] (rows of A at stride lda) or, kTransposedA, a[kk * lda + r]
// (A given as its transpose: rows of A^T at stride lda, so the MR values of one kk are adjacent).
// Not inlined (one call per kc * MR * 16 multiply-adds costs nothing), so that the drivers below
// are plain code.
template <int MR, bool kTransposedA>
__attribute__((target("avx2,fma"))) void strip_tile(const float* __restrict a, int64_t lda, const float* __restrict b,
                                                    int64_t kc, float* __restrict c, int64_t ldc, bool accumulate) {
  static_assert(kStripGemmNr == 16, "two ymm registers per row");
  __m256 acc0[MR], acc1[MR];
  // C's rows are far apart (rows of a strip or of a position-major result): fetching them now hides
  // their latency behind the k loop instead of stalling the final loads and stores on it.
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 15), _MM_HINT_T0);
    acc0[r] = _mm256_setzero_ps();
    acc1[r] = _mm256_setzero_ps();
  }
  for (int64_t kk = 0; kk < kc; ++kk) {
    const __m256 b0 = _mm256_loadu_ps(b + kk * 16);
    const __m256 b1 = _mm256_loadu_ps(b + kk * 16 + 8);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 ar = _mm256_broadcast_ss(kTransposedA ? a + kk * lda + r : a + r * lda + kk);
      acc0[r] = _mm256_fmadd_ps(ar, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(ar, b1, acc1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    if (accumulate) {
      acc0[r] = _mm256_add_ps(_mm256_loadu_ps(c + r * ldc), acc0[r]);
      acc1[r] = _mm256_add_ps(_mm256_loadu_ps(c + r * ldc + 8), acc1[r]);
    }
    _mm256_storeu_ps(c + r * ldc, acc0[r]);
    _mm256_storeu_ps(c + r * ldc + 8, acc1[r]);
  }
}

using StripTile = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, bool);

// strip_tiles<kTransposedA>()[r - 1] computes tiles of r rows, r = 1..kStripGemmMr.
template <bool kTransposedA, int... R>
constexpr std::array<StripTile, sizeof...(R)> strip_tiles(std::integer_sequence<int, R...>) {
  return {&strip_tile<R + 1, kTransposedA>...};
}
template <bool kTransposedA>
constexpr std::array<StripTile, kStripGemmMr> strip_tiles() {
  return strip_tiles<kTransposedA>(std::make_integer_sequence<int, kStripGemmMr>{});
}

// Rows of the next tile when `left` rows of C remain. A last tile of 1-3 rows would run at half
// speed or less (too few independent FMA chains to cover their latency): the last MR + 1 .. MR + 3
// rows go as two tiles of 4-5 rows instead.
inline int64_t strip_tile_rows(int64_t left) {
  constexpr int64_t MR = kStripGemmMr;
  return left > MR && left < MR + 4 ? (left + 1) / 2 : std::min(MR, left);
}

// One tile of C (rows x cols at c, stride ldc; cols <= kStripGemmNr): a panel's last columns go
// through a local buffer of full panel width, so nothing outside C's block is read or written.
inline void strip_tile_at_edge(StripTile tile, int64_t rows, int64_t cols, const float* a, int64_t lda,
                               const float* b, int64_t kc, float* c, int64_t ldc, bool accumulate) {
  constexpr int64_t NR = kStripGemmNr;
  if (cols == NR) {
    tile(a, lda, b, kc, c, ldc, accumulate);
    return;
  }
  float buf[kStripGemmMr * NR] = {};
  if (accumulate)
    for (int64_t r = 0; r < rows; ++r) std::memcpy(buf + r * NR, c + r * ldc, cols * sizeof(float));
  tile(a, lda, b, kc, buf, NR, accumulate);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(c + r * ldc, buf + r * NR, cols * sizeof(float));
}

#endif  // IPF_AVX2_KERNELS

// C (m x n, rows at stride ldc) = A (m x k, rows at stride lda) . B, where `packed` is B packed by
// strip_gemm_pack_b. Tiles at the edges of C (the last rows, the last panel's columns) run the
// kernel of their row count, so nothing outside A's m x k block or C's m x n block is read or
// written. Requires avx2_kernels_supported().
inline void strip_gemm(const float* a, int64_t lda, int64_t m, int64_t k, const float* packed, int64_t n, float* c,
                       int64_t ldc) {
#if IPF_AVX2_KERNELS
  constexpr int64_t NR = kStripGemmNr;
  static constexpr std::array<StripTile, kStripGemmMr> tiles = strip_tiles<false>();
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  // Each k block sweeps one panel of B (in L1) with all row tiles of A.
  for (int64_t k0 = 0; k0 < k; k0 += kStripGemmKc) {
    const int64_t kc = std::min(kStripGemmKc, k - k0);
    for (int64_t j0 = 0; j0 < n; j0 += NR) {
      const float* b = packed + j0 * k + k0 * NR;
      for (int64_t i0 = 0, rows = 0; i0 < m; i0 += rows) {
        rows = strip_tile_rows(m - i0);
        strip_tile_at_edge(tiles[rows - 1], rows, std::min(NR, n - j0), a + i0 * lda + k0, lda, b, kc,
                           c + i0 * ldc + j0, ldc, k0 > 0);
      }
    }
  }
#else
  (void)a, (void)lda, (void)m, (void)k, (void)packed, (void)n, (void)c, (void)ldc;
#endif
}

// C (m x n, rows at stride ldc) [+]= A . B with A given as its transpose `at` (k x m, rows at stride
// ldat): the backward's key-side products, (P^T) dA_I and (dS^T) Q_I, whose left operand is a strip
// read down its columns and whose right operand (a strip's rows of a position-major tensor) is
// small and packed per strip. `accumulate` adds the product to C (each k block is summed apart and
// then added, as in strip_gemm); otherwise C is overwritten. Here each row tile of A (its kc x MR
// block of `at`, kc cache lines) stays in L1 while it sweeps every panel of B (from L2).
// Requires avx2_kernels_supported().
inline void strip_gemm_transposed_a(const float* at, int64_t ldat, int64_t m, int64_t k, const float* packed,
                                    int64_t n, float* c, int64_t ldc, bool accumulate) {
#if IPF_AVX2_KERNELS
  constexpr int64_t NR = kStripGemmNr;
  static constexpr std::array<StripTile, kStripGemmMr> tiles = strip_tiles<true>();
  if (k == 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  for (int64_t k0 = 0; k0 < k; k0 += kStripGemmKc) {
    const int64_t kc = std::min(kStripGemmKc, k - k0);
    for (int64_t i0 = 0, rows = 0; i0 < m; i0 += rows) {
      rows = strip_tile_rows(m - i0);
      // The next row tile's A: kc floats down as many rows of `at`, far apart (a strip's row
      // stride), which the hardware prefetchers do not follow across pages. Measured (two threads,
      // backward at N = 4096, alternated call by call): 0.96x the time with pre and without.
      if (i0 + rows < m) {
        for (int64_t kk = 0; kk < kc; ++kk) {
          const float* next = at + (k0 + kk) * ldat + i0 + rows;
          _mm_prefetch(reinterpret_cast<const char*>(next), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(next + kStripGemmMr - 1), _MM_HINT_T0);
        }
      }
      for (int64_t j0 = 0; j0 < n; j0 += NR) {
        strip_tile_at_edge(tiles[rows - 1], rows, std::min(NR, n - j0), at + k0 * ldat + i0, ldat,
                           packed + j0 * k + k0 * NR, kc, c + i0 * ldc + j0, ldc, accumulate || k0 > 0);
      }
    }
  }
#else
  (void)at, (void)ldat, (void)m, (void)k, (void)packed, (void)n, (void)c, (void)ldc, (void)accumulate;
#endif
}

}  // namespace
}  // namespace cpu
}  // namespace inpaint_fast
