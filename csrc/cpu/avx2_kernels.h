// When the CPU kernels' own AVX2 + FMA kernels run (csrc/cpu/strip_gemm.h, the attention's strip
// GEMM; csrc/cpu/fusion_block_conv3x3.h, the fusion block's 3x3 conv row): they can wherever the
// CPU has AVX2 and FMA, checked at run time since the extension is built without -march flags,
// and they are the default only where AVX-512 is absent. There the libraries and the generic
// loops they replace run in zmm registers, and these ymm kernels have not been measured.
#pragma once

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define IPF_AVX2_KERNELS 1
#else
#define IPF_AVX2_KERNELS 0
#endif

namespace inpaint_fast {
namespace cpu {

// True where the AVX2 kernels can run: AVX2 and FMA present.
inline bool avx2_kernels_supported() {
#if IPF_AVX2_KERNELS
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return supported;
#else
  return false;
#endif
}

// True where they are the default: supported, and no AVX-512 (see the top).
inline bool avx2_kernels_preferred() {
#if IPF_AVX2_KERNELS
  static const bool preferred = avx2_kernels_supported() && !__builtin_cpu_supports("avx512f");
  return preferred;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace inpaint_fast
