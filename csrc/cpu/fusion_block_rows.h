// The per-row building blocks of the CPU fusion block, internal to it (csrc/cpu/fusion_block.cpp):
// the call's Shape and the iteration over fixed row blocks with a three-row ring, the moment
// (Chan) merges and block reductions, the bilinear resize tables, and the row kernels of the
// forward and the backward. Everything here works on one row, or one block's partial sums, at a
// time; the passes that drive it over the batch are in fusion_block_passes.h and
// fusion_block.cpp, whose head comment has the design notes.
//
// Only fusion_block.cpp includes this header, so the names sit in an anonymous namespace: they
// keep internal linkage, the multiversioned row kernels included.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../fusion_block_params.h"
#include "simd.h"

namespace inpaint_fast {
namespace cpu {
namespace {

// Rows per reduction block: a 128-row image still gives 16 blocks to share out, and the a1 halo
// row recomputed at the start of a thread's range stays a small overhead.
constexpr int64_t kRowsPerBlock = 8;
constexpr double kSlope = 0.2;  // LeakyReLU negative slope of DFNet's blend block

// ---- shapes and row iteration --------------------------------------------------------------------

// Shapes of one call: the checked sizes and what follows from them. Activations are NCHW
// contiguous: row y of channel ch of image b starts at ((b * C + ch) * h + y) * w, and the same
// row of consecutive channels is hw apart.
struct Shape : FusionBlockDims {
  int64_t hw, M, ld, blocks_per_image, num_blocks;
  // Whether the float 3x3 conv rows run on the AVX2 kernels of fusion_block_conv3x3.h
  // (conv3x3_avx2_choice in fusion_block.cpp); false for double.
  bool conv3x3_avx2;
};

Shape make_shape(const FusionBlockDims& d) {
  Shape s{};
  static_cast<FusionBlockDims&>(s) = d;
  s.hw = s.h * s.w;
  s.M = s.B * s.hw;
  s.ld = s.w + 2;  // a row buffer with one zero column on each side (the 3x3 zero padding)
  s.blocks_per_image = (s.h + kRowsPerBlock - 1) / kRowsPerBlock;
  s.num_blocks = s.B * s.blocks_per_image;
  return s;
}

inline int64_t row_offset(const Shape& s, int64_t C, int64_t b, int64_t y) {
  return (b * C * s.h + y) * s.w;
}

// Runs fn(block, b, y) for every row of blocks [blk_begin, blk_end), in order.
template <typename Fn>
void for_rows(const Shape& s, int64_t blk_begin, int64_t blk_end, Fn&& fn) {
  for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
    const int64_t b = blk / s.blocks_per_image;
    const int64_t y0 = (blk % s.blocks_per_image) * kRowsPerBlock;
    const int64_t y1 = std::min(s.h, y0 + kRowsPerBlock);
    for (int64_t y = y0; y < y1; ++y) fn(blk, b, y);
  }
}

// at::parallel_for over the blocks. Each block is a lot of work, so the grain is one block.
template <typename Fn>
void parallel_blocks(const Shape& s, Fn&& fn) {
  at::parallel_for(0, s.num_blocks, 1, fn);
}

// Three row buffers holding rows y-1, y, y+1 of some derived quantity (slot y % 3), filled on
// demand. Rows outside the image read as zeros, which is exactly the 3x3 conv's zero padding.
template <typename T>
class RowRing {
 public:
  RowRing(int64_t slot_size, int64_t h) : h_(h), size_(slot_size), buf_(3 * slot_size), zero_(slot_size, T(0)) {}

  template <typename Fill>
  const T* get(int64_t b, int64_t y, Fill&& fill) {
    if (y < 0 || y >= h_) return zero_.data();
    const int64_t slot = y % 3;
    T* p = buf_.data() + slot * size_;
    if (key_[slot] != b * h_ + y) {
      fill(p, b, y);
      key_[slot] = b * h_ + y;
    }
    return p;
  }

