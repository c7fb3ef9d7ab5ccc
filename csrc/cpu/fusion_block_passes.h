// What both directions of the CPU fusion block run, internal to it (csrc/cpu/fusion_block.cpp):
// the parameters as double host vectors (HostParams), Xk and R rows (computed on demand or read
// from buffers; pass 1 fills the buffers and the moments of [Xk, R]), a1 and z2 rows recomputed
// on demand, and BN2's invstd. The backward recomputes all of these from its inputs instead of
// receiving them from the forward, so both directions run the same code for them.
//
// Only fusion_block.cpp includes this header; anonymous namespace as in fusion_block_rows.h.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../fusion_block_params.h"
#include "fusion_block_conv3x3.h"
#include "fusion_block_rows.h"

namespace inpaint_fast {
namespace cpu {
namespace {

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

// Rows y of Xk and R for one image b: three channel rows each, `cs` apart.
struct XRRow {
  const double* X;
  const double* R;
  int64_t cs;
};

// What Xk and R are computed from (the image, the feature, the map conv and the resize tables);
// fill() writes one row of both, so that a pass can compute rows where it needs them instead of
// reading (B, 3, h, w) double buffers.
template <typename T>
class XRMaker {
 public:
  XRMaker(const Shape& s, const T* img, const T* F, const HostParams& p)
      : s_(s), img_(img), F_(F), p_(p), identity_(s.H == s.h && s.W == s.w), ty_(linear_table(s.H, s.h)),
        tx_(linear_table(s.W, s.w)) {}

  // Row (b, y) of Xk into X and of R into R, channel rows cs apart.
  void fill(int64_t b, int64_t y, double* X, double* R, int64_t cs) const {
    xr_row<T>(img_ + b * 3 * s_.H * s_.W, s_.H, s_.W, identity_, ty_.i0[y], ty_.i1[y], ty_.l0[y], ty_.l1[y],
              tx_.i0.data(), tx_.i1.data(), tx_.l0.data(), tx_.l1.data(), F_ + row_offset(s_, s_.c, b, y), s_.c,
              s_.hw, p_.Wm.data(), p_.bm.data(), s_.w, cs, X, R);
  }

 private:
  const Shape& s_;
  const T* img_;
  const T* F_;
  const HostParams& p_;
  bool identity_;
  LinearTable ty_, tx_;
};

// One thread's source of Xk and R rows: the (B, 3, h, w) buffers X and R when the call stores them,
// otherwise rows computed on demand into a three-row ring. A pass visits rows in order and the 3x3
// stencil needs rows y-1, y, y+1, so with the ring each row is computed once per thread (twice
// only at the halo row starting a thread's range). Computing is bitwise the same as storing.
template <typename T>
class XRRows {
 public:
  XRRows(const Shape& s, const XRMaker<T>& maker, const double* X = nullptr, const double* R = nullptr)
      : s_(s), maker_(maker), X_(X), R_(R), ring_(X ? 0 : 6 * s.w, s.h) {}

  // Row (b, y), 0 <= y < h; a computed row stays valid until three other rows were asked for.
  XRRow row(int64_t b, int64_t y) {
    if (X_) {
      const int64_t o3 = row_offset(s_, 3, b, y);
      return {X_ + o3, R_ + o3, s_.hw};
    }
    const double* p = ring_.get(b, y, [&](double* dst, int64_t fb, int64_t fy) {
      maker_.fill(fb, fy, dst, dst + 3 * s_.w, s_.w);
    });
    return {p, p + 3 * s_.w, s_.w};
  }

