// Register-blocked float32 kernels for one row of the fusion block's 3x3 convolution
// (csrc/cpu/fusion_block.cpp): the forward z2 (A x w) = conv3x3(a1 rows y-1, y, y+1) + bias,
// A in {1, 3} (conv3x3_row_avx2), and the backward's input gradient through it and lrelu1
// (conv3x3_bwd_input_avx2, below, blocked over 4 channels of a1 instead of the A outputs).
//
// Why: the generic row kernel (conv3x3_row in fusion_block_rows.h) keeps one input channel's 9 A
// weights live and its outputs in memory; with 27 weights, 9 input vectors and the outputs it needs
// more than the 16 ymm registers of AVX2, and on an AVX2 EPYC it ran at about half the core's FMA
// rate, load-bound (benchmarks/NOTES.md). Here a block of 32 pixels keeps its A outputs in 4 A
// ymm accumulators across all Cm channels and 9 taps: per channel and tap, A weight broadcasts and
// 4 input loads feed 4 A FMAs (12 accumulators + 3 weights + 1 input = 16 registers at A = 3).
//
// Order of the sums: every output starts from its bias and adds, channel by channel, the taps in
// row-major order, one FMA each; the 8-pixel blocks and the scalar tail use the same order, so a
// pixel's result does not depend on where it falls in the row.
//
// Instruction set: AVX2 + FMA; by default it runs wherever the CPU has them, AVX-512 CPUs included
// (conv3x3_avx2_choice in fusion_block.cpp: faster there than the generic loops' zmm clone).
//
// Only fusion_block.cpp (and its C++ test) includes this header: the names keep internal linkage.
#pragma once

#include <cstdint>

#include "isa.h"

namespace inpaint_fast {
namespace cpu {
namespace {

#if IPF_X86_KERNELS

// The loop both directions share, MB x NV accumulators of 8 pixels, pixels [x0, x0 + 8 NV):
//   acc[i][v] += sum_{j < J} sum_{dy, dx} W[i wi + j wj + 3 dy + dx] rows[dy][j ld + x0 + 8 v + col(dx)]
// in the order j, dy, dx, one FMA each, with col(dx) = dx for the conv and 2 - dx for the
// transposed conv. Per j and tap: MB weight broadcasts and NV input loads feed MB NV FMAs.
template <int MB, int NV, bool kTransposed>
__attribute__((target("avx2,fma"))) inline void accumulate_taps(__m256 (&acc)[MB][NV], const float* const* rows,
                                                                int64_t J, int64_t ld, int64_t x0,
                                                                const float* __restrict W, int64_t wi, int64_t wj) {
  for (int64_t j = 0; j < J; ++j)
#pragma GCC unroll 3
    for (int dy = 0; dy < 3; ++dy) {
      const float* r = rows[dy] + j * ld + x0;
#pragma GCC unroll 3
      for (int dx = 0; dx < 3; ++dx) {
        __m256 k[MB];
#pragma GCC unroll 4
        for (int i = 0; i < MB; ++i) k[i] = _mm256_broadcast_ss(W + i * wi + j * wj + dy * 3 + dx);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          const __m256 in = _mm256_loadu_ps(r + (kTransposed ? 2 - dx : dx) + 8 * v);
#pragma GCC unroll 4
          for (int i = 0; i < MB; ++i) acc[i][v] = _mm256_fmadd_ps(k[i], in, acc[i][v]);
        }
      }
    }
}

// NV vectors of 8 outputs per channel of z2, pixels [x0, x0 + 8 NV). rows: the three padded a1 rows
// (Cm x ld, ld = w + 2, column 0 and w + 1 zero), so pixel x's tap dx reads padded column x + dx.
// Blocked over the A outputs: W2[a][m] is W2 + 9 (a Cm + m).
template <int A, int NV>
__attribute__((target("avx2,fma"))) inline void conv3x3_block(const float* const* rows, int64_t Cm, int64_t ld,
                                                              int64_t x0, const float* __restrict W2,
                                                              const float* __restrict bias, float* __restrict out,
                                                              int64_t w) {
  __m256 acc[A][NV];
#pragma GCC unroll 4
  for (int a = 0; a < A; ++a)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[a][v] = _mm256_set1_ps(bias[a]);
  accumulate_taps<A, NV, false>(acc, rows, Cm, ld, x0, W2, Cm * 9, 9);
#pragma GCC unroll 4
  for (int a = 0; a < A; ++a)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + a * w + x0 + 8 * v, acc[a][v]);
}

// z2 (A x w, row stride w) of one row; up, mid, down: the padded a1 rows y-1, y, y+1; W2 (A, Cm, 3, 3).
template <int A>
__attribute__((target("avx2,fma"))) void conv3x3_row_avx2(const float* up, const float* mid, const float* down,
                                                          int64_t Cm, int64_t w, const float* __restrict W2,
                                                          const float* __restrict bias, float* __restrict out) {
  const int64_t ld = w + 2;
  const float* rows[3] = {up, mid, down};
  int64_t x0 = 0;
  for (; x0 + 32 <= w; x0 += 32) conv3x3_block<A, 4>(rows, Cm, ld, x0, W2, bias, out, w);
  for (; x0 + 8 <= w; x0 += 8) conv3x3_block<A, 1>(rows, Cm, ld, x0, W2, bias, out, w);
  for (; x0 < w; ++x0)
    for (int a = 0; a < A; ++a) {
      __m128 acc = _mm_set_ss(bias[a]);
      for (int64_t m = 0; m < Cm; ++m)
        for (int dy = 0; dy < 3; ++dy)
          for (int dx = 0; dx < 3; ++dx)
            acc = _mm_fmadd_ss(_mm_set_ss(W2[(a * Cm + m) * 9 + dy * 3 + dx]), _mm_set_ss(rows[dy][m * ld + x0 + dx]),
                               acc);
      out[a * w + x0] = _mm_cvtss_f32(acc);
    }
}

// The backward's input gradient of the same conv for one row, with lrelu1's derivative:
//   g[m][x] = lrelu'(a1[m][y][x]) * sum_{a, dy, dx} W2[a][m][dy][dx] dz2[a][y+1-dy][x+1-dx]
// (the transposed conv; conv_bwd_row in fusion_block_rows.h computes the same in its generic loop).
// MB channels m x NV vectors of 8 pixels in accumulators, pixels [x0, x0 + 8 NV). drows: the padded
// dz2 rows y+1, y, y-1 (A x ld each), i.e. indexed by dy; tap dx reads padded column x + 2 - dx.
template <int A, int MB, int NV>
__attribute__((target("avx2,fma"))) inline void conv3x3_bwd_block(const float* const* drows, const float* a_mid,
                                                                  const float* __restrict W2, float slope, int64_t Cm,
                                                                  int64_t m0, int64_t ld, int64_t x0,
                                                                  float* __restrict g, int64_t w) {
  __m256 acc[MB][NV];
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_setzero_ps();
  // Blocked over the channels m0 .. m0 + MB - 1 of a1, summed over the A channels of dz2.
  accumulate_taps<MB, NV, true>(acc, drows, A, ld, x0, W2 + m0 * 9, 9, Cm * 9);
  const __m256 zero = _mm256_setzero_ps(), vslope = _mm256_set1_ps(slope);
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m256 act = _mm256_loadu_ps(a_mid + (m0 + i) * ld + 1 + x0 + 8 * v);
      const __m256 pos = _mm256_cmp_ps(act, zero, _CMP_GT_OQ);
      const __m256 r = _mm256_blendv_ps(_mm256_mul_ps(acc[i][v], vslope), acc[i][v], pos);
      _mm256_storeu_ps(g + (m0 + i) * w + x0 + 8 * v, r);
    }
}

