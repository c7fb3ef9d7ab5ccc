// Which of the CPU kernels' own SIMD kernels can run: the attention's strip GEMM
// (csrc/cpu/strip_gemm.h: AVX2 + FMA and AVX-512 tiles) and the fusion block's 3x3 conv rows
// (csrc/cpu/fusion_block_conv3x3.h: AVX2 + FMA). The extension is built without -march flags, so
// each kernel carries its own target attribute and the CPU is checked at run time. Where each is
// the default is its caller's choice, measured (strip_gemm_choice in short_long_attention.cpp,
// conv3x3_avx2_choice in fusion_block.cpp).
#pragma once

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define IPF_X86_KERNELS 1
#else
#define IPF_X86_KERNELS 0
#endif

namespace inpaint_fast {
namespace cpu {

// True where the AVX2 kernels can run: AVX2 and FMA present.
inline bool avx2_kernels_supported() {
#if IPF_X86_KERNELS
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return supported;
#else
  return false;
#endif
}

// True where the AVX-512 kernels can run: AVX-512 Foundation present (all they use).
inline bool avx512_kernels_supported() {
#if IPF_X86_KERNELS
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
  }();
  return supported;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace inpaint_fast
