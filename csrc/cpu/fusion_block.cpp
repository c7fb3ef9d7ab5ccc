// CPU kernels of DFNet's fusion block: inpaint_fast::fusion_block_fwd / fusion_block_bwd
// (schemas and argument conventions in inpaint_fast/ops/schemas.inc; the math in inpaint_fast/reference).
//
// Per pixel of the (h, w) grid, with in = [Xk, R] the 6 inputs of the blend block:
//   Xk = bilinear(image -> h x w)            R  = sigmoid(Wm F + bm)
//   a1 = lrelu(BN1(W1 in + b1))   (Cm ch)    z2 = conv3x3(a1, W2) + b2   (A ch)
//   a2 = lrelu(BN2(z2))  alpha = sigmoid(W3 a2 + b3)   Y = alpha R + (1 - alpha) Xk
//
// Design:
//  * Rows are grouped into fixed blocks of kRowsPerBlock rows of one image; at::parallel_for hands
//    each thread a contiguous range of blocks. Every reduction (BN statistics, weight gradients) is
//    summed per block, and the blocks are then combined in block order on one thread. The block
//    grid depends only on the shapes, never on the number of threads, so all results are bitwise
//    reproducible from run to run and independent of at::get_num_threads().
//  * The Cm-channel activation a1 is never stored. It costs 6 MACs per channel and pixel, a fifth
//    of the 3x3 convolution that reads it, so each thread recomputes the three a1 rows the stencil
//    needs into a ring buffer; consecutive output rows share two of them, so only the halo row at
//    the start of a thread's range is computed twice.
//  * z1 = W1 in + b1 is affine in the 6 inputs, so BN1's batch statistics follow from the 6x6
//    covariance of `in` (mean W1 mu + b1, variance w_m^T C w_m / M) without a pass over Cm channels.
//    The same linearity folds BN1's training backward through conv1: dz1 is affine in (g1, in), so
//    W1^T dz1 = u + K (in - mu) + c0 with a per-pixel u = W1^T (D g1) that the convolution pass
//    produces, and the 6x6 K and c0 known once sum(g1) and sum(g1 (in - mu)) are reduced. Neither
//    a1 nor its gradient ever needs a Cm x B x h x w buffer.
//  * Precision. The Cm-channel work (a1, the 3x3 conv and its backward) runs in the input's type.
//    The few-channel work (Xk, R, BN2 .. alpha, the blend, their gradients) is a small share of the
//    cost and runs in double whatever the input type: float rounding there feeds straight into the
//    small reductions (BN2, conv2/conv3 bias, map bias) and made them no more accurate than
//    PyTorch's own float path. All reductions end in double. In training the forward normalises
//    with the statistics rounded to the dtype it returns them in, so the backward, which receives
//    those, recomputes exactly the forward's activations.
//  * Inner loops run along a row (x) over planar buffers so that they vectorise; reductions along a
//    row use kLanes independent partial sums (a vectorisable, fixed-order sum). The hot row kernels
//    are compiled for x86-64-v4, -v3 and the baseline and picked once at load time (GCC
//    target_clones), because the extension is built without -march flags. exp is a branch-free
//    polynomial (exp_d) so that the sigmoid loops vectorise too. These vector helpers are in
//    csrc/cpu/simd.h.
//  * float32 and float64 run in their own type; bfloat16 inputs are converted to float32 once and
//    the outputs converted back (accumulate_dtype, csrc/dtypes.h).
//  * The entry points gather the 16 parameter tensors into a FusionBlockParams and check them with
//    the structural checks shared with the CUDA kernels (csrc/fusion_block_params.h). The forward and the
//    backward each run as one function per pass over the rows.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "../dtypes.h"
#include "../fusion_block_params.h"
#include "common.h"
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

