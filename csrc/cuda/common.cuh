// Helpers shared by the CUDA kernels of inpaint_fast (csrc/cuda/*.cu): the CUDA-specific input checks
// (the device-independent ones are csrc/checks.h's), the current stream, float conversions of the
// storage dtypes, and small device utilities.
//
// Headers: only c10/cuda (stream, guard, launch checks) and ATen core are used, never
// ATen/cuda/CUDAContext.h. The latter pulls in cuBLAS/cuSPARSE headers that a bare CUDA toolkit
// (the CI machines' nvcc) does not ship, and nothing here needs a library handle.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../checks.h"

namespace inpaint_fast {
namespace cuda {

// ---- host-side checks ----------------------------------------------------------------------------
// The CUDA-specific ones, on top of the device-independent checks of csrc/checks.h.

// `t` is on `device`, the device of the call's other inputs.
inline void check_device(const char* op, const char* name, const at::Tensor& t, const at::Device& device) {
  TORCH_CHECK(t.device() == device, op, ": `", name, "` is on ", t.device(), " but the other inputs are on ", device,
              "; all inputs must be on one device");
}

// The CUDA kernels' dtype envelope: float32, float16 and bfloat16 (inpaint_fast/ops/_registration.py's
// CUDA_KERNEL_DTYPES).
inline void check_cuda_dtype(const char* op, const char* name, const at::Tensor& t) {
  const at::ScalarType st = t.scalar_type();
  check_dtype(op, name, t, st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "the CUDA kernels support float32, float16 and bfloat16 (float64: use backend='cpu' or 'reference')");
}

// `t`, an input the kernels read, is a defined CUDA tensor on `device` in the dtype envelope; `name`
// is the argument's name in the op schema, so the message says which input is wrong.
inline void check_cuda_float(const char* op, const char* name, const at::Tensor& t, const at::Device& device) {
  check_defined(op, name, t);
  TORCH_CHECK(t.is_cuda(), op, ": `", name, "` must be a CUDA tensor, got one on ", t.device());
  check_device(op, name, t, device);
  check_cuda_dtype(op, name, t);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Largest grid.y / grid.z extent (the x extent is 2^31 - 1).
constexpr int64_t kMaxGridYZ = 65535;
// Largest size the kernels index with int (positions, channels, rows): element offsets are int64,
// and the margin below 2^31 keeps sums of such indices from overflowing.
constexpr int64_t kMaxIndexSize = (int64_t{1} << 30) - 1;

// A launch limit: `what` (e.g. "the batch size B") is `value`, at most `limit`, which `limit_name`
// names (e.g. "the CUDA grid's y extent").
inline void check_launch_limit(const char* op, const char* what, int64_t value, int64_t limit,
                               const char* limit_name) {
  TORCH_CHECK(value <= limit, op, ": ", what, " must be at most ", limit, " (", limit_name, "), got ", value);
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// ---- storage dtype <-> float ---------------------------------------------------------------------

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// The CUDA type that stores each ATen dtype the kernels accept (c10::Half and c10::BFloat16 have
// the same bits as __half and __nv_bfloat16, so data pointers are reinterpreted).
template <typename scalar_t>
struct DeviceType {
  using type = scalar_t;
};
template <>
struct DeviceType<c10::Half> {
  using type = __half;
};
template <>
struct DeviceType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
inline T* device_ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// Calls body(T{}) with T the device storage type of `st` (float, __half, __nv_bfloat16); the body
// is a generic lambda that takes `auto tag` and uses `decltype(tag)` (C++17: no template lambdas).
template <typename Body>
inline void dispatch_float_types(at::ScalarType st, const char* op, Body&& body) {
  switch (st) {
    case at::kFloat:
      body(float{});
      break;
    case at::kHalf:
      body(__half{});
      break;
    case at::kBFloat16:
      body(__nv_bfloat16{});
      break;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", dtype_name(st));
  }
}

// ---- device utilities ----------------------------------------------------------------------------

__device__ __forceinline__ float sigmoidf_acc(float v) { return 1.0f / (1.0f + __expf(-v)); }

__device__ __forceinline__ float lrelu(float v, float slope) { return v > 0.0f ? v : v * slope; }

// Sum over the 32 lanes of a warp; every lane gets the result.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide sum in a fixed order (lanes, then warps in index order): deterministic. `scratch`
// holds one value per warp; every thread gets the result. All threads of the block must call it.
template <typename Acc>
__device__ __forceinline__ Acc block_sum(Acc v, Acc* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  Acc total = Acc(0);
  for (int w = 0; w < nwarps; ++w) total += scratch[w];
  return total;
}

}  // namespace cuda
}  // namespace inpaint_fast
