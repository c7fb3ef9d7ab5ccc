// The fusion block's 16 parameter tensors as one struct, and the structural checks of its inputs,
// shared by the CPU kernels (csrc/cpu/fusion_block.cpp) and the CUDA kernels
// (csrc/cuda/fusion_block.cu).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

#include "checks.h"

namespace inpaint_fast {

// What the four BatchNorm statistics of a FusionBlockParams are, which also names them: the
// running statistics in the forward (`bn1_running_mean`, ...), the statistics the forward
// normalised with in the backward (`bn1_mean`, ...).
enum class BnStats { kRunning, kFromForward };

// The sizes of one call: feat (B, c, h, w), image (B, 3, H, W), Cm = conv1's output channels and
// A = c_alpha.
struct FusionBlockDims {
  int64_t B, c, h, w, H, W, Cm, A;
};

// The 16 parameter tensors of fusion_block_fwd / fusion_block_bwd, in the order of their schemas
// (inpaint_fast/ops/schemas.inc, which csrc/ops.cpp defines the ops from). fusion_block_fwd_op /
// fusion_block_bwd_op below build one from the ops' arguments and pass it to each backend's
// kernels, so that a parameter added or renamed in the schemas is one field, one for_each line and
// one argument of each of those two here.
struct FusionBlockParams {
  const at::Tensor &map_weight, &map_bias, &conv1_weight, &conv1_bias, &bn1_weight, &bn1_bias, &bn1_mean, &bn1_var,
      &conv2_weight, &conv2_bias, &bn2_weight, &bn2_bias, &bn2_mean, &bn2_var, &conv3_weight, &conv3_bias;
  BnStats stats;

