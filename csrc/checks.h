// Input checks shared by the CPU and CUDA kernels, in the style of inpaint_fast/ops/_validation.py:
// every message names the op, the argument in backticks, what was expected and what was got, e.g.
//   fusion_block_fwd: `conv1_weight` must have shape (Cm, 6, 1, 1) = (*, 6, 1, 1), got [32, 5, 1, 1]
//
// The Python layer validates user input in full before any kernel runs; these checks guard the
// kernels' own assumptions for direct calls of the ops (torch.ops.inpaint_fast.*) and cost a few
// metadata reads. Only device-independent checks live here; each device's dtype envelope and its
// device and launch limits are in csrc/cpu/common.h and csrc/cuda/common.cuh.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "dtypes.h"

namespace inpaint_fast {

// A size in an expected shape that may be anything (printed as `*`).
constexpr int64_t kAnySize = -1;

// "(2, 3, *, *)" for {2, 3, kAnySize, kAnySize}.
inline std::string shape_pattern(std::initializer_list<int64_t> expected) {
  std::string s = "(";
  for (const int64_t e : expected) {
    if (s.size() > 1) s += ", ";
    s += e == kAnySize ? std::string("*") : std::to_string(e);
  }
  return s + ")";
}

inline void check_defined(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": `", name, "` must be a tensor, got an undefined tensor");
}

// `t` has `ndim` dimensions; `layout` names them, e.g. "(B, C, H, W)".
inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t ndim, const char* layout) {
  TORCH_CHECK(t.dim() == ndim, op, ": `", name, "` must be a ", ndim, "-D ", layout, " tensor, got shape ", t.sizes());
}

// `t.sizes()` equals `expected` (kAnySize: any size); `why` (optional) says where the sizes come from.
inline void check_shape(const char* op, const char* name, const at::Tensor& t, std::initializer_list<int64_t> expected,
                        const char* layout, const char* why = "") {
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  int64_t i = 0;
  for (const int64_t e : expected) {
    ok = ok && (e == kAnySize || t.size(i) == e);
    ++i;
  }
  TORCH_CHECK(ok, op, ": `", name, "` must have shape ", layout, " = ", shape_pattern(expected),
              *why ? std::string(" (") + why + ")" : std::string(), ", got ", t.sizes());
}

// `t` has `numel` elements; `what` (optional) is the count in the op's sizes, e.g. "Cm" or "3 * c".
inline void check_numel(const char* op, const char* name, const at::Tensor& t, int64_t numel,
                        const char* what = nullptr) {
  TORCH_CHECK(t.numel() == numel, op, ": `", name, "` must have ", what ? std::string(what) + " = " : std::string(),
              numel, " elements, got shape ", t.sizes());
}

// A one-element tensor, such as PIC's gates `gamma` and `alpha` (shape () or (1,)).
inline void check_one_element(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.numel() == 1, op, ": `", name, "` must have exactly one element, got shape ", t.sizes());
}

inline void check_nonempty(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.numel() > 0, op, ": `", name, "` must not be empty, got shape ", t.sizes());
}

inline void check_same_shape(const char* op, const char* name, const at::Tensor& t, const char* like_name,
                             const at::Tensor& like) {
  TORCH_CHECK(t.sizes() == like.sizes(), op, ": `", name, "` must have the shape of `", like_name, "`, ",
              like.sizes(), ", got ", t.sizes());
}

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_floating_point(), op, ": `", name, "` must be floating point, got ", dtype_name(t.scalar_type()));
}

inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const char* like_name,
                             const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": `", name, "` has dtype ", dtype_name(t.scalar_type()),
              " but `", like_name, "` has ", dtype_name(like.scalar_type()), "; they must match");
}

// A device's dtype envelope: `supported` says whether `t`'s dtype is in it, `envelope` what it is
// (e.g. "the CPU kernels support float32, float64 and bfloat16"). Each device states its envelope
// once (csrc/cpu/common.h, csrc/cuda/common.cuh) on top of this.
inline void check_dtype(const char* op, const char* name, const at::Tensor& t, bool supported, const char* envelope) {
  TORCH_CHECK(supported, op, ": `", name, "` has dtype ", dtype_name(t.scalar_type()), "; ", envelope);
}

}  // namespace inpaint_fast
