// Row kernels of the CPU short+long-range attention (csrc/cpu/short_long_attention.cpp): the
// elementwise work on a strip of score rows between its GEMMs, row by row, so the strip makes one
// trip through the cache per kernel instead of one per ATen operation.
//
// A strip is `rows` rows of `n` scores at row stride `ld`. Scores are scaled as `s * scale` in the
// accumulation type T (float or double), exactly as a separate multiply would; exponentials are
// exp_acc (csrc/cpu/simd.h) of natural-unit differences, so no argument is rounded by a change of
// base. Each row is finished (max, exponentials, sum) before the next, so the row's later passes
// read it from L1. Row sums are accumulated in double in kLanes fixed-order partial sums
// (sum_row, dot_row), so the result does not depend on the instruction set of the clone that runs.
//
// Only short_long_attention.cpp includes this header: the names keep internal linkage.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "simd.h"

namespace inpaint_fast {
namespace cpu {
namespace {

// max_j(sign * e_j) over one row, sign = +1 or -1. Four vector accumulators hide the max's latency.
template <typename T>
IPF_INLINE T signed_row_max(const T* __restrict e, int64_t n, T sign) {
  using V = typename Vec32<T>::type;  // simd.h
  constexpr int L = 32 / sizeof(T);
  const T inf = std::numeric_limits<T>::infinity();
  V m[4];
  for (V& v : m) v = V{} - inf;
  int64_t j = 0;
  for (; j + 4 * L <= n; j += 4 * L) {
    for (int u = 0; u < 4; ++u) {
      V a;
      std::memcpy(&a, e + j + u * L, sizeof a);
      a *= sign;
      m[u] = a > m[u] ? a : m[u];
    }
  }
  m[0] = m[1] > m[0] ? m[1] : m[0];
  m[2] = m[3] > m[2] ? m[3] : m[2];
  m[0] = m[2] > m[0] ? m[2] : m[0];
  T mx = -inf;
  for (int l = 0; l < L; ++l) mx = m[0][l] > mx ? m[0][l] : mx;
  for (; j < n; ++j) mx = std::max(mx, sign * e[j]);
  return mx;
}

// max_j(e_j * scale), without multiplying every element by scale: rounding is monotone, so the
// largest scaled element is the scaled largest (for scale < 0, the scaled smallest) element.
template <typename T>
IPF_INLINE T scaled_row_max(const T* __restrict e, int64_t n, T scale) {
  return scale < 0 ? -signed_row_max(e, n, T(-1)) * scale : signed_row_max(e, n, T(1)) * scale;
}

// e_j <- exp(e_j * scale - shift) over one row; kBelowMax: shift is the row's max(e * scale), so no
// argument can overflow (exp_acc_nonpositive, simd.h).
template <bool kBelowMax, typename T>
IPF_INLINE void exp_row(T* __restrict e, int64_t n, T scale, T shift) {
  IPF_IVDEP
  for (int64_t j = 0; j < n; ++j) {
    const T x = e[j] * scale - shift;
    e[j] = kBelowMax ? exp_acc_nonpositive(x) : exp_acc(x);
  }
}

// Forward: the scores of each row become its unnormalised probabilities exp(s * scale - max), and
// row_max / row_sum receive max_j(s * scale) and sum_j exp(s * scale - max).
template <typename T>
IPF_MULTIVERSION void softmax_strip(T* __restrict s, int64_t rows, int64_t n, int64_t ld, T scale,
                                    T* __restrict row_max, T* __restrict row_sum) {
  for (int64_t i = 0; i < rows; ++i) {
    T* __restrict e = s + i * ld;
    const T mx = scaled_row_max(e, n, scale);
    exp_row<true>(e, n, scale, mx);
    row_max[i] = mx;
    row_sum[i] = static_cast<T>(sum_row(e, n));
  }
}

// Forward, after the P.V product of a strip: the un-gated outputs of its `rows` positions,
// o / row_sum (o: rows x (C + Cp), position-major at row stride ldo), written channel-major with
// their gates, at channel stride n (the images' N): sa and y = x + gamma * sa for the first C
// channels, ca and cf = (1 - m) * (alpha * ca) + m * pre for the Cp after them. x, pre, y, sa, ca
// and cf point at the strip's first position of channel 0, mask at its first position. cf is
// evaluated as written so that visible pixels (m = 1) return pre bit for bit and holes (m = 0)
// exactly alpha * ca, as in the reference. Each output row is written once, contiguously; o (in
// L2 after the product) is read across its rows. x, pre and mask are read in I, outputs computed in
// T and rounded once to O (I and O: T, or bfloat16 for bfloat16 inputs).
template <typename T, typename I, typename O>
IPF_MULTIVERSION void gated_outputs_strip(const T* __restrict o, int64_t ldo, int64_t rows,
                                          const T* __restrict row_sum, int64_t C, int64_t Cp, int64_t n, T gamma,
                                          T alpha, const I* __restrict x, const I* __restrict pre,
                                          const I* __restrict mask, O* __restrict y, O* __restrict sa,
                                          O* __restrict cf, O* __restrict ca) {
  for (int64_t c = 0; c < C; ++c) {
    const T* __restrict oc = o + c;
    const I* __restrict xc = x + c * n;
    O* __restrict yc = y + c * n;
    O* __restrict sc = sa + c * n;
    IPF_IVDEP
    for (int64_t r = 0; r < rows; ++r) {
      const T s = oc[r * ldo] / row_sum[r];
      sc[r] = static_cast<O>(s);
      yc[r] = static_cast<O>(static_cast<T>(xc[r]) + gamma * s);
    }
  }
  for (int64_t c = 0; c < Cp; ++c) {
    const T* __restrict oc = o + C + c;
    const I* __restrict pc = pre + c * n;
    O* __restrict fc = cf + c * n;
    O* __restrict ac = ca + c * n;
    IPF_IVDEP
    for (int64_t r = 0; r < rows; ++r) {
      const T s = oc[r * ldo] / row_sum[r];
      ac[r] = static_cast<O>(s);
      const T m = static_cast<T>(mask[r]);
      fc[r] = static_cast<O>(m * static_cast<T>(pc[r]) + (T(1) - m) * (alpha * s));
    }
  }
}

// Backward: the softmax backward of a strip, one row at a time so that the row of P and of dP
// stays in cache between its two passes (the strip itself does not fit in L2). The scores s
// become the probabilities P = exp(s * scale - lse), delta_i = sum_j P_ij dP_ij is summed, and dP
// becomes dS = P * (dP - delta) in place: the form of PyTorch's softmax backward, whose rounding
// errors cancel in dP - delta because delta was summed from the same P and dP. s and dp share the
// row stride ld.
template <typename T>
IPF_MULTIVERSION void softmax_backward_strip(T* __restrict s, T* __restrict dp, int64_t rows, int64_t n, int64_t ld,
                                             T scale, const T* __restrict lse, T* __restrict delta) {
  for (int64_t i = 0; i < rows; ++i) {
    T* __restrict e = s + i * ld;
    T* __restrict g = dp + i * ld;
    // lse comes from the caller (a direct op call may pass any), so overflow is handled.
    exp_row<false>(e, n, scale, lse[i]);
    const T d = static_cast<T>(dot_row(e, g, n));
    delta[i] = d;
    IPF_IVDEP
    for (int64_t j = 0; j < n; ++j) g[j] = e[j] * (g[j] - d);
  }
}

// Positions per tile of the backward's O(N * channels) passes (upstream_grads_tile,
// attention_grads_tile): a tile's position-major rows of every channel (32 x 256 floats for PIC's
// values) stay in L1 while it is read across them.
constexpr int64_t kGradTileRows = 32;

// Backward, before the strip products: the upstream gradients of the un-gated outputs,
// dA = [gamma * dy; dcf * ((1 - m) * alpha)], for `rows` <= kGradTileRows positions of one image,
// written position-major (rows x (C + Cp), row stride C + Cp: the layout the strip products read)
// from the channel-major dy (C channels) and dcf (Cp channels) at channel stride n. dy, dcf and mask
// point at the tile's first position; dcf and mask are not read when Cp = 0. They are read in I (T,
// or bfloat16 for bfloat16 inputs) and computed in T.
template <typename T, typename I>
IPF_MULTIVERSION void upstream_grads_tile(const I* __restrict dy, const I* __restrict dcf,
                                          const I* __restrict mask, int64_t rows, int64_t C, int64_t Cp,
                                          int64_t n, T gamma, T alpha, T* __restrict dat) {
  const int64_t ld = C + Cp;
  for (int64_t c = 0; c < C; ++c) {
    const I* __restrict src = dy + c * n;
    IPF_IVDEP
    for (int64_t r = 0; r < rows; ++r) dat[r * ld + c] = gamma * static_cast<T>(src[r]);
  }
  T hole[kGradTileRows];
  for (int64_t r = 0; r < rows && Cp > 0; ++r) hole[r] = (T(1) - static_cast<T>(mask[r])) * alpha;
  for (int64_t c = 0; c < Cp; ++c) {
    const I* __restrict src = dcf + c * n;
    IPF_IVDEP
    for (int64_t r = 0; r < rows; ++r) dat[r * ld + C + c] = static_cast<T>(src[r]) * hole[r];
  }
}

// Backward, after the strip products: what one image's gradients read and write. Inputs and
// outputs are channel-major at channel stride n; the key-side sums dq (Cq channels) and dv (C + Cp)
// are read at element (position p, channel c) = p * pos + c * ch (position-major on strip_gemm,
// channel-major on BLAS), the query-side rows dq_rows position-major (n x Cq). The pre-side
// pointers are null without pre. The inputs are read in I (T, or bfloat16 for bfloat16 inputs).
template <typename T, typename I, typename O>
struct AttentionGradsImage {
  const I *dy, *sa, *dcf, *pre, *ca, *mask;
  const T* dq;
  int64_t dq_pos, dq_ch;
  const T* dv;
  int64_t dv_pos, dv_ch;
  const T* dq_rows;
  O *grad_q, *grad_x, *grad_pre, *grad_mask;
  int64_t Cq, C, Cp, n;
  T scale, alpha;
};

// One tile's terms of the gate gradients, summed in double.
struct GateGradTerms {
  double gamma = 0, alpha = 0;
};

// The gradients of positions [p0, p0 + rows) of one image, rows <= kGradTileRows:
// grad_q = (dq + dq_rows) * scale, grad_x = dy + dv[:C], grad_pre = m * dcf + dv[C:] and
// grad_mask = sum_c dcf * (pre - ca * alpha), each computed in T and rounded once to O; returns the
// tile's terms of grad_gamma = sum dy * sa and grad_alpha = sum dcf * (1 - m) * ca. Every
// accumulation runs over channels for each position at once (per-position accumulators), so the
// loops vectorise and the sums do not depend on the clone that runs.
template <typename T, typename I, typename O>
IPF_MULTIVERSION GateGradTerms attention_grads_tile(const AttentionGradsImage<T, I, O>& im, int64_t p0,
                                                    int64_t rows) {
  const int64_t n = im.n;
  for (int64_t c = 0; c < im.Cq; ++c) {
    const T* __restrict keys = im.dq + p0 * im.dq_pos + c * im.dq_ch;
    const T* __restrict own = im.dq_rows + p0 * im.Cq + c;
    O* __restrict out = im.grad_q + c * n + p0;
    IPF_IVDEP
    for (int64_t r = 0; r < rows; ++r) out[r] = static_cast<O>((keys[r * im.dq_pos] + own[r * im.Cq]) * im.scale);
  }
  double g_terms[kGradTileRows] = {};
  for (int64_t c = 0; c < im.C; ++c) {
    const I* __restrict dy = im.dy + c * n + p0;
    const I* __restrict sa = im.sa + c * n + p0;
    const T* __restrict dv = im.dv + p0 * im.dv_pos + c * im.dv_ch;
    O* __restrict out = im.grad_x + c * n + p0;
    IPF_IVDEP
    for (int64_t r = 0; r < rows; ++r) {
      const T g = static_cast<T>(dy[r]);
      out[r] = static_cast<O>(g + dv[r * im.dv_pos]);
      g_terms[r] += static_cast<double>(g * static_cast<T>(sa[r]));
    }
  }
  GateGradTerms terms;
  for (int64_t r = 0; r < rows; ++r) terms.gamma += g_terms[r];
  if (im.Cp == 0) return terms;

  T m[kGradTileRows];
  for (int64_t r = 0; r < rows; ++r) m[r] = static_cast<T>(im.mask[p0 + r]);
  double a_terms[kGradTileRows] = {}, m_terms[kGradTileRows] = {};
  for (int64_t c = 0; c < im.Cp; ++c) {
    const I* __restrict dcf = im.dcf + c * n + p0;
    const I* __restrict pre = im.pre + c * n + p0;
    const I* __restrict ca = im.ca + c * n + p0;
    const T* __restrict dv = im.dv + p0 * im.dv_pos + (im.C + c) * im.dv_ch;
    O* __restrict out = im.grad_pre + c * n + p0;
    IPF_IVDEP
    for (int64_t r = 0; r < rows; ++r) {
      const T g = static_cast<T>(dcf[r]), a = static_cast<T>(ca[r]);
      out[r] = static_cast<O>(m[r] * g + dv[r * im.dv_pos]);
      a_terms[r] += static_cast<double>(g * (T(1) - m[r]) * a);
      m_terms[r] += static_cast<double>(g * (static_cast<T>(pre[r]) - a * im.alpha));
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    terms.alpha += a_terms[r];
    im.grad_mask[p0 + r] = static_cast<O>(m_terms[r]);
  }
  return terms;
}

}  // namespace
}  // namespace cpu
}  // namespace inpaint_fast
