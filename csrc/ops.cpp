// Operator schemas of the inpaint_fast library: the one place where every op is declared.
//
// Each backend registers its kernels for these schemas in its own TORCH_LIBRARY_IMPL block
// (csrc/cpu/*.cpp for CPU, csrc/cuda/*.cu for CUDA). Python (inpaint_fast/ops/) registers the
// fake (meta) kernels and the autograd formulas next to the public wrappers.
//
// Conventions shared by all ops:
//  * Outputs are freshly allocated, contiguous NCHW tensors (the fake kernels promise exactly that).
//  * An output that does not exist for a call (e.g. `cf` when `pre` is None) is returned as an
//    empty tensor of shape (0,), because schemas cannot return None.
//  * Statistics (lse, BN mean/var) are float32 for half/bfloat16/float32 inputs and float64 for
//    float64 inputs.

#include <torch/library.h>

#include <string>

namespace {

// One signature per op, shared by every backend's op name below: the compiled kernels (CPU and
// CUDA dispatch keys of `<op>_fwd`) and the Triton kernels (`triton_<op>_fwd`, registered from
// Python). Triton needs its own op names because it serves the same dispatch key as CUDA C++.

// ---- short+long-range attention (PIC's Auto_Attn core), docs/short_long_attention.md ------------------------
// q (B,Cq,H,W), x (B,C,H,W), gamma: 1 element, pre (B,Cp,H,W)?, mask (B,1,H,W)?, alpha: 1 element?
// y (B,C,H,W) = gamma * sa + x;   cf (B,Cp,H,W) = alpha*(1-mask)*ca + mask*pre   [(0,) without pre]
// sa = x A^T and ca = pre A^T are the un-gated attention outputs (saved for the backward, since
// gamma and alpha start at 0 in PIC); lse (B,H,W) is the row log-sum-exp of scale * q^T q.
constexpr const char* kShortLongAttentionFwd =
    "(Tensor q, Tensor x, Tensor gamma, Tensor? pre, Tensor? mask, Tensor? alpha, float scale) -> "
    "(Tensor y, Tensor cf, Tensor sa, Tensor ca, Tensor lse)";
// Gradients for every differentiable input; grad_pre/grad_mask/grad_alpha are (0,) without pre.
// grad_gamma and grad_alpha have the shapes of gamma and alpha. grad_cf is (0,) without pre.
constexpr const char* kShortLongAttentionBwd =
    "(Tensor grad_y, Tensor grad_cf, Tensor q, Tensor x, Tensor gamma, Tensor? pre, Tensor? mask, "
    "Tensor? alpha, Tensor sa, Tensor ca, Tensor lse, float scale) -> (Tensor grad_q, Tensor grad_x, "
    "Tensor grad_gamma, Tensor grad_pre, Tensor grad_mask, Tensor grad_alpha)";

// ---- fusion block (DFNet), docs/fusion_block.md -----------------------------------------------------
// feat (B,c,h,w); image (B,3,H,W) full resolution, resized to (h,w) inside (bilinear,
// align_corners=False). Weights: map (3,c,1,1),(3); conv1 (Cm,6,1,1),(Cm); bn1 (Cm) x4;
// conv2 (A,Cm,3,3),(A); bn2 (A) x4; conv3 (A,A,1,1),(A). A = c_alpha (1 or 3), Cm = 32 in DFNet.
// training=True: BN uses batch statistics, returned as bn*_mean / bn*_var (biased variance) so
// the caller can update running stats; training=False: the given running stats are used and
// returned (as copies). Returns out Y (B,3,h,w), alpha (B,A,h,w), raw R (B,3,h,w).
constexpr const char* kFusionBlockFwd =
    "(Tensor feat, Tensor image, Tensor map_weight, Tensor map_bias, Tensor conv1_weight, "
    "Tensor conv1_bias, Tensor bn1_weight, Tensor bn1_bias, Tensor bn1_running_mean, "
    "Tensor bn1_running_var, Tensor conv2_weight, Tensor conv2_bias, Tensor bn2_weight, "
    "Tensor bn2_bias, Tensor bn2_running_mean, Tensor bn2_running_var, Tensor conv3_weight, "
    "Tensor conv3_bias, bool training, float eps) -> (Tensor out, Tensor alpha, Tensor raw, "
    "Tensor bn1_mean, Tensor bn1_var, Tensor bn2_mean, Tensor bn2_var)";
// bn*_mean / bn*_var: the statistics the forward normalised with (batch stats in training,
// running stats in eval). grad_image_resized (B,3,h,w) is the gradient w.r.t. the resized image
// X_k; Python maps it back to the full-resolution image with the bilinear backward.
constexpr const char* kFusionBlockBwd =
    "(Tensor grad_out, Tensor grad_alpha, Tensor grad_raw, Tensor feat, Tensor image, "
    "Tensor map_weight, Tensor map_bias, Tensor conv1_weight, Tensor conv1_bias, Tensor bn1_weight, "
    "Tensor bn1_bias, Tensor bn1_mean, Tensor bn1_var, Tensor conv2_weight, Tensor conv2_bias, "
    "Tensor bn2_weight, Tensor bn2_bias, Tensor bn2_mean, Tensor bn2_var, Tensor conv3_weight, "
    "Tensor conv3_bias, bool training, float eps) -> (Tensor grad_feat, Tensor grad_image_resized, "
    "Tensor grad_map_weight, Tensor grad_map_bias, Tensor grad_conv1_weight, Tensor grad_conv1_bias, "
    "Tensor grad_bn1_weight, Tensor grad_bn1_bias, Tensor grad_conv2_weight, Tensor grad_conv2_bias, "
    "Tensor grad_bn2_weight, Tensor grad_bn2_bias, Tensor grad_conv3_weight, Tensor grad_conv3_bias)";

}  // namespace

TORCH_LIBRARY(inpaint_fast, m) {
  for (const std::string prefix : {"", "triton_"}) {
    // Library::def parses the schema string immediately, so a temporary's c_str() is enough.
    m.def((prefix + "short_long_attention_fwd" + kShortLongAttentionFwd).c_str());
    m.def((prefix + "short_long_attention_bwd" + kShortLongAttentionBwd).c_str());
    m.def((prefix + "fusion_block_fwd" + kFusionBlockFwd).c_str());
    m.def((prefix + "fusion_block_bwd" + kFusionBlockBwd).c_str());
  }
}
