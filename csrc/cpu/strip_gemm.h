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
// column group of B (one or two panels of kStripGemmNr columns, kStripGemmKc x 16 floats = 16 KiB
// each, in L1) is swept by micro-tiles of rows, each accumulating its block of C in registers over
// the k block, starting from zero; the block's sum is then added to C. Summing each k block apart
// keeps the rounding error of a long k (the forward's 4096 keys) at BLAS's level: accumulating
// straight into C gave 7x the error of MKL's result at k = 4096, measured.
//
// Instruction sets (StripGemmIsa), checked at run time (csrc/cpu/isa.h): AVX2 + FMA, 6 x 16 tiles
// in 12 ymm accumulators; AVX-512, 14 x 32 tiles (two panels) in 28 zmm accumulators. Both sum in
// the same order, so they give bitwise the same C (tested).
//
// Only short_long_attention.cpp includes this header: the names keep internal linkage.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "isa.h"

namespace inpaint_fast {
namespace cpu {
namespace {

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

// The instruction sets of the tiles (see the top).
enum class StripGemmIsa { kAvx2, kAvx512 };

// Whether `isa`'s tiles can run on this CPU.
inline bool strip_gemm_supported(StripGemmIsa isa) {
  return isa == StripGemmIsa::kAvx512 ? avx512_kernels_supported() : avx2_kernels_supported();
}

#if IPF_X86_KERNELS

// Row tiles: at most kStripGemmMaxMr rows (the AVX-512 tiles').
constexpr int kStripGemmMaxMr = 14;

// A micro-tile computes c (MR x 16·NP, stride ldc) = [c +] a (MR x kc) . b (kc x 16·NP: NP packed
// panels, panel q at b + q * panel_stride), where a's element (r, kk) is a[r * lda + kk] (rows of A
// at stride lda) or, kTransposedA, a[kk * lda + r] (A given as its transpose: rows of A^T at stride
// lda, so the MR values of one kk are adjacent). Every element of C is the k block's products
// summed from zero in kk order, one FMA each, then added to C's old value: the two instruction
// sets give bitwise the same results. Not inlined (one call per kc * MR * 16 * NP multiply-adds
// costs nothing), so that the drivers below are plain code.
using StripTile = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t, bool);

// AVX2 + FMA: one panel, two ymm accumulators per row (2 * 6 + 2 + 1 of the 16 registers).
template <int MR, bool kTransposedA>
__attribute__((target("avx2,fma"))) void strip_tile_avx2(const float* __restrict a, int64_t lda,
                                                         const float* __restrict b, int64_t /*panel_stride*/,
                                                         int64_t kc, float* __restrict c, int64_t ldc, bool accumulate) {
  static_assert(kStripGemmNr == 16, "two ymm registers per row");
  __m256 acc0[MR], acc1[MR];
  // C's rows are far apart (rows of a strip or of a position-major result): fetching them now hides
  // their latency behind the k loop instead of stalling the final loads and stores on it.
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 15), _MM_HINT_T0);
    acc0[r] = _mm256_setzero_ps();
    acc1[r] = _mm256_setzero_ps();
  }
  for (int64_t kk = 0; kk < kc; ++kk) {
    const __m256 b0 = _mm256_loadu_ps(b + kk * 16);
    const __m256 b1 = _mm256_loadu_ps(b + kk * 16 + 8);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m256 ar = _mm256_broadcast_ss(kTransposedA ? a + kk * lda + r : a + r * lda + kk);
      acc0[r] = _mm256_fmadd_ps(ar, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(ar, b1, acc1[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    if (accumulate) {
      acc0[r] = _mm256_add_ps(_mm256_loadu_ps(c + r * ldc), acc0[r]);
      acc1[r] = _mm256_add_ps(_mm256_loadu_ps(c + r * ldc + 8), acc1[r]);
    }
    _mm256_storeu_ps(c + r * ldc, acc0[r]);
    _mm256_storeu_ps(c + r * ldc + 8, acc1[r]);
  }
}

// AVX-512: NP panels (1 or 2), one zmm accumulator per row and panel (2 * 14 + 2 + 1 of the 32
// registers at NP = 2). Two panels per tile halve the loads of A per FMA, as the AVX2 tile's two
// ymm halves of a panel do; B keeps the packed form of one panel each (a tile reads two adjacent).
template <int MR, int NP, bool kTransposedA>
__attribute__((target("avx512f"))) void strip_tile_avx512(const float* __restrict a, int64_t lda,
                                                          const float* __restrict b, int64_t panel_stride, int64_t kc,
                                                          float* __restrict c, int64_t ldc, bool accumulate) {
  static_assert(kStripGemmNr == 16, "one zmm register per row and panel");
  __m512 acc[MR][NP];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 16 * NP - 1), _MM_HINT_T0);
    if (NP > 1) _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 16), _MM_HINT_T0);
