// What the CPU kernels (csrc/cpu/*.cpp) share beyond the device-independent checks of
// csrc/checks.h: their dtype envelope. (csrc/cuda/common.cuh is the CUDA counterpart; the vector
// helpers of the row kernels are in csrc/cpu/simd.h.)
#pragma once

#include <ATen/ATen.h>

#include "../checks.h"

namespace inpaint_fast {
namespace cpu {

// The dtypes the CPU kernels serve: float32 and float64 in their own type, bfloat16 through
// float32 (accumulate_dtype). The list is CPU_KERNEL_DTYPES of inpaint_fast/ops/_registration.py,
// which sends float16 on the CPU to the reference backend.
inline void check_cpu_dtype(const char* op, const char* name, const at::Tensor& t) {
  const at::ScalarType st = t.scalar_type();
  check_dtype(op, name, t, st == at::kFloat || st == at::kDouble || st == at::kBFloat16,
              "the CPU kernels support float32, float64 and bfloat16 (float16: use backend='reference')");
}

}  // namespace cpu
}  // namespace inpaint_fast
