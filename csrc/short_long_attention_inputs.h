// The structural checks of the short+long-range attention's inputs, shared by the CPU kernels
// (csrc/cpu/short_long_attention.cpp) and the CUDA kernels (csrc/cuda/short_long_attention.cu).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "checks.h"

namespace inpaint_fast {

// The sizes of one call: q (B, Cq, H, W), x (B, C, H, W), pre (B, Cp, H, W) when has_pre, N = H * W.
struct AttentionGeometry {
  int64_t B, Cq, C, Cp, H, W, N;
  bool has_pre;
};

// Ranks and shapes of the forward's inputs (the backward's too, which takes the same ones):
// q and x agree in batch and spatial sizes, q has a channel, the gates have one element each, and
// pre, mask and alpha come together, pre and mask matching x. Dtypes and devices are the caller's.
inline AttentionGeometry check_short_long_attention_inputs(const char* op, const at::Tensor& q, const at::Tensor& x,
                                                           const at::Tensor& gamma,
                                                           const std::optional<at::Tensor>& pre,
                                                           const std::optional<at::Tensor>& mask,
                                                           const std::optional<at::Tensor>& alpha) {
  check_defined(op, "x", x);
  check_defined(op, "q", q);
  check_defined(op, "gamma", gamma);
  check_dim(op, "x", x, 4, "(B, C, H, W)");
  check_dim(op, "q", q, 4, "(B, Cq, H, W)");
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  check_shape(op, "q", q, {B, kAnySize, H, W}, "(B, Cq, H, W)", "batch and spatial sizes of `x`");
  TORCH_CHECK(q.size(1) >= 1, op, ": `q` must have at least one channel, got shape ", q.sizes());
  check_one_element(op, "gamma", gamma);
  const bool has_pre = pre.has_value() && pre->defined();
  const bool has_mask = mask.has_value() && mask->defined();
  const bool has_alpha = alpha.has_value() && alpha->defined();
  TORCH_CHECK(has_pre == has_mask && has_pre == has_alpha, op,
              ": `pre`, `mask` and `alpha` must be given together or not at all, got `pre` ",
              has_pre ? "given" : "absent", ", `mask` ", has_mask ? "given" : "absent", ", `alpha` ",
              has_alpha ? "given" : "absent");
  AttentionGeometry g{B, q.size(1), x.size(1), 0, H, W, H * W, has_pre};
  if (has_pre) {
    check_dim(op, "pre", *pre, 4, "(B, Cp, H, W)");
    check_shape(op, "pre", *pre, {B, kAnySize, H, W}, "(B, Cp, H, W)", "batch and spatial sizes of `x`");
    check_dim(op, "mask", *mask, 4, "(B, 1, H, W)");
    check_shape(op, "mask", *mask, {B, 1, H, W}, "(B, 1, H, W)", "one channel, broadcast over `pre`'s");
    check_one_element(op, "alpha", *alpha);
    g.Cp = pre->size(1);
  }
  return g;
}

// The backward's own inputs: grad_y and sa have x's shape, lse has B * N elements, and with pre,
// ca has pre's shape and grad_cf too unless it is empty (autograd did not materialise it: zero).
// Returns whether grad_cf is given.
inline bool check_short_long_attention_bwd_inputs(const char* op, const AttentionGeometry& g, const at::Tensor& grad_y,
                                                  const at::Tensor& grad_cf, const at::Tensor& x,
                                                  const std::optional<at::Tensor>& pre, const at::Tensor& sa,
                                                  const at::Tensor& ca, const at::Tensor& lse) {
  check_defined(op, "grad_y", grad_y);
  check_defined(op, "sa", sa);
  check_defined(op, "lse", lse);
  check_same_shape(op, "grad_y", grad_y, "x", x);
  check_same_shape(op, "sa", sa, "x", x);
  check_numel(op, "lse", lse, g.B * g.N, "B * H * W");
  if (!g.has_pre) return false;
  check_defined(op, "ca", ca);
  check_same_shape(op, "ca", ca, "pre", *pre);
  const bool has_grad_cf = grad_cf.defined() && grad_cf.numel() > 0;
  if (has_grad_cf) check_same_shape(op, "grad_cf", grad_cf, "pre", *pre);
  return has_grad_cf;
}

}  // namespace inpaint_fast