#pragma GCC unroll 2
    for (int q = 0; q < NP; ++q) acc[r][q] = _mm512_setzero_ps();
  }
  // Two kk per iteration: in a scratch loop (one thread) the backward's shapes ran 5-10% faster
  // (dq 150 -> 164 GFLOP/s, the key-side Pt dAt_I 141 -> 154), the forward's unchanged.
#pragma GCC unroll 2
  for (int64_t kk = 0; kk < kc; ++kk) {
    __m512 bq[NP];
#pragma GCC unroll 2
    for (int q = 0; q < NP; ++q) bq[q] = _mm512_loadu_ps(b + q * panel_stride + kk * 16);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 ar = _mm512_set1_ps(kTransposedA ? a[kk * lda + r] : a[r * lda + kk]);
#pragma GCC unroll 2
      for (int q = 0; q < NP; ++q) acc[r][q] = _mm512_fmadd_ps(ar, bq[q], acc[r][q]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int q = 0; q < NP; ++q) {
      float* cq = c + r * ldc + 16 * q;
      _mm512_storeu_ps(cq, accumulate ? _mm512_add_ps(_mm512_loadu_ps(cq), acc[r][q]) : acc[r][q]);
    }
  }
}

// A set of tiles: rows[r - 1] computes tiles of r rows (r = 1..mr) over `panels` panels, and
// single[r - 1] over one panel (the columns left after the last whole group of `panels`).
struct StripTiles {
  int64_t mr;
  int64_t panels;
  std::array<StripTile, kStripGemmMaxMr> rows;
  std::array<StripTile, kStripGemmMaxMr> single;
};

template <bool kTransposedA, int... R>
constexpr StripTiles strip_tiles_avx2(std::integer_sequence<int, R...>) {
  return {sizeof...(R), 1, {&strip_tile_avx2<R + 1, kTransposedA>...}, {&strip_tile_avx2<R + 1, kTransposedA>...}};
}
template <bool kTransposedA, int... R>
constexpr StripTiles strip_tiles_avx512(std::integer_sequence<int, R...>) {
  return {sizeof...(R), 2, {&strip_tile_avx512<R + 1, 2, kTransposedA>...},
          {&strip_tile_avx512<R + 1, 1, kTransposedA>...}};
}

// The tiles of `isa` for A by rows or transposed: 6 x 16 (AVX2), 14 x 32 (AVX-512).
template <bool kTransposedA>
const StripTiles& strip_tiles(StripGemmIsa isa) {
  static constexpr StripTiles avx2 = strip_tiles_avx2<kTransposedA>(std::make_integer_sequence<int, 6>{});
  static constexpr StripTiles avx512 =
      strip_tiles_avx512<kTransposedA>(std::make_integer_sequence<int, kStripGemmMaxMr>{});
  return isa == StripGemmIsa::kAvx512 ? avx512 : avx2;
}

// Rows of the next tile when `left` rows of C remain, tiles of at most mr rows. A last tile of
// 1-3 rows would run at half speed or less (too few independent FMA chains to cover their
// latency): the last mr + 1 .. mr + 3 rows go as two tiles instead.
inline int64_t strip_tile_rows(int64_t left, int64_t mr) {
  return left > mr && left < mr + 4 ? (left + 1) / 2 : std::min(mr, left);
}

// Calls f(j0, cols, tiles) for the column groups of an n-column C: whole groups of t.panels
// panels on t.rows, then the panels left one at a time on t.single (the last may be partial).
template <typename F>
inline void for_each_column_group(const StripTiles& t, int64_t n, const F& f) {
  constexpr int64_t NR = kStripGemmNr;
  int64_t j0 = 0;
  if (t.panels > 1)
    for (; j0 + t.panels * NR <= n; j0 += t.panels * NR) f(j0, t.panels * NR, t.rows);
  for (; j0 < n; j0 += NR) f(j0, std::min(NR, n - j0), t.single);
}

// One tile of C (rows x cols at c, stride ldc): a panel's last columns (cols < kStripGemmNr, a
// one-panel tile) go through a local buffer of full panel width, so nothing outside C's block is
// read or written.
inline void strip_tile_at_edge(StripTile tile, int64_t rows, int64_t cols, const float* a, int64_t lda,
                               const float* b, int64_t panel_stride, int64_t kc, float* c, int64_t ldc,
                               bool accumulate) {
  constexpr int64_t NR = kStripGemmNr;
  if (cols >= NR) {
    tile(a, lda, b, panel_stride, kc, c, ldc, accumulate);
    return;
  }
  float buf[kStripGemmMaxMr * NR] = {};
  if (accumulate)
    for (int64_t r = 0; r < rows; ++r) std::memcpy(buf + r * NR, c + r * ldc, cols * sizeof(float));
  tile(a, lda, b, panel_stride, kc, buf, NR, accumulate);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(c + r * ldc, buf + r * NR, cols * sizeof(float));
}

