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
//  * Xk and R (6 channels, double) are not stored in the eval forward: its single pass computes
//    each row where the a1 ring needs it (XRRows), so it writes nothing but its outputs. A fresh
//    multi-MB buffer also costs a page fault per 4 KiB on first touch, up to a third of the eval
//    forward's time when the allocator hands back fresh pages. Training and the backward, which
//    need the rows in 2 and 3 later passes, store them: computing them again in each pass (three
//    double sigmoids per pixel, and c feature reads) measured slower even at c = 4.
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
//  * Layout of the code: the per-row building blocks (shapes and row iteration, moments, resize
//    tables, the row kernels) are in fusion_block_rows.h, the AVX2 kernel of the 3x3 conv row in
//    fusion_block_conv3x3.h, the parameters and passes both directions run (Xk and R, a1 and z2
//    rows on demand) in fusion_block_passes.h; this file holds the forward passes, the backward
//    passes and the op entry points.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../dtypes.h"
#include "../fusion_block_params.h"
#include "common.h"
#include "fusion_block_passes.h"
#include "fusion_block_rows.h"

namespace inpaint_fast {
namespace cpu {
namespace {

// ---- forward -----------------------------------------------------------------------------------

// The forward's per-pixel buffers and outputs: Xk and R only in training (see the design notes).
template <typename T>
struct FwdBuffers {
  const double* X;  // Xk, (B, 3, h, w) double; null in eval
  const double* R;  // R, likewise
  T* Y;             // out
  T* AL;            // alpha
  T* RAW;           // raw
};

// v as the statistics dtype st stores it (st is float32 or float64).
inline double round_to(double v, at::ScalarType st) {
  return st == at::kFloat ? static_cast<double>(static_cast<float>(v)) : v;
}

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
void forward_z2_pass(const Shape& s, const XRMaker<T>& maker, const A1Rows<T>& a1rows, const std::vector<T>& W2,
                     const std::vector<T>& b2, const Head& hd, bool training, const FwdBuffers<T>& io, T* Z2,
                     std::vector<double>& z_blocks) {
  parallel_blocks(s, [&](int64_t blk0, int64_t blk1) {
    XRRows<T> xr(s, maker, io.X, io.R);
    Z2Rows<T, A> z2rows(s, a1rows, xr, W2.data(), b2.data());
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
        // Row y of Xk and R is still in the ring: z2rows computed it for a1 row y.
        const XRRow in = xr.row(b, y);
        finish_row<T, A>(z2row, in.X, in.R, in.cs, hd, s.w, tmp.data(), io.AL + oa, io.Y + o3, io.RAW + o3, s.hw);
      }
    });
  });
}

// Pass 3 (training): the head and the blend of every row from the stored z2, with BN2's batch
// statistics in hd.
template <typename T, int A>
void forward_finish_pass(const Shape& s, const XRMaker<T>& maker, const Head& hd, const T* Z2,
                         const FwdBuffers<T>& io) {
  parallel_blocks(s, [&](int64_t blk0, int64_t blk1) {
    XRRows<T> xr(s, maker, io.X, io.R);
    std::vector<T> z2row(A * s.w);
    std::vector<double> tmp(4 * A * s.w);
    for_rows(s, blk0, blk1, [&](int64_t, int64_t b, int64_t y) {
      const int64_t o3 = row_offset(s, 3, b, y);
      const int64_t oa = row_offset(s, A, b, y);
      for (int a = 0; a < A; ++a)
        std::copy(Z2 + oa + a * s.hw, Z2 + oa + a * s.hw + s.w, z2row.data() + a * s.w);
      const XRRow in = xr.row(b, y);
      finish_row<T, A>(z2row.data(), in.X, in.R, in.cs, hd, s.w, tmp.data(), io.AL + oa, io.Y + o3, io.RAW + o3,
                       s.hw);
    });
  });
}