 private:
  int64_t h_, size_;
  std::vector<T> buf_, zero_;
  int64_t key_[3] = {-1, -1, -1};
};

// ---- moments (Chan et al.'s pairwise update), in double --------------------------------------
// State layout: [n, mean[K], m2[K*K]], m2 the centred co-moment matrix sum (x - mean)(x - mean)^T.

inline int64_t moments_size(int64_t K) {
  return 1 + K + K * K;
}

inline void moments_merge(double* dst, const double* src, int64_t K) {
  const double nb = src[0];
  if (nb == 0) return;
  const double na = dst[0];
  if (na == 0) {
    std::copy(src, src + moments_size(K), dst);
    return;
  }
  const double n = na + nb;
  double delta[6];
  for (int64_t i = 0; i < K; ++i) delta[i] = src[1 + i] - dst[1 + i];
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j)
      dst[1 + K + i * K + j] += src[1 + K + i * K + j] + delta[i] * delta[j] * (na * nb / n);
  for (int64_t i = 0; i < K; ++i) dst[1 + i] += delta[i] * (nb / n);
  dst[0] = n;
}

// Moments of K (<= 6) rows of length w, merged into `state`. Each row is centred on its own mean
// first, so the co-moments do not suffer from cancellation.
template <typename S>
IPF_MULTIVERSION void row_moments(const S* const* rows, int64_t K, int64_t w, double* tmp, double* state) {
  double row[1 + 6 + 36];
  row[0] = static_cast<double>(w);
  for (int64_t i = 0; i < K; ++i) {
    const double mi = sum_row(rows[i], w) / static_cast<double>(w);
    double* d = tmp + i * w;
    for (int64_t x = 0; x < w; ++x) d[x] = static_cast<double>(rows[i][x]) - mi;
    row[1 + i] = mi;
  }
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = i; j < K; ++j) {
      const double v = dot_row(tmp + i * w, tmp + j * w, w);
      row[1 + K + i * K + j] = v;
      row[1 + K + j * K + i] = v;
    }
  moments_merge(state, row, K);
}

// Combines per-block moment states in block order.
std::vector<double> reduce_moments(const std::vector<double>& blocks, int64_t nblocks, int64_t K) {
  std::vector<double> total(moments_size(K), 0.0);
  for (int64_t i = 0; i < nblocks; ++i) moments_merge(total.data(), blocks.data() + i * moments_size(K), K);
  return total;
}

// Sums per-block partials (k values each) in block order.
std::vector<double> reduce_blocks(const std::vector<double>& blocks, int64_t nblocks, int64_t k) {
  std::vector<double> total(k, 0.0);
  for (int64_t i = 0; i < nblocks; ++i)
    for (int64_t j = 0; j < k; ++j) total[j] += blocks[i * k + j];
  return total;
}