 private:
  const Shape& s_;
  const XRMaker<T>& maker_;
  const double* X_;
  const double* R_;
  RowRing<double> ring_;
};

// Pass 1 of training and the backward: Xk and R into the (B, 3, h, w) buffers X and R, and the
// per-block moments of the 6 channels [Xk, R] (BN1's batch statistics; the BN1 backward's).
template <typename T>
void xr_moments_pass(const Shape& s, const XRMaker<T>& maker, double* X, double* R, double* moments) {
  parallel_blocks(s, [&](int64_t b0, int64_t b1) {
    std::vector<double> tmp(6 * s.w);
    for_rows(s, b0, b1, [&](int64_t blk, int64_t b, int64_t y) {
      const int64_t o3 = row_offset(s, 3, b, y);
      maker.fill(b, y, X + o3, R + o3, s.hw);
      const double* rows[6] = {X + o3, X + o3 + s.hw, X + o3 + 2 * s.hw, R + o3, R + o3 + s.hw, R + o3 + 2 * s.hw};
      row_moments<double>(rows, 6, s.w, tmp.data(), moments + blk * moments_size(6));
    });
  });
}

// a1 rows on demand: BN1 folded into conv1 (W1f = s1 W1, b1f = s1 (b1 - mean1) + beta1 with
// s1 = gamma1 / sqrt(var1 + eps)), from the double Xk and R rounded to T.
template <typename T>
class A1Rows {
 public:
  A1Rows(const Shape& s, const HostParams& p, double eps) : s_(s) {
    W1f_.resize(s.Cm * 6);
    b1f_.resize(s.Cm);
    for (int64_t m = 0; m < s.Cm; ++m) {
      const double s1 = p.g1[m] / std::sqrt(p.var1[m] + eps);
      for (int j = 0; j < 6; ++j) W1f_[m * 6 + j] = static_cast<T>(s1 * p.W1[m * 6 + j]);
      b1f_[m] = static_cast<T>(s1 * (p.b1[m] - p.mean1[m]) + p.be1[m]);
    }
  }

  // Writes the a1 row of the Xk and R row `xr` into dst (Cm x (w + 2)); `in` is a 6 x w scratch row.
  void fill(T* dst, const XRRow& xr, T* in) const {
    for (int j = 0; j < 3; ++j)
      for (int64_t x = 0; x < s_.w; ++x) {
        in[j * s_.w + x] = static_cast<T>(xr.X[j * xr.cs + x]);
        in[(3 + j) * s_.w + x] = static_cast<T>(xr.R[j * xr.cs + x]);
      }
    a1_row<T>(in, W1f_.data(), b1f_.data(), s_.Cm, s_.w, static_cast<T>(kSlope), dst);
  }

 private:
  const Shape& s_;
  std::vector<T> W1f_, b1f_;
};

// z2 = conv3x3(a1) + b2 row by row, for the rows of one thread's range in order: the a1 rows
// y-1, y, y+1 the stencil reads are kept in a ring (see the design notes), so consecutive rows
// compute one new a1 row each. One per thread, with that thread's XRRows; W2 and b2 are the raw
// conv2 weights in T.
template <typename T, int A>
class Z2Rows {
 public:
  Z2Rows(const Shape& s, const A1Rows<T>& a1rows, XRRows<T>& xr, const T* W2, const T* b2)
      : s_(s), a1rows_(a1rows), xr_(xr), W2_(W2), b2_(b2), ring_(s.Cm * s.ld, s.h), z2_(A * s.w), in_(6 * s.w) {}

  // z2 of row (b, y): A x w, valid until the next call.
  const T* row(int64_t b, int64_t y) {
    auto fill = [&](T* dst, int64_t fb, int64_t fy) { a1rows_.fill(dst, xr_.row(fb, fy), in_.data()); };
    const T* up = ring_.get(b, y - 1, fill);
    const T* mid = ring_.get(b, y, fill);
    const T* down = ring_.get(b, y + 1, fill);
#if IPF_X86_KERNELS
    if constexpr (std::is_same<T, float>::value) {
      if (s_.conv3x3_avx2) {
        conv3x3_row_avx2<A>(up, mid, down, s_.Cm, s_.w, W2_, b2_, z2_.data());
        return z2_.data();
      }
    }
#endif
    conv3x3_row<T, A>(up, mid, down, s_.Cm, s_.w, W2_, b2_, z2_.data());
    return z2_.data();
  }

 private:
  const Shape& s_;
  const A1Rows<T>& a1rows_;
  XRRows<T>& xr_;
  const T* W2_;
  const T* b2_;
  RowRing<T> ring_;
  std::vector<T> z2_, in_;
};

// invstd2 = 1 / sqrt(var2 + eps) per BN2 channel, written in place (a Head points at it).
void set_bn2_invstd(const HostParams& p, double eps, std::vector<double>& invstd2) {
  for (size_t a = 0; a < invstd2.size(); ++a) invstd2[a] = 1.0 / std::sqrt(p.var2[a] + eps);
}

}  // namespace
}  // namespace cpu
}  // namespace inpaint_fast
