// Which of the CPU kernels' own SIMD kernels can run, and where they are the default: the
// attention's strip GEMM (csrc/cpu/strip_gemm.h: an AVX2 + FMA tile and an AVX-512 tile) and the
// fusion block's 3x3 conv row (csrc/cpu/fusion_block_conv3x3.h: AVX2 + FMA). The extension is built
// without -march flags, so each kernel carries its own target attribute and the CPU is checked at
// run time. The AVX2 kernels are the default only where AVX-512 is absent: there the libraries
// and the generic loops they replace run in zmm registers (measured for the strip GEMM on an
// AVX-512 Xeon: its AVX2 tiles ran at 0.59-0.69x MKL's speed, benchmarks/NOTES.md).
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

// True where the AVX2 kernels are the default: supported, and no AVX-512 (see the top).
inline bool avx2_kernels_preferred() {
  return avx2_kernels_supported() && !avx512_kernels_supported();
}

}  // namespace cpu
}  // namespace inpaint_fast