// One row of Xk (resized image) and R = sigmoid(Wm F + bm), 3 channels each, in double.
template <typename T>
IPF_MULTIVERSION void xr_row(const T* __restrict img, int64_t H, int64_t W, bool identity, int64_t iy0,
                             int64_t iy1, double ly0, double ly1, const int64_t* __restrict ix0,
                             const int64_t* __restrict ix1, const double* __restrict lx0,
                             const double* __restrict lx1, const T* __restrict F, int64_t c,
                             const double* __restrict Wm, const double* __restrict bm, int64_t w, int64_t cs,
                             double* __restrict X, double* __restrict R) {
  for (int64_t ch = 0; ch < 3; ++ch) {
    double* __restrict xo = X + ch * cs;
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
  // The 1x1 map conv: one pass over each feature row, three accumulating output rows.
  double* __restrict o0 = R;
  double* __restrict o1 = R + cs;
  double* __restrict o2 = R + 2 * cs;
  IPF_IVDEP
  for (int64_t x = 0; x < w; ++x) {
    o0[x] = bm[0];
    o1[x] = bm[1];
    o2[x] = bm[2];
  }
  for (int64_t k = 0; k < c; ++k) {
    const T* __restrict f = F + k * cs;
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
    double* __restrict o = R + j * cs;
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

// z2 (A x w) = conv3x3(a1 rows y-1, y, y+1) + bias. Loop order: input channel m outside, pixels
// inside, so the 9 A weights of channel m stay in registers for the whole row and each padded a1
// row is read once per channel for all A outputs and the three horizontal taps. (Keeping the
// outputs in registers across m instead costs a weight broadcast per FMA and was slower.)
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

// Forward tail of one row: the head, then Y = alpha R + (1 - alpha) Xk; writes alpha, out and raw.
// tmp: 4 * A * w doubles.
template <typename T, int A>
IPF_MULTIVERSION void finish_row(const T* __restrict z2, const double* __restrict X, const double* __restrict R,
                                 int64_t cs, const Head& hd, int64_t w, double* __restrict tmp,
                                 T* __restrict alpha, T* __restrict out, T* __restrict raw) {
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
      const double r = R[ch * cs + x];
      out[ch * cs + x] = static_cast<T>(g[x] * r + (1.0 - g[x]) * X[ch * cs + x]);
      raw[ch * cs + x] = static_cast<T>(r);
    }
  }
}

// Backward head of one row: recomputes the head from z2 and propagates the three output gradients
// down to g2 = dL/d(BN2 output) (stored with n2 for the BN2 backward) and to the direct parts of
// dL/dXk and dL/dR; adds the row's sums for dW3, db3, dgamma2, dbeta2 and sum n2
// (acc layout: dW3[A*A], db3[A], sum g2[A], sum g2 n2[A], sum n2[A]). tmp: 5 * A * w doubles.
template <typename T, int A>
IPF_MULTIVERSION void head_bwd_row(const T* __restrict z2, const double* __restrict X, const double* __restrict R,
                                   int64_t cs, const T* __restrict gout, const T* __restrict galpha,
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
      const double r = R[ch * cs + x];
      d[x] += go * (r - X[ch * cs + x]);
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
// and u[j][x] = sum_m W1D[m][j] g1[m][x] (W1D = W1 scaled by gamma1 invstd1). g: Cm x w scratch.
// Row sums use T lanes; the row totals are added to acc in double.
// acc layout: dW2[A*Cm*9], S1[Cm], P[Cm*6].
template <typename T, int A>
IPF_MULTIVERSION void conv_bwd_row(const T* a_up, const T* a_mid, const T* a_down, const T* d_up, const T* d_mid,
                                   const T* d_down, const T* __restrict inc, const T* __restrict W2,
                                   const T* __restrict W1D, T slope, int64_t Cm, int64_t w, T* __restrict g,
                                   T* __restrict u, double* __restrict acc) {
  const int64_t ld = w + 2;
  double* acc_w2 = acc;
  double* acc_s1 = acc + A * Cm * 9;
  double* acc_p = acc_s1 + Cm;
  const T* arow[3] = {a_up, a_mid, a_down};
  for (int64_t m = 0; m < Cm; ++m) {
    T* __restrict gm = g + m * w;
    // da1 (transposed conv): tap (dy, dx) of output a reads dz2 row y+1-dy, column x+1-dx.
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
  // u = W1D^T g1 in chunks of kChunk pixels, so that the six accumulators stay in registers across
  // m (one FMA per channel and input instead of a load-FMA-store on six rows).
  constexpr int kChunk = 16;
  int64_t x0 = 0;
  for (; x0 + kChunk <= w; x0 += kChunk) {
    T uacc[6][kChunk] = {};
    for (int64_t m = 0; m < Cm; ++m) {
      const T* __restrict gm = g + m * w + x0;
      const T* kd = W1D + m * 6;
      for (int l = 0; l < kChunk; ++l)
        for (int j = 0; j < 6; ++j) uacc[j][l] += kd[j] * gm[l];
    }
    for (int j = 0; j < 6; ++j)
      for (int l = 0; l < kChunk; ++l) u[j * w + x0 + l] = uacc[j][l];
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
// acc layout: dWm[3*c], dbm[3].
template <typename T>
IPF_MULTIVERSION void tail_bwd_row(const double* __restrict X, const double* __restrict R, int64_t cs,
                                   const T* __restrict F, int64_t c, const double* __restrict Wm, bool train,
                                   const double* __restrict mu, const double* __restrict K,
                                   const double* __restrict c0, double* __restrict gX, const double* __restrict dRd,
                                   T* __restrict dF, double* __restrict dr, double* __restrict acc, int64_t w) {
  if (train) {
    IPF_IVDEP
    for (int64_t x = 0; x < w; ++x) {
      double in[6], dz[6];
      for (int j = 0; j < 3; ++j) {
        in[j] = X[j * cs + x] - mu[j];
        in[3 + j] = R[j * cs + x] - mu[3 + j];
      }
      for (int i = 0; i < 6; ++i) {
        double v = c0[i];
        for (int j = 0; j < 6; ++j) v += K[i * 6 + j] * in[j];
        dz[i] = v;
      }
      for (int j = 0; j < 3; ++j) {
        gX[j * cs + x] += dz[j];
        const double r = R[j * cs + x];
        dr[j * w + x] = (dRd[j * cs + x] + dz[3 + j]) * r * (1.0 - r);
      }
    }
  } else {
    for (int j = 0; j < 3; ++j) {
      IPF_IVDEP
      for (int64_t x = 0; x < w; ++x) {
        const double r = R[j * cs + x];
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

// ---- shared passes -----------------------------------------------------------------------------

std::vector<double> host_vec(const at::Tensor& t) {
  const at::Tensor d = t.detach().to(at::kDouble).contiguous();
  const double* p = d.data_ptr<double>();
  return std::vector<double>(p, p + d.numel());
}

// All parameters and the statistics to normalise with, as double host vectors (they are tiny).
struct HostParams {
  std::vector<double> Wm, bm, W1, b1, g1, be1, mean1, var1, W2, b2, g2, be2, mean2, var2, W3, b3;
};

HostParams host_params(const FusionBlockParams& t) {
  HostParams p;
  p.Wm = host_vec(t.map_weight);
  p.bm = host_vec(t.map_bias);
  p.W1 = host_vec(t.conv1_weight);
  p.b1 = host_vec(t.conv1_bias);
  p.g1 = host_vec(t.bn1_weight);
  p.be1 = host_vec(t.bn1_bias);
  p.mean1 = host_vec(t.bn1_mean);
  p.var1 = host_vec(t.bn1_var);
  p.W2 = host_vec(t.conv2_weight);
  p.b2 = host_vec(t.conv2_bias);
  p.g2 = host_vec(t.bn2_weight);
  p.be2 = host_vec(t.bn2_bias);
  p.mean2 = host_vec(t.bn2_mean);
  p.var2 = host_vec(t.bn2_var);
  p.W3 = host_vec(t.conv3_weight);
  p.b3 = host_vec(t.conv3_bias);
  return p;
}

// Fills X (resized image) and R (raw), both (B, 3, h, w) double, and, if `moments` is non-null,
// the per-block moments of the 6 channels [X, R].
template <typename T>
void compute_xr(const Shape& s, const T* img, const T* F, const HostParams& p, double* X, double* R,
                double* moments) {
  const bool identity = s.H == s.h && s.W == s.w;
  const LinearTable ty = linear_table(s.H, s.h);
  const LinearTable tx = linear_table(s.W, s.w);
  parallel_blocks(s, [&](int64_t b0, int64_t b1) {
    std::vector<double> tmp(moments ? 6 * s.w : 0);
    for_rows(s, b0, b1, [&](int64_t blk, int64_t b, int64_t y) {
      const int64_t o3 = row_offset(s, 3, b, y);
      xr_row<T>(img + b * 3 * s.H * s.W, s.H, s.W, identity, ty.i0[y], ty.i1[y], ty.l0[y], ty.l1[y], tx.i0.data(),
                tx.i1.data(), tx.l0.data(), tx.l1.data(), F + row_offset(s, s.c, b, y), s.c, p.Wm.data(),
                p.bm.data(), s.w, s.hw, X + o3, R + o3);
      if (moments) {
        const double* rows[6] = {X + o3, X + o3 + s.hw, X + o3 + 2 * s.hw, R + o3, R + o3 + s.hw, R + o3 + 2 * s.hw};
        row_moments<double>(rows, 6, s.w, tmp.data(), moments + blk * moments_size(6));
      }
    });
  });
}

// a1 rows on demand: BN1 folded into conv1 (W1f = s1 W1, b1f = s1 (b1 - mean1) + beta1 with
// s1 = gamma1 / sqrt(var1 + eps)), from the double X and R rounded to T.
template <typename T>
class A1Rows {
 public:
  A1Rows(const Shape& s, const HostParams& p, double eps, const double* X, const double* R) : s_(s), X_(X), R_(R) {
    W1f_.resize(s.Cm * 6);
    b1f_.resize(s.Cm);
    for (int64_t m = 0; m < s.Cm; ++m) {
      const double s1 = p.g1[m] / std::sqrt(p.var1[m] + eps);
      for (int j = 0; j < 6; ++j) W1f_[m * 6 + j] = static_cast<T>(s1 * p.W1[m * 6 + j]);
      b1f_[m] = static_cast<T>(s1 * (p.b1[m] - p.mean1[m]) + p.be1[m]);
    }
  }

  // Writes a1 row (b, y) into dst (Cm x (w + 2)); `in` is a 6 x w scratch row.
  void fill(T* dst, int64_t b, int64_t y, T* in) const {
    const int64_t o3 = row_offset(s_, 3, b, y);
    for (int j = 0; j < 3; ++j)
      for (int64_t x = 0; x < s_.w; ++x) {
        in[j * s_.w + x] = static_cast<T>(X_[o3 + j * s_.hw + x]);
        in[(3 + j) * s_.w + x] = static_cast<T>(R_[o3 + j * s_.hw + x]);
      }
    a1_row<T>(in, W1f_.data(), b1f_.data(), s_.Cm, s_.w, static_cast<T>(kSlope), dst);
  }

 private:
  const Shape& s_;
  const double* X_;
  const double* R_;
  std::vector<T> W1f_, b1f_;
};

// z2 = conv3x3(a1) + b2 row by row, for the rows of one thread's range in order: the a1 rows
// y-1, y, y+1 the stencil reads are kept in a ring (see the design notes), so consecutive rows
// compute one new a1 row each. One per thread; W2 and b2 are the raw conv2 weights in T.
template <typename T, int A>
class Z2Rows {
 public:
  Z2Rows(const Shape& s, const A1Rows<T>& a1rows, const T* W2, const T* b2)
      : s_(s), a1rows_(a1rows), W2_(W2), b2_(b2), ring_(s.Cm * s.ld, s.h), z2_(A * s.w), in_(6 * s.w) {}

  // z2 of row (b, y): A x w, valid until the next call.
  const T* row(int64_t b, int64_t y) {
    auto fill = [&](T* dst, int64_t fb, int64_t fy) { a1rows_.fill(dst, fb, fy, in_.data()); };
    const T* up = ring_.get(b, y - 1, fill);
    const T* mid = ring_.get(b, y, fill);
    const T* down = ring_.get(b, y + 1, fill);
    conv3x3_row<T, A>(up, mid, down, s_.Cm, s_.w, W2_, b2_, z2_.data());
    return z2_.data();
  }

 private:
  const Shape& s_;
  const A1Rows<T>& a1rows_;
  const T* W2_;
  const T* b2_;
  RowRing<T> ring_;
  std::vector<T> z2_, in_;
};

inline double round_to(double v, at::ScalarType st) {
  return st == at::kFloat ? static_cast<double>(static_cast<float>(v)) : v;
}

// invstd2 = 1 / sqrt(var2 + eps) per BN2 channel, written in place (a Head points at it).
void set_bn2_invstd(const HostParams& p, double eps, std::vector<double>& invstd2) {
  for (size_t a = 0; a < invstd2.size(); ++a) invstd2[a] = 1.0 / std::sqrt(p.var2[a] + eps);
}

// ---- forward -----------------------------------------------------------------------------------

// The forward's per-pixel buffers and outputs.
template <typename T>
struct FwdBuffers {
  const T* F;    // feat
  const T* img;  // image
  double* X;     // Xk, (B, 3, h, w)
  double* R;     // R, (B, 3, h, w)
  T* Y;          // out
  T* AL;         // alpha
  T* RAW;        // raw
};

// BN1's batch statistics from the moments of in = [Xk, R] (mean W1 mu + b1, variance
// w_m^T C w_m / M), into p.mean1 / p.var1.
void bn1_batch_stats(const Shape& s, const std::vector<double>& in_blocks, at::ScalarType stat_type, HostParams& p) {
  const std::vector<double> mom = reduce_moments(in_blocks, s.num_blocks, 6);
  const double* mu = mom.data() + 1;
  const double* C = mom.data() + 7;
  for (int64_t m = 0; m < s.Cm; ++m) {
    const double* wm = p.W1.data() + m * 6;
    double mean = p.b1[m], var = 0;
    for (int i = 0; i < 6; ++i) {
      mean += wm[i] * mu[i];
      for (int j = 0; j < 6; ++j) var += wm[i] * C[i * 6 + j] * wm[j];
    }
    // Normalise with exactly what is returned, so that the backward recomputes the same a1.
    p.mean1[m] = round_to(mean, stat_type);
    p.var1[m] = round_to(std::max(var / static_cast<double>(s.M), 0.0), stat_type);  // biased
  }
}

// Pass 2: a1 (recomputed in a ring) -> z2. Eval finishes each row right away (hd holds the running
// statistics); training stores z2 into Z2 and its per-block moments into z_blocks, since BN2 needs
// the statistics of the whole batch first.
template <typename T, int A>
void forward_z2_pass(const Shape& s, const A1Rows<T>& a1rows, const std::vector<T>& W2, const std::vector<T>& b2,
                     const Head& hd, bool training, const FwdBuffers<T>& io, T* Z2, std::vector<double>& z_blocks) {
  parallel_blocks(s, [&](int64_t blk0, int64_t blk1) {
    Z2Rows<T, A> z2rows(s, a1rows, W2.data(), b2.data());
    std::vector<double> tmp(4 * A * s.w);
    for_rows(s, blk0, blk1, [&](int64_t blk, int64_t b, int64_t y) {
      const T* z2row = z2rows.row(b, y);
      const int64_t o3 = row_offset(s, 3, b, y);
      const int64_t oa = row_offset(s, A, b, y);
      if (training) {
        const T* rows[A];
        for (int a = 0; a < A; ++a) {
          std::copy(z2row + a * s.w, z2row + (a + 1) * s.w, Z2 + oa + a * s.hw);
          rows[a] = z2row + a * s.w;
        }
        row_moments<T>(rows, A, s.w, tmp.data(), z_blocks.data() + blk * moments_size(A));
      } else {
        finish_row<T, A>(z2row, io.X + o3, io.R + o3, s.hw, hd, s.w, tmp.data(), io.AL + oa, io.Y + o3, io.RAW + o3);
      }
    });
  });
}

// Pass 3 (training): the head and the blend of every row from the stored z2, with BN2's batch
// statistics in hd.
template <typename T, int A>
void forward_finish_pass(const Shape& s, const Head& hd, const T* Z2, const FwdBuffers<T>& io) {
  parallel_blocks(s, [&](int64_t blk0, int64_t blk1) {
    std::vector<T> z2row(A * s.w);
    std::vector<double> tmp(4 * A * s.w);
    for_rows(s, blk0, blk1, [&](int64_t, int64_t b, int64_t y) {
      const int64_t o3 = row_offset(s, 3, b, y);
      const int64_t oa = row_offset(s, A, b, y);
      for (int a = 0; a < A; ++a)
        std::copy(Z2 + oa + a * s.hw, Z2 + oa + a * s.hw + s.w, z2row.data() + a * s.w);
      finish_row<T, A>(z2row.data(), io.X + o3, io.R + o3, s.hw, hd, s.w, tmp.data(), io.AL + oa, io.Y + o3,
                       io.RAW + o3);
    });
  });
}

template <typename T, int A>
void forward_typed(const Shape& s, const at::Tensor& feat, const at::Tensor& image, HostParams& p, bool training,
                   double eps, at::ScalarType stat_type, at::Tensor& out, at::Tensor& alpha, at::Tensor& raw) {
  const auto opt_d = feat.options().dtype(at::kDouble);
  at::Tensor xbuf = at::empty({s.B, 3, s.h, s.w}, opt_d), rbuf = at::empty({s.B, 3, s.h, s.w}, opt_d);
  const FwdBuffers<T> io{feat.data_ptr<T>(),    image.data_ptr<T>(),   xbuf.data_ptr<double>(), rbuf.data_ptr<double>(),
                         out.data_ptr<T>(), alpha.data_ptr<T>(), raw.data_ptr<T>()};
  const std::vector<T> W2 = cast_vec<T>(p.W2), b2 = cast_vec<T>(p.b2);

  // Pass 1: Xk and R (and, in training, the moments of [Xk, R] that give BN1's batch statistics).
  std::vector<double> in_blocks(training ? s.num_blocks * moments_size(6) : 0, 0.0);
  compute_xr<T>(s, io.img, io.F, p, io.X, io.R, training ? in_blocks.data() : nullptr);
  if (training) bn1_batch_stats(s, in_blocks, stat_type, p);
  const A1Rows<T> a1rows(s, p, eps, io.X, io.R);

  std::vector<double> invstd2(A);
  const Head hd{p.mean2.data(), invstd2.data(), p.g2.data(), p.be2.data(), p.W3.data(), p.b3.data()};
  if (!training) set_bn2_invstd(p, eps, invstd2);

  // Pass 2: z2 (eval: and the rest of each row).
  at::Tensor z2buf = training ? at::empty({s.B, A, s.h, s.w}, feat.options()) : at::Tensor();
  T* Z2 = training ? z2buf.data_ptr<T>() : nullptr;
  std::vector<double> z_blocks(training ? s.num_blocks * moments_size(A) : 0, 0.0);
  forward_z2_pass<T, A>(s, a1rows, W2, b2, hd, training, io, Z2, z_blocks);
  if (!training) return;

  // Pass 3 (training): BN2 with the batch statistics, then the rest of each row.
  const std::vector<double> zm = reduce_moments(z_blocks, s.num_blocks, A);
  for (int a = 0; a < A; ++a) {
    p.mean2[a] = round_to(zm[1 + a], stat_type);
    p.var2[a] = round_to(std::max(zm[1 + A + a * A + a] / static_cast<double>(s.M), 0.0), stat_type);
  }
  set_bn2_invstd(p, eps, invstd2);
  forward_finish_pass<T, A>(s, hd, Z2, io);
}

// ---- backward ----------------------------------------------------------------------------------

struct Grads {
  std::vector<double> Wm, bm, W1, b1, g1, be1, W2, b2, g2, be2, W3, b3;
};

// The backward's inputs and per-pixel buffers. The buffers are double and at most 3 channels:
// X, R, dL/dR so far (dRd), g2 = dL/d(BN2 output) and n2 (the BN2 backward's inputs); gX, the
// dL/dXk being accumulated, is the output gxk (double too); dF is the output grad_feat.
template <typename T>
struct BwdBuffers {
  const T *F, *img, *gout, *galpha, *graw;
  double *X, *R, *dRd, *G2, *N2, *gX;
  T* dF;
};

// The moments of in = [Xk, R] over the batch: mean mu and co-moment sum C = sum (in - mu)(in - mu)^T.
struct InMoments {
  std::vector<double> mom;
  const double* mu() const { return mom.data() + 1; }
  const double* C() const { return mom.data() + 7; }
};

// The BN2 backward as dz2 = cA g2 + cB n2 + cC per channel (training: dz = gamma invstd (g - mean g
// - n mean(g n)); eval: cB = cC = 0).
struct Bn2Bwd {
  std::vector<double> cA, cB, cC;
};

// Pass 2: recompute a1 -> z2 -> alpha and propagate down to g2 (dL/d BN2 output), with the direct
// parts of dL/dXk and dL/dR; the head's gradients (W3, b3, BN2's gamma and beta, b2) from its sums.
template <typename T, int A>
Bn2Bwd backward_head_pass(const Shape& s, const HostParams& p, const A1Rows<T>& a1rows, const std::vector<T>& W2,
                          const std::vector<T>& b2, bool training, double eps, const BwdBuffers<T>& io, Grads& gr) {
  const double M = static_cast<double>(s.M);
  std::vector<double> invstd2(A);
  set_bn2_invstd(p, eps, invstd2);
  const Head hd{p.mean2.data(), invstd2.data(), p.g2.data(), p.be2.data(), p.W3.data(), p.b3.data()};
  const int64_t k_head = A * A + 4 * A;
  std::vector<double> head_blocks(s.num_blocks * k_head, 0.0);
  parallel_blocks(s, [&](int64_t blk0, int64_t blk1) {
    Z2Rows<T, A> z2rows(s, a1rows, W2.data(), b2.data());
    std::vector<double> tmp(5 * A * s.w);
    for_rows(s, blk0, blk1, [&](int64_t blk, int64_t b, int64_t y) {
      const T* z2row = z2rows.row(b, y);
      const int64_t o3 = row_offset(s, 3, b, y);
      const int64_t oa = row_offset(s, A, b, y);
      head_bwd_row<T, A>(z2row, io.X + o3, io.R + o3, s.hw, io.gout + o3, io.galpha + oa, io.graw + o3, hd, s.w,
                         tmp.data(), io.G2 + oa, io.N2 + oa, io.gX + o3, io.dRd + o3,
                         head_blocks.data() + blk * k_head);
    });
  });
  const std::vector<double> head = reduce_blocks(head_blocks, s.num_blocks, k_head);
  gr.W3.assign(head.begin(), head.begin() + A * A);
  gr.b3.assign(head.begin() + A * A, head.begin() + A * A + A);
  gr.be2.assign(head.begin() + A * A + A, head.begin() + A * A + 2 * A);
  gr.g2.assign(head.begin() + A * A + 2 * A, head.begin() + A * A + 3 * A);
  const double* sum_n2 = head.data() + A * A + 3 * A;
  // db2 = sum dz2 follows from the head's sums.
  Bn2Bwd bn2{std::vector<double>(A), std::vector<double>(A), std::vector<double>(A)};
  gr.b2.assign(A, 0.0);
  for (int a = 0; a < A; ++a) {
    bn2.cA[a] = p.g2[a] * invstd2[a];
    bn2.cB[a] = training ? -bn2.cA[a] * gr.g2[a] / M : 0.0;
    bn2.cC[a] = training ? -bn2.cA[a] * gr.be2[a] / M : 0.0;
    gr.b2[a] = bn2.cA[a] * gr.be2[a] + bn2.cB[a] * sum_n2[a] + bn2.cC[a] * M;
  }
  return bn2;
}

// gamma1 invstd1 per BN1 channel (D in the BN1 backward).
std::vector<double> bn1_scale(const HostParams& p, int64_t Cm, double eps) {
  std::vector<double> D(Cm);
  for (int64_t m = 0; m < Cm; ++m) D[m] = p.g1[m] / std::sqrt(p.var1[m] + eps);
  return D;
}

// Pass 3: dz2 rows and a1 rows (rings) -> dW2 (into gr.W2), g1 and the folded BN1 / conv1 sums;
// the per-pixel u = W1^T D g1 goes straight into the Xk and R gradients. Returns the sums
// S1 = sum g1 (Cm) followed by P = sum g1 (in - mu)^T (Cm x 6).
template <typename T, int A>
std::vector<double> backward_conv_pass(const Shape& s, const HostParams& p, const A1Rows<T>& a1rows,
                                       const std::vector<T>& W2, const std::vector<double>& D, const Bn2Bwd& bn2,
                                       const double* mu, const BwdBuffers<T>& io, Grads& gr) {
  const T slope = static_cast<T>(kSlope);
  const int64_t Cm = s.Cm;
  std::vector<T> W1D(Cm * 6);
  for (int64_t m = 0; m < Cm; ++m)
    for (int j = 0; j < 6; ++j) W1D[m * 6 + j] = static_cast<T>(p.W1[m * 6 + j] * D[m]);
  const int64_t k_conv = A * Cm * 9 + Cm + Cm * 6;
  std::vector<double> conv_blocks(s.num_blocks * k_conv, 0.0);
  parallel_blocks(s, [&](int64_t blk0, int64_t blk1) {
    RowRing<T> aring(Cm * s.ld, s.h), dring(A * s.ld, s.h);
    std::vector<T> in(6 * s.w), inc(6 * s.w), g(Cm * s.w), u(6 * s.w);
    auto fill_a = [&](T* dst, int64_t b, int64_t y) { a1rows.fill(dst, b, y, in.data()); };
    auto fill_d = [&](T* dst, int64_t b, int64_t y) {
      const int64_t oa = row_offset(s, A, b, y);
      for (int a = 0; a < A; ++a) {
        const double* g2 = io.G2 + oa + a * s.hw;
        const double* n2 = io.N2 + oa + a * s.hw;
        T* d = dst + a * s.ld;
        d[0] = T(0);
        d[s.w + 1] = T(0);
        for (int64_t x = 0; x < s.w; ++x) d[x + 1] = static_cast<T>(bn2.cA[a] * g2[x] + bn2.cB[a] * n2[x] + bn2.cC[a]);
      }
    };
    for_rows(s, blk0, blk1, [&](int64_t blk, int64_t b, int64_t y) {
      const T* a_up = aring.get(b, y - 1, fill_a);
      const T* a_mid = aring.get(b, y, fill_a);
      const T* a_down = aring.get(b, y + 1, fill_a);
      const T* d_up = dring.get(b, y - 1, fill_d);
      const T* d_mid = dring.get(b, y, fill_d);
      const T* d_down = dring.get(b, y + 1, fill_d);
      const int64_t o3 = row_offset(s, 3, b, y);
      for (int j = 0; j < 3; ++j)
        for (int64_t x = 0; x < s.w; ++x) {
          inc[j * s.w + x] = static_cast<T>(io.X[o3 + j * s.hw + x] - mu[j]);
          inc[(3 + j) * s.w + x] = static_cast<T>(io.R[o3 + j * s.hw + x] - mu[3 + j]);
        }
      conv_bwd_row<T, A>(a_up, a_mid, a_down, d_up, d_mid, d_down, inc.data(), W2.data(), W1D.data(), slope, Cm, s.w,
                         g.data(), u.data(), conv_blocks.data() + blk * k_conv);
      for (int j = 0; j < 3; ++j) {
        double* gx = io.gX + o3 + j * s.hw;
        double* dr = io.dRd + o3 + j * s.hw;
        for (int64_t x = 0; x < s.w; ++x) {
          gx[x] += static_cast<double>(u[j * s.w + x]);
          dr[x] += static_cast<double>(u[(3 + j) * s.w + x]);
        }
      }
    });
  });
  const std::vector<double> conv = reduce_blocks(conv_blocks, s.num_blocks, k_conv);
  gr.W2.assign(conv.begin(), conv.begin() + A * Cm * 9);
  return std::vector<double>(conv.begin() + A * Cm * 9, conv.end());
}

// The input-dependent part of dZ = W1^T dz1 = u + K (in - mu) + c0 (zero in eval).
struct Conv1InputGrad {
  std::vector<double> K, c0;  // 6 x 6, 6
};

// BN1 + conv1 backward from the sums of pass 3 (S1 = sum g1, P = sum g1 (in - mu)^T) into
// gr.g1, be1, W1, b1. With in' = in - mu, d = W1 mu + b1 - mean1 (so that z1 - mean1 = W1 in' + d),
// n1 = invstd1 (z1 - mean1), D = gamma1 invstd1 and, in training, E = D invstd1 S2 / M:
//   dz1 = D g1 [- D S1 / M - E (W1 in' + d)]           (bracket: training only)
//   dgamma1 = S2 = sum g1 n1 = invstd1 (W1 . P + d S1),  dbeta1 = S1
//   dW1 = sum dz1 in^T,  db1 = sum dz1,  dZ = W1^T dz1 = u + K in' + c0,
// using sum in' = 0 and sum in' in'^T = C.
Conv1InputGrad bn1_conv1_backward(const Shape& s, const HostParams& p, bool training, double eps,
                                  const InMoments& in, const std::vector<double>& D, const std::vector<double>& sums,
                                  Grads& gr) {
  const int64_t Cm = s.Cm;
  const double M = static_cast<double>(s.M);
  const double* mu = in.mu();
  const double* C = in.C();
  const double* S1 = sums.data();
  const double* P = S1 + Cm;
  gr.g1.assign(Cm, 0.0);
  gr.be1.assign(S1, S1 + Cm);
  gr.W1.assign(Cm * 6, 0.0);
  gr.b1.assign(Cm, 0.0);
  Conv1InputGrad dz{std::vector<double>(36, 0.0), std::vector<double>(6, 0.0)};
  double* K = dz.K.data();
  double* c0 = dz.c0.data();
  for (int64_t m = 0; m < Cm; ++m) {
    const double* wm = p.W1.data() + m * 6;
    const double invstd = 1.0 / std::sqrt(p.var1[m] + eps);
    double d = p.b1[m] - p.mean1[m], wp = 0;
    for (int j = 0; j < 6; ++j) {
      d += wm[j] * mu[j];
      wp += wm[j] * P[m * 6 + j];
    }
    const double S2 = invstd * (wp + d * S1[m]);
    gr.g1[m] = S2;
    if (training) {
      const double E = D[m] * invstd * S2 / M;
      for (int j = 0; j < 6; ++j) {
        double wc = 0;  // (W1 C)[m][j]
        for (int i = 0; i < 6; ++i) wc += wm[i] * C[i * 6 + j];
        gr.W1[m * 6 + j] = D[m] * P[m * 6 + j] - E * (wc + M * d * mu[j]);
      }
      gr.b1[m] = -E * M * d;
      for (int i = 0; i < 6; ++i) {
        c0[i] -= wm[i] * (D[m] * S1[m] / M + E * d);
        for (int j = 0; j < 6; ++j) K[i * 6 + j] -= wm[i] * E * wm[j];
      }
    } else {
      for (int j = 0; j < 6; ++j) gr.W1[m * 6 + j] = D[m] * (P[m * 6 + j] + S1[m] * mu[j]);
      gr.b1[m] = D[m] * S1[m];
    }
  }
  return dz;
}

// Pass 4: the rest of dXk and dR, then the map conv (dF, and dWm, dbm into gr).
template <typename T>
void backward_tail_pass(const Shape& s, const HostParams& p, bool training, const double* mu,
                        const Conv1InputGrad& dz, const BwdBuffers<T>& io, Grads& gr) {
  const int64_t k_tail = 3 * s.c + 3;
  std::vector<double> tail_blocks(s.num_blocks * k_tail, 0.0);
  parallel_blocks(s, [&](int64_t blk0, int64_t blk1) {
    std::vector<double> dr(3 * s.w);
    for_rows(s, blk0, blk1, [&](int64_t blk, int64_t b, int64_t y) {
      const int64_t o3 = row_offset(s, 3, b, y);
      const int64_t oc = row_offset(s, s.c, b, y);
      tail_bwd_row<T>(io.X + o3, io.R + o3, s.hw, io.F + oc, s.c, p.Wm.data(), training, mu, dz.K.data(),
                      dz.c0.data(), io.gX + o3, io.dRd + o3, io.dF + oc, dr.data(), tail_blocks.data() + blk * k_tail,
                      s.w);
    });
  });
  const std::vector<double> tail = reduce_blocks(tail_blocks, s.num_blocks, k_tail);
  gr.Wm.assign(tail.begin(), tail.begin() + 3 * s.c);
  gr.bm.assign(tail.begin() + 3 * s.c, tail.end());
}

template <typename T, int A>
void backward_typed(const Shape& s, const at::Tensor& gout, const at::Tensor& galpha, const at::Tensor& graw,
                    const at::Tensor& feat, const at::Tensor& image, const HostParams& p, bool training, double eps,
                    at::Tensor& gfeat, at::Tensor& gxk, Grads& gr) {
  const auto opt_d = feat.options().dtype(at::kDouble);
  at::Tensor xbuf = at::empty({s.B, 3, s.h, s.w}, opt_d), rbuf = at::empty({s.B, 3, s.h, s.w}, opt_d);
  at::Tensor drbuf = at::empty({s.B, 3, s.h, s.w}, opt_d);
  at::Tensor g2buf = at::empty({s.B, A, s.h, s.w}, opt_d), n2buf = at::empty({s.B, A, s.h, s.w}, opt_d);
  const BwdBuffers<T> io{feat.data_ptr<T>(),      image.data_ptr<T>(),     gout.data_ptr<T>(),
                         galpha.data_ptr<T>(),    graw.data_ptr<T>(),      xbuf.data_ptr<double>(),
                         rbuf.data_ptr<double>(), drbuf.data_ptr<double>(), g2buf.data_ptr<double>(),
                         n2buf.data_ptr<double>(), gxk.data_ptr<double>(), gfeat.data_ptr<T>()};
  const std::vector<T> W2 = cast_vec<T>(p.W2), b2 = cast_vec<T>(p.b2);

  // Pass 1: recompute Xk and R, with the mean and covariance of in = [Xk, R] (the BN1 backward is
  // expressed through them, see conv_bwd_row).
  std::vector<double> in_blocks(s.num_blocks * moments_size(6), 0.0);
  compute_xr<T>(s, io.img, io.F, p, io.X, io.R, in_blocks.data());
  const InMoments in{reduce_moments(in_blocks, s.num_blocks, 6)};
  const A1Rows<T> a1rows(s, p, eps, io.X, io.R);

  const Bn2Bwd bn2 = backward_head_pass<T, A>(s, p, a1rows, W2, b2, training, eps, io, gr);
  const std::vector<double> D = bn1_scale(p, s.Cm, eps);
  const std::vector<double> sums = backward_conv_pass<T, A>(s, p, a1rows, W2, D, bn2, in.mu(), io, gr);
  const Conv1InputGrad dz = bn1_conv1_backward(s, p, training, eps, in, D, sums, gr);
  backward_tail_pass<T>(s, p, training, in.mu(), dz, io, gr);
}

// ---- op entry points ---------------------------------------------------------------------------

// A fresh 1-D tensor of dtype st holding v.
at::Tensor vec_tensor(const std::vector<double>& v, at::ScalarType st) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kDouble));
  std::copy(v.begin(), v.end(), t.data_ptr<double>());
  return t.to(st);
}

// A fresh contiguous tensor with the shape and dtype of `like`, holding v.
at::Tensor grad_like(const std::vector<double>& v, const at::Tensor& like) {
  at::Tensor t = at::empty(like.sizes(), at::TensorOptions().dtype(at::kDouble));
  std::copy(v.begin(), v.end(), t.data_ptr<double>());
  return t.to(like.scalar_type());
}

// The checks both entry points run (csrc/fusion_block_params.h, then the CPU dtype envelope for
// feat, which sets the type the kernels run in); returns the call's shape.
Shape check_inputs(const char* op, const at::Tensor& feat, const at::Tensor& image, const FusionBlockParams& params,
                   bool training) {
  const FusionBlockDims d = check_fusion_block_params(op, feat, image, params, training);
  check_cpu_dtype(op, "feat", feat);
  return make_shape(d);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fusion_block_fwd_cpu(
    const at::Tensor& feat, const at::Tensor& image, const at::Tensor& map_weight, const at::Tensor& map_bias,
    const at::Tensor& conv1_weight, const at::Tensor& conv1_bias, const at::Tensor& bn1_weight,
    const at::Tensor& bn1_bias, const at::Tensor& bn1_running_mean, const at::Tensor& bn1_running_var,
    const at::Tensor& conv2_weight, const at::Tensor& conv2_bias, const at::Tensor& bn2_weight,
    const at::Tensor& bn2_bias, const at::Tensor& bn2_running_mean, const at::Tensor& bn2_running_var,
    const at::Tensor& conv3_weight, const at::Tensor& conv3_bias, bool training, double eps) {
  const FusionBlockParams params{map_weight,   map_bias,         conv1_weight,    conv1_bias,      bn1_weight,
                                 bn1_bias,     bn1_running_mean, bn1_running_var, conv2_weight,    conv2_bias,
                                 bn2_weight,   bn2_bias,         bn2_running_mean, bn2_running_var, conv3_weight,
                                 conv3_bias,   BnStats::kRunning};
  const Shape s = check_inputs("fusion_block_fwd", feat, image, params, training);
  const at::ScalarType ct = accumulate_dtype(feat.scalar_type());
  const at::Tensor f = feat.to(ct).contiguous();
  const at::Tensor img = image.to(ct).contiguous();
  // In eval p.mean* / p.var* stay the running statistics and are returned as copies.
  HostParams p = host_params(params);

  const auto opt = f.options();
  at::Tensor out = at::empty({s.B, 3, s.h, s.w}, opt);
  at::Tensor alpha = at::empty({s.B, s.A, s.h, s.w}, opt);
  at::Tensor raw = at::empty({s.B, 3, s.h, s.w}, opt);
  if (ct == at::kDouble) {
    if (s.A == 1) forward_typed<double, 1>(s, f, img, p, training, eps, ct, out, alpha, raw);
    else forward_typed<double, 3>(s, f, img, p, training, eps, ct, out, alpha, raw);
  } else {
    if (s.A == 1) forward_typed<float, 1>(s, f, img, p, training, eps, ct, out, alpha, raw);
    else forward_typed<float, 3>(s, f, img, p, training, eps, ct, out, alpha, raw);
  }
  const at::ScalarType out_t = feat.scalar_type();
  return {out.to(out_t),        alpha.to(out_t),        raw.to(out_t),         vec_tensor(p.mean1, ct),
          vec_tensor(p.var1, ct), vec_tensor(p.mean2, ct), vec_tensor(p.var2, ct)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
fusion_block_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& grad_alpha, const at::Tensor& grad_raw,
                     const at::Tensor& feat, const at::Tensor& image, const at::Tensor& map_weight,
                     const at::Tensor& map_bias, const at::Tensor& conv1_weight, const at::Tensor& conv1_bias,
                     const at::Tensor& bn1_weight, const at::Tensor& bn1_bias, const at::Tensor& bn1_mean,
                     const at::Tensor& bn1_var, const at::Tensor& conv2_weight, const at::Tensor& conv2_bias,
                     const at::Tensor& bn2_weight, const at::Tensor& bn2_bias, const at::Tensor& bn2_mean,
                     const at::Tensor& bn2_var, const at::Tensor& conv3_weight, const at::Tensor& conv3_bias,
                     bool training, double eps) {
  const char* op = "fusion_block_bwd";
  const FusionBlockParams params{map_weight, map_bias,   conv1_weight, conv1_bias, bn1_weight,   bn1_bias,
                                 bn1_mean,   bn1_var,    conv2_weight, conv2_bias, bn2_weight,   bn2_bias,
                                 bn2_mean,   bn2_var,    conv3_weight, conv3_bias, BnStats::kFromForward};
  const Shape s = check_inputs(op, feat, image, params, training);
  const at::ScalarType ct = accumulate_dtype(feat.scalar_type());
  const at::Tensor f = feat.to(ct).contiguous();
  const at::Tensor img = image.to(ct).contiguous();
  auto prep_grad = [&](const at::Tensor& g, int64_t C, const char* name, const char* layout) {
    if (!check_fusion_block_grad(op, name, g, s, C, layout)) return at::zeros({s.B, C, s.h, s.w}, f.options());
    return g.to(ct).contiguous();
  };
  const at::Tensor gout = prep_grad(grad_out, 3, "grad_out", "(B, 3, h, w)");
  const at::Tensor galpha = prep_grad(grad_alpha, s.A, "grad_alpha", "(B, A, h, w)");
  const at::Tensor graw = prep_grad(grad_raw, 3, "grad_raw", "(B, 3, h, w)");
  const HostParams p = host_params(params);

  at::Tensor gfeat = at::empty({s.B, s.c, s.h, s.w}, f.options());
  at::Tensor gxk = at::empty({s.B, 3, s.h, s.w}, f.options().dtype(at::kDouble));
  Grads gr;
  if (ct == at::kDouble) {
    if (s.A == 1) backward_typed<double, 1>(s, gout, galpha, graw, f, img, p, training, eps, gfeat, gxk, gr);
    else backward_typed<double, 3>(s, gout, galpha, graw, f, img, p, training, eps, gfeat, gxk, gr);
  } else {
    if (s.A == 1) backward_typed<float, 1>(s, gout, galpha, graw, f, img, p, training, eps, gfeat, gxk, gr);
    else backward_typed<float, 3>(s, gout, galpha, graw, f, img, p, training, eps, gfeat, gxk, gr);
  }
  return {gfeat.to(feat.scalar_type()),
          gxk.to(image.scalar_type()),
          grad_like(gr.Wm, map_weight),
          grad_like(gr.bm, map_bias),
          grad_like(gr.W1, conv1_weight),
          grad_like(gr.b1, conv1_bias),
          grad_like(gr.g1, bn1_weight),
          grad_like(gr.be1, bn1_bias),
          grad_like(gr.W2, conv2_weight),
          grad_like(gr.b2, conv2_bias),
          grad_like(gr.g2, bn2_weight),
          grad_like(gr.be2, bn2_bias),
          grad_like(gr.W3, conv3_weight),
          grad_like(gr.b3, conv3_bias)};
}

TORCH_LIBRARY_IMPL(inpaint_fast, CPU, m) {
  m.impl("fusion_block_fwd", &fusion_block_fwd_cpu);
  m.impl("fusion_block_bwd", &fusion_block_bwd_cpu);
}

}  // namespace cpu
}  // namespace inpaint_fast