// One channel block [m0, m0 + MB) of g over the whole row: 16-pixel blocks, 8-pixel blocks, then
// single pixels summed in the same order.
template <int A, int MB>
__attribute__((target("avx2,fma"))) void conv3x3_bwd_channels(const float* const* drows, const float* a_mid,
                                                              const float* __restrict W2, float slope, int64_t Cm,
                                                              int64_t m0, int64_t w, float* __restrict g) {
  const int64_t ld = w + 2;
  int64_t x0 = 0;
  for (; x0 + 16 <= w; x0 += 16) conv3x3_bwd_block<A, MB, 2>(drows, a_mid, W2, slope, Cm, m0, ld, x0, g, w);
  for (; x0 + 8 <= w; x0 += 8) conv3x3_bwd_block<A, MB, 1>(drows, a_mid, W2, slope, Cm, m0, ld, x0, g, w);
  for (; x0 < w; ++x0)
    for (int i = 0; i < MB; ++i) {
      const int64_t m = m0 + i;
      __m128 acc = _mm_setzero_ps();
      for (int a = 0; a < A; ++a)
        for (int dy = 0; dy < 3; ++dy)
          for (int dx = 0; dx < 3; ++dx)
            acc = _mm_fmadd_ss(_mm_set_ss(W2[(a * Cm + m) * 9 + dy * 3 + dx]),
                               _mm_set_ss(drows[dy][a * ld + x0 + 2 - dx]), acc);
      const float sv = _mm_cvtss_f32(acc);
      g[m * w + x0] = a_mid[m * ld + 1 + x0] > 0.0f ? sv : sv * slope;
    }
}

// g (Cm x w, row stride w) for one row; d_up, d_mid, d_down: the padded dz2 rows y-1, y, y+1
// (A x (w + 2)); a_mid: the padded a1 row y (Cm x (w + 2)); W2 (A, Cm, 3, 3). Channels in blocks
// of 4, the remaining 1-3 one at a time. 4 channels x 2 vectors: 8 accumulators, 4 weights and an
// input in registers (4 x 3 vectors, 17 registers, spilled an accumulator on every tap).
template <int A>
__attribute__((target("avx2,fma"))) void conv3x3_bwd_input_avx2(const float* d_up, const float* d_mid,
                                                                const float* d_down, const float* a_mid,
                                                                const float* __restrict W2, float slope, int64_t Cm,
                                                                int64_t w, float* __restrict g) {
  const float* drows[3] = {d_down, d_mid, d_up};
  int64_t m0 = 0;
  for (; m0 + 4 <= Cm; m0 += 4) conv3x3_bwd_channels<A, 4>(drows, a_mid, W2, slope, Cm, m0, w, g);
  for (; m0 < Cm; ++m0) conv3x3_bwd_channels<A, 1>(drows, a_mid, W2, slope, Cm, m0, w, g);
}

#endif  // IPF_X86_KERNELS

}  // namespace
}  // namespace cpu
}  // namespace inpaint_fast
