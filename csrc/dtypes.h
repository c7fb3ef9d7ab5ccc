// The dtype rule shared by the CPU and CUDA kernels, and dtype names for their messages.
#pragma once

#include <c10/core/ScalarType.h>

#include <utility>

namespace inpaint_fast {

// The dtype of an op's statistics (the attention's lse, the fusion block's BatchNorm mean / var)
// and of its accumulation: float64 for float64 inputs, float32 for every other floating dtype.
// The schemas state it (inpaint_fast/ops/schemas.inc) and the fake kernels promise it (the same
// rule in Python: inpaint_fast.dtypes.accumulate_dtype), so every kernel takes it from here.
inline at::ScalarType accumulate_dtype(at::ScalarType st) {
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

// The name Python gives a dtype (float32, bfloat16, ...), so that C++ messages read like those of
// inpaint_fast/ops/_validation.py rather than ATen's "Float" / "BFloat16".
inline const char* dtype_name(at::ScalarType st) {
  constexpr std::pair<at::ScalarType, const char*> kNames[] = {
      {at::kFloat, "float32"}, {at::kDouble, "float64"}, {at::kHalf, "float16"}, {at::kBFloat16, "bfloat16"},
      {at::kInt, "int32"},     {at::kLong, "int64"},     {at::kBool, "bool"}};
  for (const auto& [type, name] : kNames) {
    if (type == st) return name;
  }
  return c10::toString(st);
}

}  // namespace inpaint_fast