#endif  // IPF_X86_KERNELS

// C (m x n, rows at stride ldc) = A (m x k, rows at stride lda) . B, where `packed` is B packed by
// strip_gemm_pack_b. Tiles at the edges of C (the last rows, the last panel's columns) run the
// kernel of their size, so nothing outside A's m x k block or C's m x n block is read or
// written. Requires strip_gemm_supported(isa).
inline void strip_gemm(StripGemmIsa isa, const float* a, int64_t lda, int64_t m, int64_t k, const float* packed,
                       int64_t n, float* c, int64_t ldc) {
#if IPF_X86_KERNELS
  constexpr int64_t NR = kStripGemmNr;
  const StripTiles& tiles = strip_tiles<false>(isa);
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  // Each k block sweeps one column group of B (in L1) with all row tiles of A.
  for (int64_t k0 = 0; k0 < k; k0 += kStripGemmKc) {
    const int64_t kc = std::min(kStripGemmKc, k - k0);
    for_each_column_group(tiles, n, [&](int64_t j0, int64_t cols, const auto& tile) {
      const float* b = packed + j0 * k + k0 * NR;
      for (int64_t i0 = 0, rows = 0; i0 < m; i0 += rows) {
        rows = strip_tile_rows(m - i0, tiles.mr);
        strip_tile_at_edge(tile[rows - 1], rows, cols, a + i0 * lda + k0, lda, b, NR * k, kc, c + i0 * ldc + j0, ldc,
                           k0 > 0);
      }
    });
  }
#else
  (void)isa, (void)a, (void)lda, (void)m, (void)k, (void)packed, (void)n, (void)c, (void)ldc;
#endif
}

// C (m x n, rows at stride ldc) [+]= A . B with A given as its transpose `at` (k x m, rows at stride
// ldat): the backward's key-side products, (P^T) dA_I and (dS^T) Q_I, whose left operand is a strip
// read down its columns and whose right operand (a strip's rows of a position-major tensor) is
// small and packed per strip. `accumulate` adds the product to C (each k block is summed apart and
// then added, as in strip_gemm); otherwise C is overwritten. Here each row tile of A (its kc x MR
// block of `at`, kc cache lines) stays in L1 while it sweeps every panel of B (from L2).
// Requires strip_gemm_supported(isa).
inline void strip_gemm_transposed_a(StripGemmIsa isa, const float* at, int64_t ldat, int64_t m, int64_t k,
                                    const float* packed, int64_t n, float* c, int64_t ldc, bool accumulate) {
#if IPF_X86_KERNELS
  constexpr int64_t NR = kStripGemmNr;
  const StripTiles& tiles = strip_tiles<true>(isa);
  if (k == 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  for (int64_t k0 = 0; k0 < k; k0 += kStripGemmKc) {
    const int64_t kc = std::min(kStripGemmKc, k - k0);
    for (int64_t i0 = 0, rows = 0; i0 < m; i0 += rows) {
      rows = strip_tile_rows(m - i0, tiles.mr);
      // The next row tile's A: kc floats down as many rows of `at`, far apart (a strip's row
      // stride), which the hardware prefetchers do not follow across pages. Measured (two threads,
      // backward at N = 4096, alternated call by call, AVX2 tile): 0.96x the time with pre and
      // without.
      if (i0 + rows < m) {
        const int64_t next_rows = std::min(tiles.mr, m - i0 - rows);
        for (int64_t kk = 0; kk < kc; ++kk) {
          const float* next = at + (k0 + kk) * ldat + i0 + rows;
          _mm_prefetch(reinterpret_cast<const char*>(next), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(next + next_rows - 1), _MM_HINT_T0);
        }
      }
      for_each_column_group(tiles, n, [&](int64_t j0, int64_t cols, const auto& tile) {
        strip_tile_at_edge(tile[rows - 1], rows, cols, at + k0 * ldat + i0, ldat, packed + j0 * k + k0 * NR, NR * k,
                           kc, c + i0 * ldc + j0, ldc, accumulate || k0 > 0);
      });
    }
  }
#else
  (void)isa, (void)at, (void)ldat, (void)m, (void)k, (void)packed, (void)n, (void)c, (void)ldc, (void)accumulate;
#endif
}

}  // namespace
}  // namespace cpu
}  // namespace inpaint_fast