template <typename T, int A>
void forward_typed(const Shape& s, const at::Tensor& feat, const at::Tensor& image, HostParams& p, bool training,
                   double eps, at::ScalarType stat_type, at::Tensor& out, at::Tensor& alpha, at::Tensor& raw) {
  const auto opt_d = feat.options().dtype(at::kDouble);
  at::Tensor xbuf = training ? at::empty({s.B, 3, s.h, s.w}, opt_d) : at::Tensor();
  at::Tensor rbuf = training ? at::empty({s.B, 3, s.h, s.w}, opt_d) : at::Tensor();
  double* X = training ? xbuf.data_ptr<double>() : nullptr;
  double* R = training ? rbuf.data_ptr<double>() : nullptr;
  const FwdBuffers<T> io{X, R, out.data_ptr<T>(), alpha.data_ptr<T>(), raw.data_ptr<T>()};
  const XRMaker<T> maker(s, image.data_ptr<T>(), feat.data_ptr<T>(), p);
  const std::vector<T> W2 = cast_vec<T>(p.W2), b2 = cast_vec<T>(p.b2);

  // Pass 1 (training): the moments of [Xk, R], which give BN1's batch statistics.
  if (training) {
    std::vector<double> in_blocks(s.num_blocks * moments_size(6), 0.0);
    xr_moments_pass<T>(s, maker, X, R, in_blocks.data());
    bn1_batch_stats(s, in_blocks, stat_type, p);
  }
  const A1Rows<T> a1rows(s, p, eps);

  std::vector<double> invstd2(A);
  const Head hd{p.mean2.data(), invstd2.data(), p.g2.data(), p.be2.data(), p.W3.data(), p.b3.data()};
  if (!training) set_bn2_invstd(p, eps, invstd2);

  // Pass 2: z2 (eval: and the rest of each row).
  at::Tensor z2buf = training ? at::empty({s.B, A, s.h, s.w}, feat.options()) : at::Tensor();
  T* Z2 = training ? z2buf.data_ptr<T>() : nullptr;
  std::vector<double> z_blocks(training ? s.num_blocks * moments_size(A) : 0, 0.0);
  forward_z2_pass<T, A>(s, maker, a1rows, W2, b2, hd, training, io, Z2, z_blocks);
  if (!training) return;

  // Pass 3 (training): BN2 with the batch statistics, then the rest of each row.
  const std::vector<double> zm = reduce_moments(z_blocks, s.num_blocks, A);
  for (int a = 0; a < A; ++a) {
    p.mean2[a] = round_to(zm[1 + a], stat_type);
    p.var2[a] = round_to(std::max(zm[1 + A + a * A + a] / static_cast<double>(s.M), 0.0), stat_type);
  }
  set_bn2_invstd(p, eps, invstd2);
  forward_finish_pass<T, A>(s, maker, hd, Z2, io);
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
Bn2Bwd backward_head_pass(const Shape& s, const HostParams& p, const XRMaker<T>& maker, const A1Rows<T>& a1rows,
                          const std::vector<T>& W2, const std::vector<T>& b2, bool training, double eps,
                          const BwdBuffers<T>& io, Grads& gr) {
  const double M = static_cast<double>(s.M);
  std::vector<double> invstd2(A);
  set_bn2_invstd(p, eps, invstd2);
  const Head hd{p.mean2.data(), invstd2.data(), p.g2.data(), p.be2.data(), p.W3.data(), p.b3.data()};
  const int64_t k_head = A * A + 4 * A;
  std::vector<double> head_blocks(s.num_blocks * k_head, 0.0);
  parallel_blocks(s, [&](int64_t blk0, int64_t blk1) {
    XRRows<T> xr(s, maker, io.X, io.R);
    Z2Rows<T, A> z2rows(s, a1rows, xr, W2.data(), b2.data());
    std::vector<double> tmp(5 * A * s.w);
    for_rows(s, blk0, blk1, [&](int64_t blk, int64_t b, int64_t y) {
      const T* z2row = z2rows.row(b, y);
      const int64_t o3 = row_offset(s, 3, b, y);
      const int64_t oa = row_offset(s, A, b, y);
      const XRRow in = xr.row(b, y);
      head_bwd_row<T, A>(z2row, in.X, in.R, in.cs, s.hw, io.gout + o3, io.galpha + oa, io.graw + o3, hd, s.w,
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
std::vector<double> backward_conv_pass(const Shape& s, const HostParams& p, const XRMaker<T>& maker,
                                       const A1Rows<T>& a1rows,
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
    XRRows<T> xr(s, maker, io.X, io.R);
    RowRing<T> aring(Cm * s.ld, s.h), dring(A * s.ld, s.h);
    std::vector<T> in(6 * s.w), inc(6 * s.w), g(Cm * s.w), u(6 * s.w);
    auto fill_a = [&](T* dst, int64_t b, int64_t y) { a1rows.fill(dst, xr.row(b, y), in.data()); };
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
      const XRRow xy = xr.row(b, y);
      for (int j = 0; j < 3; ++j)
        for (int64_t x = 0; x < s.w; ++x) {
          inc[j * s.w + x] = static_cast<T>(xy.X[j * xy.cs + x] - mu[j]);
          inc[(3 + j) * s.w + x] = static_cast<T>(xy.R[j * xy.cs + x] - mu[3 + j]);
        }
      bool g_given = false;
#if IPF_X86_KERNELS
      if constexpr (std::is_same<T, float>::value) {
        if (s.conv3x3_avx2) {  // g1 from the AVX2 kernel
          conv3x3_bwd_input_avx2<A>(d_up, d_mid, d_down, a_mid, W2.data(), slope, Cm, s.w, g.data());
          g_given = true;
        }
      }
#endif
      conv_bwd_row<T, A>(a_up, a_mid, a_down, d_up, d_mid, d_down, inc.data(), W2.data(), W1D.data(), slope, Cm, s.w,
                         g.data(), g_given, u.data(), conv_blocks.data() + blk * k_conv);
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
void backward_tail_pass(const Shape& s, const HostParams& p, const XRMaker<T>& maker, bool training, const double* mu,
                        const Conv1InputGrad& dz, const BwdBuffers<T>& io, Grads& gr) {
  const int64_t k_tail = 3 * s.c + 3;
  std::vector<double> tail_blocks(s.num_blocks * k_tail, 0.0);
  parallel_blocks(s, [&](int64_t blk0, int64_t blk1) {
    XRRows<T> xr(s, maker, io.X, io.R);
    std::vector<double> dr(3 * s.w);
    for_rows(s, blk0, blk1, [&](int64_t blk, int64_t b, int64_t y) {
      const int64_t o3 = row_offset(s, 3, b, y);
      const int64_t oc = row_offset(s, s.c, b, y);
      const XRRow in = xr.row(b, y);
      tail_bwd_row<T>(in.X, in.R, in.cs, s.hw, io.F + oc, s.c, p.Wm.data(), training, mu, dz.K.data(),
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
  const XRMaker<T> maker(s, io.img, io.F, p);
  xr_moments_pass<T>(s, maker, io.X, io.R, in_blocks.data());
  const InMoments in{reduce_moments(in_blocks, s.num_blocks, 6)};
  const A1Rows<T> a1rows(s, p, eps);

  const Bn2Bwd bn2 = backward_head_pass<T, A>(s, p, maker, a1rows, W2, b2, training, eps, io, gr);
  const std::vector<double> D = bn1_scale(p, s.Cm, eps);
  const std::vector<double> sums = backward_conv_pass<T, A>(s, p, maker, a1rows, W2, D, bn2, in.mu(), io, gr);
  const Conv1InputGrad dz = bn1_conv1_backward(s, p, training, eps, in, D, sums, gr);
  backward_tail_pass<T>(s, p, maker, training, in.mu(), dz, io, gr);
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

// Whether this call's float 3x3 conv rows run on the AVX2 kernels of fusion_block_conv3x3.h.
// INPAINT_FAST_CPU_CONV, read at every call (a comparison switch, like INPAINT_FAST_CPU_GEMM):
// unset or "auto" for the default (the kernels wherever AVX2 + FMA exist, AVX-512 CPUs included:
// on an AVX-512 Xeon they ran the block at 0.89-0.96x the time of the generic loops' zmm clone,
// benchmarks/NOTES.md), "generic" for the generic loops, "avx2" for the kernels (an error where
// they cannot run).
bool conv3x3_avx2_choice(const char* op) {
  const char* env = std::getenv("INPAINT_FAST_CPU_CONV");
  const std::string choice = env ? env : "";
  if (choice.empty() || choice == "auto") return avx2_kernels_supported();
  if (choice == "generic") return false;
  TORCH_CHECK(choice == "avx2", op, ": INPAINT_FAST_CPU_CONV=", choice, ": expected auto, generic or avx2");
  TORCH_CHECK(avx2_kernels_supported(), op,
              ": INPAINT_FAST_CPU_CONV=avx2 needs a CPU with AVX2 and FMA; this one lacks AVX2 or FMA (use auto or generic)");
  return true;
}

// The checks both entry points run (csrc/fusion_block_params.h, then the CPU dtype envelope for
// feat, which sets the type the kernels run in); returns the call's shape and its conv kernels.
Shape check_inputs(const char* op, const at::Tensor& feat, const at::Tensor& image, const FusionBlockParams& params,
                   bool training) {
  const FusionBlockDims d = check_fusion_block_params(op, feat, image, params, training);
  check_cpu_dtype(op, "feat", feat);
  Shape s = make_shape(d);
  s.conv3x3_avx2 = conv3x3_avx2_choice(op) && accumulate_dtype(feat.scalar_type()) == at::kFloat;
  return s;
}

}  // namespace

// The ops on CPU tensors, registered through fusion_block_fwd_op / fusion_block_bwd_op
// (csrc/fusion_block_params.h), which build the FusionBlockParams from the schemas' arguments.
FusionBlockForward fusion_block_forward(const at::Tensor& feat, const at::Tensor& image, const FusionBlockParams& params,
                                        bool training, double eps) {
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

FusionBlockBackward fusion_block_backward(const at::Tensor& grad_out, const at::Tensor& grad_alpha,
                                          const at::Tensor& grad_raw, const at::Tensor& feat, const at::Tensor& image,
                                          const FusionBlockParams& params, bool training, double eps) {
  const char* op = "fusion_block_bwd";
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
          grad_like(gr.Wm, params.map_weight),
          grad_like(gr.bm, params.map_bias),
          grad_like(gr.W1, params.conv1_weight),
          grad_like(gr.b1, params.conv1_bias),
          grad_like(gr.g1, params.bn1_weight),
          grad_like(gr.be1, params.bn1_bias),
          grad_like(gr.W2, params.conv2_weight),
          grad_like(gr.b2, params.conv2_bias),
          grad_like(gr.g2, params.bn2_weight),
          grad_like(gr.be2, params.bn2_bias),
          grad_like(gr.W3, params.conv3_weight),
          grad_like(gr.b3, params.conv3_bias)};
}

TORCH_LIBRARY_IMPL(inpaint_fast, CPU, m) {
  m.impl("fusion_block_fwd", &fusion_block_fwd_op<fusion_block_forward>);
  m.impl("fusion_block_bwd", &fusion_block_bwd_op<fusion_block_backward>);
}

}  // namespace cpu
}  // namespace inpaint_fast