template <typename T>
std::vector<T> cast_vec(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// ---- bilinear resize tables (F.interpolate, bilinear, align_corners=False, no antialias) --------
// ATen's arithmetic: scale = in / out, src = max(scale (dst + 0.5) - 0.5, 0), i0 = floor(src),
// i1 = min(i0 + 1, in - 1), l1 = src - i0. Computed in double (the float64 oracle's arithmetic).

struct LinearTable {
  std::vector<int64_t> i0, i1;
  std::vector<double> l0, l1;
};

LinearTable linear_table(int64_t in, int64_t out) {
  LinearTable t;
  t.i0.resize(out);
  t.i1.resize(out);
  t.l0.resize(out);
  t.l1.resize(out);
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  for (int64_t d = 0; d < out; ++d) {
    const double src = std::max(scale * (static_cast<double>(d) + 0.5) - 0.5, 0.0);
    const int64_t i = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
    const double l = std::min(std::max(src - static_cast<double>(i), 0.0), 1.0);
    t.i0[d] = i;
    t.i1[d] = i + (i < in - 1 ? 1 : 0);
    t.l1[d] = l;
    t.l0[d] = 1.0 - l;
  }
  return t;
}

// ---- row kernels -----------------------------------------------------------------------------

// One row of Xk (resized image) and R = sigmoid(Wm F + bm), 3 channels each, in double; the rows
// of F's channels are fs apart, those written to X and R xs apart.
template <typename T>
IPF_MULTIVERSION void xr_row(const T* __restrict img, int64_t H, int64_t W, bool identity, int64_t iy0,
                             int64_t iy1, double ly0, double ly1, const int64_t* __restrict ix0,
                             const int64_t* __restrict ix1, const double* __restrict lx0,
                             const double* __restrict lx1, const T* __restrict F, int64_t c,
                             int64_t fs, const double* __restrict Wm, const double* __restrict bm, int64_t w,
                             int64_t xs, double* __restrict X, double* __restrict R) {
  for (int64_t ch = 0; ch < 3; ++ch) {
    double* __restrict xo = X + ch * xs;
    const T* r0 = img + (ch * H + iy0) * W;
    if (identity) {
      for (int64_t x = 0; x < w; ++x) xo[x] = static_cast<double>(r0[x]);
      continue;
    }
    const T* r1 = img + (ch * H + iy1) * W;
    for (int64_t x = 0; x < w; ++x) {
      const double top = static_cast<double>(r0[ix0[x]]) * lx0[x] + static_cast<double>(r0[ix1[x]]) * lx1[x];
      const double bot = static_cast<double>(r1[ix0[x]]) * lx0[x] + static_cast<double>(r1[ix1[x]]) * lx1[x];
      xo[x] = top * ly0 + bot * ly1;
    }
  }
  // The 1x1 map conv, four feature rows per sweep over the three accumulating output rows: a load
  // and a store of each output per four channels instead of per channel. Each feature row is read
  // in order (a pixel-chunk loop over all c channels instead reads c rows hw apart at once, which
  // the caches and prefetchers cannot follow: 10x slower at c = 64). Each pixel sums bias, then
  // k = 0 .. c-1 in order.
  double* __restrict o0 = R;
  double* __restrict o1 = R + xs;
  double* __restrict o2 = R + 2 * xs;
  IPF_IVDEP
  for (int64_t x = 0; x < w; ++x) {
    o0[x] = bm[0];
    o1[x] = bm[1];
    o2[x] = bm[2];
  }
  int64_t k = 0;
  for (; k + 4 <= c; k += 4) {
    const T* __restrict f0 = F + k * fs;
    const T* __restrict f1 = f0 + fs;
    const T* __restrict f2 = f1 + fs;
    const T* __restrict f3 = f2 + fs;
    const double* m0 = Wm + k;
    const double* m1 = Wm + c + k;
    const double* m2 = Wm + 2 * c + k;
    IPF_IVDEP
    for (int64_t x = 0; x < w; ++x) {
      const double v0 = f0[x], v1 = f1[x], v2 = f2[x], v3 = f3[x];
      o0[x] = o0[x] + m0[0] * v0 + m0[1] * v1 + m0[2] * v2 + m0[3] * v3;
      o1[x] = o1[x] + m1[0] * v0 + m1[1] * v1 + m1[2] * v2 + m1[3] * v3;
      o2[x] = o2[x] + m2[0] * v0 + m2[1] * v1 + m2[2] * v2 + m2[3] * v3;
    }
  }
  for (; k < c; ++k) {
    const T* __restrict f = F + k * fs;
    const double w0 = Wm[k], w1 = Wm[c + k], w2 = Wm[2 * c + k];
    IPF_IVDEP
    for (int64_t x = 0; x < w; ++x) {
      const double v = f[x];
      o0[x] += w0 * v;
      o1[x] += w1 * v;
      o2[x] += w2 * v;
    }
  }
  for (int64_t j = 0; j < 3; ++j) {
    double* __restrict o = R + j * xs;
    for (int64_t x = 0; x < w; ++x) o[x] = sigmoid_d(o[x]);
  }
}

// One row of a1 = lrelu(W1f in + b1f) (BN1 folded into conv1) from the 6 input rows `in` (6 x w),
// written with a zero column on either side (row stride ld = w + 2) for the 3x3 stencil.
template <typename T>
IPF_MULTIVERSION void a1_row(const T* __restrict in, const T* __restrict W1f, const T* __restrict b1f, int64_t Cm,
                             int64_t w, T slope, T* __restrict out) {
  const int64_t ld = w + 2;
  const T *i0 = in, *i1 = in + w, *i2 = in + 2 * w, *i3 = in + 3 * w, *i4 = in + 4 * w, *i5 = in + 5 * w;
  for (int64_t m = 0; m < Cm; ++m) {
    const T* k = W1f + m * 6;
    const T k0 = k[0], k1 = k[1], k2 = k[2], k3 = k[3], k4 = k[4], k5 = k[5], bias = b1f[m];
    T* __restrict o = out + m * ld;
    o[0] = T(0);
    o[w + 1] = T(0);
    for (int64_t x = 0; x < w; ++x) {
      const T z = bias + k0 * i0[x] + k1 * i1[x] + k2 * i2[x] + k3 * i3[x] + k4 * i4[x] + k5 * i5[x];
      o[x + 1] = z > T(0) ? z : z * slope;
    }
  }
}

// z2 (A x w) = conv3x3(a1 rows y-1, y, y+1) + bias, the generic loop (float64, and float32 where
// conv3x3_row_avx2 in fusion_block_conv3x3.h is not the default). Loop order: input channel m
// outside, pixels inside, so the 9 A weights of channel m are loaded once per row (27 at A = 3,
// more than AVX2's 16 vector registers hold, which is why the AVX2 kernel blocks the other way)
// and each padded a1 row is read once per channel for all A outputs and the three horizontal taps.
template <typename T, int A>
IPF_MULTIVERSION void conv3x3_row(const T* up, const T* mid, const T* down, int64_t Cm, int64_t w,
                                  const T* __restrict W2, const T* __restrict bias, T* __restrict out) {
  const int64_t ld = w + 2;
  for (int a = 0; a < A; ++a)
    for (int64_t x = 0; x < w; ++x) out[a * w + x] = bias[a];
  for (int64_t m = 0; m < Cm; ++m) {
    const T* __restrict r0 = up + m * ld;
    const T* __restrict r1 = mid + m * ld;
    const T* __restrict r2 = down + m * ld;
    T k[A][9];
    for (int a = 0; a < A; ++a)
      for (int t = 0; t < 9; ++t) k[a][t] = W2[(a * Cm + m) * 9 + t];
    IPF_IVDEP
    for (int64_t x = 0; x < w; ++x) {
      const T v0 = r0[x], v1 = r0[x + 1], v2 = r0[x + 2];
      const T v3 = r1[x], v4 = r1[x + 1], v5 = r1[x + 2];
      const T v6 = r2[x], v7 = r2[x + 1], v8 = r2[x + 2];
      for (int a = 0; a < A; ++a) {
        out[a * w + x] += k[a][0] * v0 + k[a][1] * v1 + k[a][2] * v2 + k[a][3] * v3 + k[a][4] * v4 +
                          k[a][5] * v5 + k[a][6] * v6 + k[a][7] * v7 + k[a][8] * v8;
      }
    }
  }
}

// BN2 and the alpha head in double, shared by forward and backward:
// n2 = (z2 - mean2) invstd2, b2 = gamma2 n2 + beta2, a2 = lrelu(b2), alpha = sigmoid(W3 a2 + b3).
struct Head {
  const double *mean2, *invstd2, *gamma2, *beta2, *W3, *b3;
};

// First half of the head for one row: n2, b2, a2 (each A x w, row stride w) and alpha (A x w).
template <typename T, int A>
IPF_INLINE void head_row(const T* __restrict z2, const Head& hd, int64_t w, double* __restrict n2,
                         double* __restrict b2, double* __restrict a2, double* __restrict al) {
  for (int a = 0; a < A; ++a) {
    const double mean = hd.mean2[a], invstd = hd.invstd2[a], gamma = hd.gamma2[a], beta = hd.beta2[a];
    IPF_IVDEP
    for (int64_t x = 0; x < w; ++x) {
      const double n = (static_cast<double>(z2[a * w + x]) - mean) * invstd;
      const double b = gamma * n + beta;
      n2[a * w + x] = n;
      b2[a * w + x] = b;
      a2[a * w + x] = b > 0 ? b : b * kSlope;
    }
  }
  for (int a = 0; a < A; ++a) {
    double k[A];
    for (int q = 0; q < A; ++q) k[q] = hd.W3[a * A + q];
    const double bias = hd.b3[a];
    IPF_IVDEP
    for (int64_t x = 0; x < w; ++x) {
      double z = bias;
      for (int q = 0; q < A; ++q) z += k[q] * a2[q * w + x];
      al[a * w + x] = sigmoid_d(z);
    }
  }
}

// Forward tail of one row: the head, then Y = alpha R + (1 - alpha) Xk; writes alpha, out and raw
// (channel rows cs apart; those of X and R are xs apart). tmp: 4 * A * w doubles.
template <typename T, int A>
IPF_MULTIVERSION void finish_row(const T* __restrict z2, const double* __restrict X, const double* __restrict R,
                                 int64_t xs, const Head& hd, int64_t w, double* __restrict tmp,
                                 T* __restrict alpha, T* __restrict out, T* __restrict raw, int64_t cs) {
  double* al = tmp + 3 * A * w;
  head_row<T, A>(z2, hd, w, tmp, tmp + A * w, tmp + 2 * A * w, al);
  for (int a = 0; a < A; ++a) {
    IPF_IVDEP
    for (int64_t x = 0; x < w; ++x) alpha[a * cs + x] = static_cast<T>(al[a * w + x]);
  }
  for (int ch = 0; ch < 3; ++ch) {
    const double* g = al + (A == 1 ? 0 : ch) * w;
    IPF_IVDEP
    for (int64_t x = 0; x < w; ++x) {
      const double r = R[ch * xs + x];
      out[ch * cs + x] = static_cast<T>(g[x] * r + (1.0 - g[x]) * X[ch * xs + x]);
      raw[ch * cs + x] = static_cast<T>(r);
    }
  }
}

// Backward head of one row: recomputes the head from z2 and propagates the three output gradients
// down to g2 = dL/d(BN2 output) (stored with n2 for the BN2 backward) and to the direct parts of
// dL/dXk and dL/dR; adds the row's sums for dW3, db3, dgamma2, dbeta2 and sum n2
// (acc layout: dW3[A*A], db3[A], sum g2[A], sum g2 n2[A], sum n2[A]). Channel rows are cs apart,
// those of X and R xs apart. tmp: 5 * A * w doubles.
template <typename T, int A>
IPF_MULTIVERSION void head_bwd_row(const T* __restrict z2, const double* __restrict X, const double* __restrict R,
                                   int64_t xs, int64_t cs, const T* __restrict gout, const T* __restrict galpha,
                                   const T* __restrict graw, const Head& hd, int64_t w, double* __restrict tmp,
                                   double* __restrict G2, double* __restrict N2, double* __restrict gX,
                                   double* __restrict dRd, double* __restrict acc) {
  double* n2 = tmp;
  double* b2 = tmp + A * w;
  double* a2 = tmp + 2 * A * w;
  double* al = tmp + 3 * A * w;
  double* dz3 = tmp + 4 * A * w;
  head_row<T, A>(z2, hd, w, n2, b2, a2, al);
  // dalpha = grad_alpha + grad_out (R - Xk) (summed over colours when alpha is shared), then
  // dz3 = dalpha alpha (1 - alpha).
  for (int a = 0; a < A; ++a) {
    IPF_IVDEP
    for (int64_t x = 0; x < w; ++x) dz3[a * w + x] = galpha[a * cs + x];
  }
  for (int ch = 0; ch < 3; ++ch) {
    const int a = A == 1 ? 0 : ch;
    const double* g = al + a * w;
    double* d = dz3 + a * w;
    IPF_IVDEP
    for (int64_t x = 0; x < w; ++x) {
      const double go = gout[ch * cs + x];
      const double r = R[ch * xs + x];
      d[x] += go * (r - X[ch * xs + x]);
      gX[ch * cs + x] = go * (1.0 - g[x]);
      dRd[ch * cs + x] = static_cast<double>(graw[ch * cs + x]) + go * g[x];
    }
  }
  IPF_IVDEP
  for (int64_t i = 0; i < A * w; ++i) dz3[i] *= al[i] * (1.0 - al[i]);
  for (int q = 0; q < A; ++q) {
    double* __restrict g2 = G2 + q * cs;
    double* __restrict nq = N2 + q * cs;
    IPF_IVDEP
    for (int64_t x = 0; x < w; ++x) {
      double da2 = 0;
      for (int a = 0; a < A; ++a) da2 += hd.W3[a * A + q] * dz3[a * w + x];
      g2[x] = b2[q * w + x] > 0 ? da2 : da2 * kSlope;
      nq[x] = n2[q * w + x];
    }
  }
  for (int a = 0; a < A; ++a) {
    acc[A * A + a] += sum_row(dz3 + a * w, w);
    for (int q = 0; q < A; ++q) acc[a * A + q] += dot_row(dz3 + a * w, a2 + q * w, w);
    acc[A * A + A + a] += sum_row(G2 + a * cs, w);
    acc[A * A + 2 * A + a] += dot_row(G2 + a * cs, n2 + a * w, w);
    acc[A * A + 3 * A + a] += sum_row(n2 + a * w, w);
  }
}

// Backward of the 3x3 conv and of lrelu1 for one row y, given padded dz2 rows y-1, y, y+1 and a1
// rows y-1, y, y+1:
//   dW2[a][m][dy][dx] += sum_x dz2[a][y][x] a1[m][y+dy-1][x+dx-1]
//   da1[m][y][x] = sum_{a,dy,dx} W2[a][m][dy][dx] dz2[a][y+1-dy][x+1-dx],  g1 = da1 lrelu'(a1)
// and, for the folded BN1 backward, S1[m] += sum g1, P[m][j] += sum g1 inc_j (inc = in - mu, 6 x w)
// and u[j][x] = sum_m W1D[m][j] g1[m][x] (W1D = W1 scaled by gamma1 invstd1). g: Cm x w scratch,
// holding g1 on entry if g_given.
// Row sums use T lanes; the row totals are added to acc in double.
// acc layout: dW2[A*Cm*9], S1[Cm], P[Cm*6].
template <typename T, int A>
IPF_MULTIVERSION void conv_bwd_row(const T* a_up, const T* a_mid, const T* a_down, const T* d_up, const T* d_mid,
                                   const T* d_down, const T* __restrict inc, const T* __restrict W2,
                                   const T* __restrict W1D, T slope, int64_t Cm, int64_t w, T* __restrict g,
                                   bool g_given, T* __restrict u, double* __restrict acc) {
  const int64_t ld = w + 2;
  double* acc_w2 = acc;
  double* acc_s1 = acc + A * Cm * 9;
  double* acc_p = acc_s1 + Cm;
  const T* arow[3] = {a_up, a_mid, a_down};
  for (int64_t m = 0; m < Cm; ++m) {
    T* __restrict gm = g + m * w;
    // da1 (transposed conv): tap (dy, dx) of output a reads dz2 row y+1-dy, column x+1-dx; skipped
    // when the caller computed g already (conv3x3_bwd_input_avx2).
    if (!g_given) {
      T k[A][9];
      for (int a = 0; a < A; ++a)
        for (int t = 0; t < 9; ++t) k[a][t] = W2[(a * Cm + m) * 9 + t];
      const T* __restrict ac = a_mid + m * ld + 1;
      IPF_IVDEP
      for (int64_t x = 0; x < w; ++x) {
        T s = 0;
        for (int a = 0; a < A; ++a) {
          const T* q0 = d_down + a * ld;
          const T* q1 = d_mid + a * ld;
          const T* q2 = d_up + a * ld;
          s += k[a][0] * q0[x + 2] + k[a][1] * q0[x + 1] + k[a][2] * q0[x] + k[a][3] * q1[x + 2] +
               k[a][4] * q1[x + 1] + k[a][5] * q1[x] + k[a][6] * q2[x + 2] + k[a][7] * q2[x + 1] + k[a][8] * q2[x];
        }
        gm[x] = ac[x] > T(0) ? s : s * slope;
      }
    }
    // dW2: A * 3 dot products per a1 row.
    for (int dy = 0; dy < 3; ++dy) {
      const T* __restrict r = arow[dy] + m * ld;
      T lanes[A][3][kLanes] = {};
      int64_t x = 0;
      for (; x + kLanes <= w; x += kLanes)
        for (int l = 0; l < kLanes; ++l)
          for (int a = 0; a < A; ++a) {
            const T d = d_mid[a * ld + 1 + x + l];
            lanes[a][0][l] += d * r[x + l];
            lanes[a][1][l] += d * r[x + l + 1];
            lanes[a][2][l] += d * r[x + l + 2];
          }
      T tail[A][3] = {};
      for (; x < w; ++x)
        for (int a = 0; a < A; ++a) {
          const T d = d_mid[a * ld + 1 + x];
          tail[a][0] += d * r[x];
          tail[a][1] += d * r[x + 1];
          tail[a][2] += d * r[x + 2];
        }
      for (int a = 0; a < A; ++a)
        for (int dx = 0; dx < 3; ++dx)
          acc_w2[((a * Cm + m) * 3 + dy) * 3 + dx] += static_cast<double>(reduce_lanes(lanes[a][dx]) + tail[a][dx]);
    }
    // BN1 / conv1 sums.
    {
      T lanes[7][kLanes] = {};
      int64_t x = 0;
      for (; x + kLanes <= w; x += kLanes)
        for (int l = 0; l < kLanes; ++l) {
          const T gv = gm[x + l];
          lanes[6][l] += gv;
          for (int j = 0; j < 6; ++j) lanes[j][l] += gv * inc[j * w + x + l];
        }
      T tail[7] = {};
      for (; x < w; ++x) {
        tail[6] += gm[x];
        for (int j = 0; j < 6; ++j) tail[j] += gm[x] * inc[j * w + x];
      }
      acc_s1[m] += static_cast<double>(reduce_lanes(lanes[6]) + tail[6]);
      for (int j = 0; j < 6; ++j) acc_p[m * 6 + j] += static_cast<double>(reduce_lanes(lanes[j]) + tail[j]);
    }
  }
  // u = W1D^T g1 in chunks of kChunk pixels, three inputs at a time, so that the accumulators stay
  // in registers across m (one FMA per channel and input instead of a load-FMA-store on six rows).
  // All six inputs at once need 12 ymm accumulators, 6 broadcasts and the g1 loads: more than the
  // 16 ymm registers of AVX2, and the compiler spilled the accumulators to the stack.
  constexpr int kChunk = 16;
  int64_t x0 = 0;
  for (; x0 + kChunk <= w; x0 += kChunk) {
    for (int j0 = 0; j0 < 6; j0 += 3) {
      T uacc[3][kChunk] = {};
      for (int64_t m = 0; m < Cm; ++m) {
        const T* __restrict gm = g + m * w + x0;
        const T* kd = W1D + m * 6 + j0;
        for (int l = 0; l < kChunk; ++l)
          for (int j = 0; j < 3; ++j) uacc[j][l] += kd[j] * gm[l];
      }
      for (int j = 0; j < 3; ++j)
        for (int l = 0; l < kChunk; ++l) u[(j0 + j) * w + x0 + l] = uacc[j][l];
    }
  }
  for (; x0 < w; ++x0) {
    T uacc[6] = {};
    for (int64_t m = 0; m < Cm; ++m)
      for (int j = 0; j < 6; ++j) uacc[j] += W1D[m * 6 + j] * g[m * w + x0];
    for (int j = 0; j < 6; ++j) u[j * w + x0] = uacc[j];
  }
}

// Backward tail of one row, in double: adds the input-dependent part of dZ = W1^T dz1 (training
// only), applies sigmoid' of R and back-propagates through the map conv:
//   dr = (dRd + dZ[3:6]) R (1 - R),  dF = Wm^T dr,  dWm += dr F^T,  dbm += sum dr.
// Channel rows of X and R are xs apart, those of F, dF, gX and dRd cs apart.
// acc layout: dWm[3*c], dbm[3].
template <typename T>
IPF_MULTIVERSION void tail_bwd_row(const double* __restrict X, const double* __restrict R, int64_t xs, int64_t cs,
                                   const T* __restrict F, int64_t c, const double* __restrict Wm, bool train,
                                   const double* __restrict mu, const double* __restrict K,
                                   const double* __restrict c0, double* __restrict gX, const double* __restrict dRd,
                                   T* __restrict dF, double* __restrict dr, double* __restrict acc, int64_t w) {
  if (train) {
    IPF_IVDEP
    for (int64_t x = 0; x < w; ++x) {
      double in[6], dz[6];
      for (int j = 0; j < 3; ++j) {
        in[j] = X[j * xs + x] - mu[j];
        in[3 + j] = R[j * xs + x] - mu[3 + j];
      }
      for (int i = 0; i < 6; ++i) {
        double v = c0[i];
        for (int j = 0; j < 6; ++j) v += K[i * 6 + j] * in[j];
        dz[i] = v;
      }
      for (int j = 0; j < 3; ++j) {
        gX[j * cs + x] += dz[j];
        const double r = R[j * xs + x];
        dr[j * w + x] = (dRd[j * cs + x] + dz[3 + j]) * r * (1.0 - r);
      }
    }
  } else {
    for (int j = 0; j < 3; ++j) {
      IPF_IVDEP
      for (int64_t x = 0; x < w; ++x) {
        const double r = R[j * xs + x];
        dr[j * w + x] = dRd[j * cs + x] * r * (1.0 - r);
      }
    }
  }
  double* acc_w = acc;
  double* acc_b = acc + 3 * c;
  for (int j = 0; j < 3; ++j) acc_b[j] += sum_row(dr + j * w, w);
  const double* __restrict d0 = dr;
  const double* __restrict d1 = dr + w;
  const double* __restrict d2 = dr + 2 * w;
  for (int64_t k = 0; k < c; ++k) {
    const T* __restrict f = F + k * cs;
    T* __restrict o = dF + k * cs;
    const double w0 = Wm[k], w1 = Wm[c + k], w2 = Wm[2 * c + k];
    double lanes[3][kLanes] = {};
    int64_t x = 0;
    for (; x + kLanes <= w; x += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const double fv = f[x + l];
        const double e0 = d0[x + l], e1 = d1[x + l], e2 = d2[x + l];
        lanes[0][l] += fv * e0;
        lanes[1][l] += fv * e1;
        lanes[2][l] += fv * e2;
        o[x + l] = static_cast<T>(w0 * e0 + w1 * e1 + w2 * e2);
      }
    double tail[3] = {};
    for (; x < w; ++x) {
      const double fv = f[x];
      tail[0] += fv * d0[x];
      tail[1] += fv * d1[x];
      tail[2] += fv * d2[x];
      o[x] = static_cast<T>(w0 * d0[x] + w1 * d1[x] + w2 * d2[x]);
    }
    for (int j = 0; j < 3; ++j) acc_w[j * c + k] += reduce_lanes(lanes[j]) + tail[j];
  }
}

}  // namespace
}  // namespace cpu
}  // namespace inpaint_fast