  // Calls fn(name, tensor, numel, count) for the 16 tensors in schema order: the argument's name in
  // the op's schema, and how many elements it has for the sizes d, as a number and in the sizes'
  // terms (nullptr where the number says it all).
  template <typename Fn>
  void for_each(const FusionBlockDims& d, Fn&& fn) const {
    const bool running = stats == BnStats::kRunning;
    fn("map_weight", map_weight, 3 * d.c, "3 * c");
    fn("map_bias", map_bias, int64_t{3}, nullptr);
    fn("conv1_weight", conv1_weight, 6 * d.Cm, "6 * Cm");
    fn("conv1_bias", conv1_bias, d.Cm, "Cm");
    fn("bn1_weight", bn1_weight, d.Cm, "Cm");
    fn("bn1_bias", bn1_bias, d.Cm, "Cm");
    fn(running ? "bn1_running_mean" : "bn1_mean", bn1_mean, d.Cm, "Cm");
    fn(running ? "bn1_running_var" : "bn1_var", bn1_var, d.Cm, "Cm");
    fn("conv2_weight", conv2_weight, 9 * d.A * d.Cm, "9 * A * Cm");
    fn("conv2_bias", conv2_bias, d.A, "A");
    fn("bn2_weight", bn2_weight, d.A, "A");
    fn("bn2_bias", bn2_bias, d.A, "A");
    fn(running ? "bn2_running_mean" : "bn2_mean", bn2_mean, d.A, "A");
    fn(running ? "bn2_running_var" : "bn2_var", bn2_var, d.A, "A");
    fn("conv3_weight", conv3_weight, d.A * d.A, "A * A");
    fn("conv3_bias", conv3_bias, d.A, "A");
  }
};

// The structural checks every backend of the block needs, for the forward and the backward: ranks
// and shapes of feat and image, defined floating parameters of the sizes that c, Cm (from
// conv1_weight) and A (from conv3_weight) imply, and more than one value per BatchNorm channel in
// training (the batch variance is undefined otherwise, and PyTorch's batch_norm refuses it too).
// Dtypes and devices are the caller's: they differ by device.
inline FusionBlockDims check_fusion_block_params(const char* op, const at::Tensor& feat, const at::Tensor& image,
                                                 const FusionBlockParams& p, bool training) {
  check_defined(op, "feat", feat);
  check_defined(op, "image", image);
  check_dim(op, "feat", feat, 4, "(B, c, h, w)");
  check_dim(op, "image", image, 4, "(B, 3, H, W)");
  check_shape(op, "image", image, {feat.size(0), 3, kAnySize, kAnySize}, "(B, 3, H, W)",
              "the batch of `feat`, 3 colour channels");
  check_nonempty(op, "feat", feat);
  check_nonempty(op, "image", image);
  check_floating(op, "image", image);
  FusionBlockDims d{feat.size(0), feat.size(1), feat.size(2), feat.size(3), image.size(2), image.size(3), 0, 0};
  check_defined(op, "conv1_weight", p.conv1_weight);
  check_shape(op, "conv1_weight", p.conv1_weight, {kAnySize, 6, 1, 1}, "(Cm, 6, 1, 1)");
  d.Cm = p.conv1_weight.size(0);
  check_defined(op, "conv3_weight", p.conv3_weight);
  TORCH_CHECK(p.conv3_weight.dim() == 4 && (p.conv3_weight.size(0) == 1 || p.conv3_weight.size(0) == 3), op,
              ": `conv3_weight` must be a 4-D (A, A, 1, 1) tensor with A = c_alpha in (1, 3), got shape ",
              p.conv3_weight.sizes());
  d.A = p.conv3_weight.size(0);
  check_defined(op, "conv2_weight", p.conv2_weight);
  check_shape(op, "conv2_weight", p.conv2_weight, {d.A, d.Cm, 3, 3}, "(A, Cm, 3, 3)");
  p.for_each(d, [&](const char* name, const at::Tensor& t, int64_t numel, const char* count) {
    check_defined(op, name, t);
    check_floating(op, name, t);
    check_numel(op, name, t, numel, count);
  });
  TORCH_CHECK(!training || d.B * d.h * d.w >= 2, op,
              ": training-mode BatchNorm needs more than one value per channel (B * h * w >= 2), got B * h * w = ",
              d.B * d.h * d.w);
  return d;
}

// A gradient of an output of shape (B, C, h, w). One that autograd did not materialise may arrive
// undefined or as (0,), and means zero: returns false for it, true for a gradient of that shape.
inline bool check_fusion_block_grad(const char* op, const char* name, const at::Tensor& g, const FusionBlockDims& d,
                                    int64_t C, const char* layout) {
  if (!g.defined() || g.numel() == 0) return false;
  check_shape(op, name, g, {d.B, C, d.h, d.w}, layout, "the output it is the gradient of");
  return true;
}

// What the ops return: (out, alpha, raw, bn1_mean, bn1_var, bn2_mean, bn2_var) and (grad_feat,
// grad_image_resized, then the 12 trainable parameters' gradients in schema order).
using FusionBlockForward =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using FusionBlockBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                       at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                       at::Tensor, at::Tensor>;
using FusionBlockForwardFn = FusionBlockForward (*)(const at::Tensor& feat, const at::Tensor& image,
                                                    const FusionBlockParams& params, bool training, double eps);
using FusionBlockBackwardFn = FusionBlockBackward (*)(const at::Tensor& grad_out, const at::Tensor& grad_alpha,
                                                      const at::Tensor& grad_raw, const at::Tensor& feat,
                                                      const at::Tensor& image, const FusionBlockParams& params,
                                                      bool training, double eps);

// The ops' flat signatures, written once for every device: each backend implements
// FusionBlockForwardFn / FusionBlockBackwardFn on a FusionBlockParams and registers
// `&fusion_block_fwd_op<its forward>` (TORCH_LIBRARY_IMPL needs the schema's exact argument list).
template <FusionBlockForwardFn Forward>
FusionBlockForward fusion_block_fwd_op(const at::Tensor& feat, const at::Tensor& image, const at::Tensor& map_weight,
                                       const at::Tensor& map_bias, const at::Tensor& conv1_weight,
                                       const at::Tensor& conv1_bias, const at::Tensor& bn1_weight,
                                       const at::Tensor& bn1_bias, const at::Tensor& bn1_running_mean,
                                       const at::Tensor& bn1_running_var, const at::Tensor& conv2_weight,
                                       const at::Tensor& conv2_bias, const at::Tensor& bn2_weight,
                                       const at::Tensor& bn2_bias, const at::Tensor& bn2_running_mean,
                                       const at::Tensor& bn2_running_var, const at::Tensor& conv3_weight,
                                       const at::Tensor& conv3_bias, bool training, double eps) {
  const FusionBlockParams params{map_weight,   map_bias,         conv1_weight,    conv1_bias,   bn1_weight,
                                 bn1_bias,     bn1_running_mean, bn1_running_var, conv2_weight, conv2_bias,
                                 bn2_weight,   bn2_bias,         bn2_running_mean, bn2_running_var, conv3_weight,
                                 conv3_bias,   BnStats::kRunning};
  return Forward(feat, image, params, training, eps);
}

template <FusionBlockBackwardFn Backward>
FusionBlockBackward fusion_block_bwd_op(const at::Tensor& grad_out, const at::Tensor& grad_alpha,
                                        const at::Tensor& grad_raw, const at::Tensor& feat, const at::Tensor& image,
                                        const at::Tensor& map_weight, const at::Tensor& map_bias,
                                        const at::Tensor& conv1_weight, const at::Tensor& conv1_bias,
                                        const at::Tensor& bn1_weight, const at::Tensor& bn1_bias,
                                        const at::Tensor& bn1_mean, const at::Tensor& bn1_var,
                                        const at::Tensor& conv2_weight, const at::Tensor& conv2_bias,
                                        const at::Tensor& bn2_weight, const at::Tensor& bn2_bias,
                                        const at::Tensor& bn2_mean, const at::Tensor& bn2_var,
                                        const at::Tensor& conv3_weight, const at::Tensor& conv3_bias, bool training,
                                        double eps) {
  const FusionBlockParams params{map_weight, map_bias,  conv1_weight, conv1_bias, bn1_weight,   bn1_bias,
                                 bn1_mean,   bn1_var,   conv2_weight, conv2_bias, bn2_weight,   bn2_bias,
                                 bn2_mean,   bn2_var,   conv3_weight, conv3_bias, BnStats::kFromForward};
  return Backward(grad_out, grad_alpha, grad_raw, feat, image, params, training, eps);
}

}  // namespace inpaint_fast
