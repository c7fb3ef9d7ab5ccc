// CUDA kernels of the short+long-range attention (PIC's Auto_Attn core), docs/short_long_attention.md:
// inpaint_fast::short_long_attention_fwd / _bwd for CUDA tensors (schemas in inpaint_fast/ops/schemas.inc; the
// contract is the CPU kernel's, csrc/cpu/short_long_attention.cpp).
//
// Notation: N = H*W positions (row-major), E = scale * q^T q, P = softmax over keys of E,
// V = [x; pre] (Ctot = C + Cp value channels), O = V P^T = [sa; ca], lse_i = logsumexp_j E_ij.
//
// Layout. NCHW tensors are channel-major per image: channel c of image b is a contiguous run of N
// positions. That is the "transposed" operand layout of both products (E = Q_I^T Q_J reduces over
// channels; O = V P^T reduces over positions), so every tile is loaded with coalesced reads along
// positions straight from the NCHW tensors. Inputs are made contiguous explicitly by the launchers
// (a no-op for the usual NCHW tensors; channels_last or sliced inputs are copied once).
//
// Arithmetic. float16 / bfloat16 inputs run the forward on tensor cores (attn_fwd_mma_kernel:
// mma.sync m16n8k16 through inline PTX, float32 accumulators). float32 inputs run every product on
// CUDA cores in float32 (FFMA), so they are float32-accurate whatever
// torch.get_float32_matmul_precision() says (TF32 is allowed by "high"/"medium", never required;
// a TF32 path is future work). The backward runs on CUDA cores in float32 for all three dtypes
// (half-precision tiles are converted to float when staged in shared memory): correct first, a
// tensor-core backward is future work. INPAINT_FAST_CUDA_SIMT=1 sends half-precision forwards to
// the CUDA-core kernel too (for comparisons on a GPU).
//
// CUDA-core kernels (BM = BN = 64 positions per tile, 256 threads, each thread a 4 x 4 block of a
// 64 x 64 score tile; thread (tr, tc) = (tid / 16, tid % 16) owns rows 4 tr .. 4 tr + 3 and columns
// tc + 16 k, k = 0..3, so the 16 threads of a row group are one half-warp and row reductions are
// four xor-shuffles):
//  * attn_fwd_kernel — grid (ceil(N/64), B, ceil(Ctot/128)). One block: 64 query rows and one
//    128-channel chunk of [x; pre]. Online softmax (max subtracted in natural units, then exp2 —
//    the CPU kernel's accuracy argument), fp32 accumulators in registers (4 rows x 8 channels per
//    thread), output staged through shared memory so the NCHW writes are coalesced. Both value
//    streams share one pass: a chunk may straddle x and pre. With PIC's C = Cp = 128 there are two
//    chunks, so E is computed twice per tile (Cq = 32 FMAs per score against 128 per chunk: a 25%
//    overhead, accepted to keep the accumulators in registers).
//  * attn_bwd_pre_kernel — one thread per position: dA = [gamma dy; alpha (1 - m) dcf] (fp32),
//    delta_i = sum_c dA_ci O_ci over both streams (FlashAttention's rowsum(dO o O) form, from the
//    saved sa/ca), grad_mask, and per-block partial sums of grad_gamma / grad_alpha (reduced
//    afterwards by a deterministic at::sum: no atomics anywhere).
//  * attn_bwd_dq_kernel — grid (ceil(N/64), B): query block I, loops over key blocks J;
//    recomputes P from lse, dP = dA_I^T V_J over all Ctot channels, dS = P o (dP - delta) and
//    accumulates the query-side half (dS Q_J^T) of dq into a float32 buffer.
//  * attn_bwd_dkv_kernel — grid (ceil(N/64), B, ceil(Ctot/128)): key block J, loops over query
//    blocks I; works on the transposed tile (rows = keys): dV_J += P^T dA_I for its channel chunk,
//    and (chunk 0 only) the key-side half dS^T Q_I of dq, which it adds to the buffer to write
//    grad_q = scale (dS + dS^T) q. q is query and key at once, so both halves land in one tensor;
//    two kernels keep the sum atomics-free and deterministic.

#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "../dtypes.h"
#include "../short_long_attention_inputs.h"
#include "common.cuh"

namespace inpaint_fast {
namespace cuda {
namespace {

constexpr int kTile = 64;        // BM = BN: positions per query / key tile
constexpr int kThreads = 256;    // 16 x 16 threads, 4 x 4 scores each
constexpr int kQC = 32;          // q channels are padded to a multiple of this
constexpr int kCV = 128;         // value channels per block (grid.z chunk) in fwd and dkv
constexpr int kVC = 64;          // value channels per shared-memory sub-chunk (2 per chunk)
constexpr int kDC = 32;          // value channels per step of the dP reduction in the backward
constexpr int kKStride = kTile + 1;  // [channel][position] tiles read along channels: odd stride
constexpr int kPStride = kTile + 4;  // [position][4 rows] tiles read as float4: 16-byte rows
constexpr float kLog2e = 1.4426950408889634f;

__host__ __device__ constexpr int round_up(int v, int m) { return (v + m - 1) / m * m; }

// Copies channels [c0, c0 + rows) x positions [n0, n0 + kTile) of a channel-major (channels, N)
// plane into dst[c * stride + j] as float, zero outside the plane. Reads are coalesced along j.
template <typename T>
__device__ __forceinline__ void load_tile(float* dst, int stride, const T* __restrict__ src, int channels, int c0,
                                          int rows, int n0, int N) {
  for (int idx = threadIdx.x; idx < rows * kTile; idx += kThreads) {
    const int c = idx / kTile, j = idx % kTile;
    const int gc = c0 + c, gj = n0 + j;
    dst[c * stride + j] = (gc < channels && gj < N) ? to_float(src[static_cast<int64_t>(gc) * N + gj]) : 0.0f;
  }
}

// The same for the concatenated values V = [x; pre] (channels [0, C) from x, [C, C + Cp) from pre).
template <typename T>
__device__ __forceinline__ void load_v_tile(float* dst, int stride, const T* __restrict__ xb, const T* __restrict__ pb,
                                            int C, int Cp, int c0, int rows, int n0, int N) {
  for (int idx = threadIdx.x; idx < rows * kTile; idx += kThreads) {
    const int c = idx / kTile, j = idx % kTile;
    const int gc = c0 + c, gj = n0 + j;
    float v = 0.0f;
    if (gj < N) {
      if (gc < C) {
        v = to_float(xb[static_cast<int64_t>(gc) * N + gj]);
      } else if (gc < C + Cp) {
        v = to_float(pb[static_cast<int64_t>(gc - C) * N + gj]);
      }
    }
    dst[c * stride + j] = v;
  }
}

// acc[r][k] += sum_c A[c][4 tr + r] * Bm[c][tc + 16 k] over c in [0, channels): the 4 x 4 block of
// a (64 x 64) = A^T Bm product owned by this thread. A has row stride a_stride (a multiple of 4,
// read as float4), Bm has row stride b_stride.
__device__ __forceinline__ void tile_product(float (&acc)[4][4], const float* A, int a_stride, const float* Bm,
                                             int b_stride, int channels) {
  const int tr = threadIdx.x >> 4, tc = threadIdx.x & 15;
#pragma unroll 4
  for (int c = 0; c < channels; ++c) {
    const float4 a = *reinterpret_cast<const float4*>(A + c * a_stride + 4 * tr);
    float bv[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) bv[k] = Bm[c * b_stride + tc + 16 * k];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      acc[0][k] = fmaf(a.x, bv[k], acc[0][k]);
      acc[1][k] = fmaf(a.y, bv[k], acc[1][k]);
      acc[2][k] = fmaf(a.z, bv[k], acc[2][k]);
      acc[3][k] = fmaf(a.w, bv[k], acc[3][k]);
    }
  }
}

// Reductions over the 16 threads of a row group (one half-warp: lanes 0-15 or 16-31).
__device__ __forceinline__ float row_max16(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float row_sum16(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// acc[r][k] += sum_j Pt[j][4 tr + r] * Vs[(tc + 16 k)][j], j in [0, kTile): the value product of a
// 64-row tile (Pt holds the tile transposed, rows contiguous; Vs is [channel][position]).
template <int K>
__device__ __forceinline__ void value_product(float (&acc)[4][K], const float* Pt, const float* Vs) {
  const int tr = threadIdx.x >> 4, tc = threadIdx.x & 15;
#pragma unroll 4
  for (int j = 0; j < kTile; ++j) {
    const float4 p = *reinterpret_cast<const float4*>(Pt + j * kPStride + 4 * tr);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const float v = Vs[(tc + 16 * k) * kKStride + j];
      acc[0][k] = fmaf(p.x, v, acc[0][k]);
      acc[1][k] = fmaf(p.y, v, acc[1][k]);
      acc[2][k] = fmaf(p.z, v, acc[2][k]);
      acc[3][k] = fmaf(p.w, v, acc[3][k]);
    }
  }
}

// Stores a thread's 4 x 4 tile transposed: Pt[tc + 16 k][4 tr .. 4 tr + 3] = v[0..3][k].
__device__ __forceinline__ void store_transposed(float* Pt, const float (&v)[4][4]) {
  const int tr = threadIdx.x >> 4, tc = threadIdx.x & 15;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    *reinterpret_cast<float4*>(Pt + (tc + 16 * k) * kPStride + 4 * tr) = make_float4(v[0][k], v[1][k], v[2][k], v[3][k]);
  }
}

// ---- forward ---------------------------------------------------------------------------------------

// The forward's epilogue for 64 normalised value channels [cs, cs + 64) x 64 query rows staged in
// shared memory as Os[c * kPStride + row]: writes sa and y = gamma sa + x (channels < C), ca and
// cf = (1 - m)(alpha ca) + m pre (channels >= C). Consecutive threads take consecutive positions,
// so the NCHW reads and writes are coalesced. Called by all NT threads of the block.
template <typename T, int NT>
__device__ __forceinline__ void write_outputs(const float* Os, int cs, int i0, int b, int N, int C, int Cp, float gamma,
                                              float alpha, const T* __restrict__ x, const T* __restrict__ pre,
                                              const float* __restrict__ mask, T* __restrict__ y, T* __restrict__ cf,
                                              T* __restrict__ sa, T* __restrict__ ca) {
  const int Ctot = C + Cp;
  for (int idx = threadIdx.x; idx < kVC * kTile; idx += NT) {
    const int c = idx / kTile, r = idx % kTile;
    const int gc = cs + c, i = i0 + r;
    if (gc >= Ctot || i >= N) continue;
    const float ov = Os[c * kPStride + r];
    if (gc < C) {
      const int64_t off = (static_cast<int64_t>(b) * C + gc) * N + i;
      sa[off] = from_float<T>(ov);
      y[off] = from_float<T>(fmaf(gamma, ov, to_float(x[off])));
    } else {
      const int64_t off = (static_cast<int64_t>(b) * Cp + (gc - C)) * N + i;
      const float m = mask[static_cast<int64_t>(b) * N + i];
      ca[off] = from_float<T>(ov);
      // cf = (1 - m) * (alpha * ca) + m * pre, as the CPU kernel evaluates it: m = 1 returns pre
      // exactly and m = 0 exactly alpha * ca.
      cf[off] = from_float<T>((1.0f - m) * (alpha * ov) + m * to_float(pre[off]));
    }
  }
}

// Shared memory of the forward, in floats.
inline size_t fwd_smem_floats(int Cq) {
  const int cq_pad = round_up(Cq, kQC);
  const int kv = std::max({cq_pad * kKStride, kVC * kKStride, kVC * kPStride});
  return static_cast<size_t>(cq_pad) * kTile + kTile * kPStride + kv;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(
    const T* __restrict__ q, const T* __restrict__ x, const T* __restrict__ pre, const float* __restrict__ mask,
    const float* __restrict__ gamma_p, const float* __restrict__ alpha_p, T* __restrict__ y, T* __restrict__ cf,
    T* __restrict__ sa, T* __restrict__ ca, float* __restrict__ lse, int N, int Cq, int C, int Cp, float scale) {
  extern __shared__ __align__(16) float smem[];
  const int cq_pad = round_up(Cq, kQC);
  float* Qs = smem;                    // [cq_pad][kTile]: the query tile, channel-major
  float* Pt = Qs + cq_pad * kTile;     // [kTile keys][kPStride]: probabilities, transposed
  float* KV = Pt + kTile * kPStride;   // key tile [cq_pad][kKStride] | value sub-chunk | output stage

  const int tid = threadIdx.x, tr = tid >> 4, tc = tid & 15;
  const int i0 = blockIdx.x * kTile;
  const int b = blockIdx.y;
  const int c0 = blockIdx.z * kCV;
  const int Ctot = C + Cp;
  const T* qb = q + static_cast<int64_t>(b) * Cq * N;
  const T* xb = x + static_cast<int64_t>(b) * C * N;
  const T* pb = Cp > 0 ? pre + static_cast<int64_t>(b) * Cp * N : nullptr;

  load_tile(Qs, kTile, qb, Cq, 0, cq_pad, i0, N);

  float m_row[4], l_row[4], o[4][8];  // o[r][sub * 4 + k]: channel c0 + sub * kVC + tc + 16 k
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    m_row[r] = -INFINITY;
    l_row[r] = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k) o[r][k] = 0.0f;
  }

  for (int j0 = 0; j0 < N; j0 += kTile) {
    __syncthreads();  // the previous tile's value products are done with KV and Pt
    load_tile(KV, kKStride, qb, Cq, 0, cq_pad, j0, N);
    __syncthreads();
    float s[4][4] = {};
    tile_product(s, Qs, kTile, KV, kKStride, cq_pad);

    // Online softmax of the tile, rows 4 tr + r.
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        s[r][k] = (j0 + tc + 16 * k < N) ? s[r][k] * scale : -INFINITY;
        mx = fmaxf(mx, s[r][k]);
      }
      const float m_new = fmaxf(m_row[r], row_max16(mx));  // finite: every key tile has a valid key
      const float corr = exp2f((m_row[r] - m_new) * kLog2e);  // 0 on the first tile (m_row = -inf)
      float sum = 0.0f;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        s[r][k] = exp2f((s[r][k] - m_new) * kLog2e);
        sum += s[r][k];
      }
      l_row[r] = l_row[r] * corr + row_sum16(sum);
      m_row[r] = m_new;
#pragma unroll
      for (int k = 0; k < 8; ++k) o[r][k] *= corr;
    }
    store_transposed(Pt, s);

#pragma unroll
    for (int sub = 0; sub < kCV / kVC; ++sub) {
      const int cs = c0 + sub * kVC;
      if (cs < Ctot) {  // uniform over the block
        __syncthreads();  // Pt complete; KV no longer read
        load_v_tile(KV, kKStride, xb, pb, C, Cp, cs, kVC, j0, N);
        __syncthreads();
        float part[4][4];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int k = 0; k < 4; ++k) part[r][k] = o[r][sub * 4 + k];
        value_product<4>(part, Pt, KV);
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int k = 0; k < 4; ++k) o[r][sub * 4 + k] = part[r][k];
      }
    }
  }

  // lse = m + ln(l), written once per row (by chunk 0, column group 0).
  if (blockIdx.z == 0 && tc == 0) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = i0 + 4 * tr + r;
      if (i < N) lse[static_cast<int64_t>(b) * N + i] = m_row[r] + logf(l_row[r]);
    }
  }

  // Epilogue per 64-channel sub-chunk: normalise, stage [channel][row] in shared memory, then write
  // sa / y (channels < C) and ca / cf (channels >= C) with coalesced accesses along positions.
  const float gamma = *gamma_p;
  const float alpha = Cp > 0 ? *alpha_p : 0.0f;
  float inv_l[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) inv_l[r] = 1.0f / l_row[r];
#pragma unroll
  for (int sub = 0; sub < kCV / kVC; ++sub) {
    const int cs = c0 + sub * kVC;
    if (cs < Ctot) {
      __syncthreads();  // KV no longer read
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        *reinterpret_cast<float4*>(KV + (tc + 16 * k) * kPStride + 4 * tr) =
            make_float4(o[0][sub * 4 + k] * inv_l[0], o[1][sub * 4 + k] * inv_l[1], o[2][sub * 4 + k] * inv_l[2],
                        o[3][sub * 4 + k] * inv_l[3]);
      }
      __syncthreads();
      write_outputs<T, kThreads>(KV, cs, i0, b, N, C, Cp, gamma, alpha, x, pre, mask, y, cf, sa, ca);
    }
  }
}

// ---- forward on tensor cores (float16 / bfloat16) -------------------------------------------------
//
// attn_fwd_mma_kernel — the same contract and grid as attn_fwd_kernel, for half-precision inputs:
// both products run on tensor cores through mma.sync.m16n8k16 (inline PTX; fp16 or bf16 operands,
// float32 accumulators), FlashAttention-2's register scheme. 4 warps, each owns 16 of the block's
// 64 query rows; per 64-key tile a warp computes S (16 x 64: 8 n-tiles) from the q tiles in shared
// memory, updates the online softmax on the accumulator fragments (rows g and g + 8 of the warp's
// 16, g = lane / 4; a row's 16 values per tile live in the 4 lanes of a quad, reduced with two
// xor-shuffles), converts the probabilities straight into A fragments of the value product (the
// m16n8 accumulator layout of two adjacent n-tiles is the m16k16 A layout), and accumulates
// O (16 x 128 channels: 16 n-tiles, 64 floats per thread).
// Shared memory (bf16/fp16): q tiles position-major [64][Cq16 + 8] (query and key), the value
// tile channel-major [128][64 + 8] — the "+ 8" padding puts the 8 rows a fragment load touches in
// distinct banks. Tiles are loaded synchronously (no cp.async pipeline yet); P is rounded to the
// input dtype for the value product, l and m stay float32, as in FlashAttention.
// Written for sm_80+ (mma.sync m16n8k16 with bf16 needs sm_80); no wgmma (sm_90a) yet.

constexpr int kMmaThreads = 128;
constexpr int kVStride = kTile + 8;  // value tile row stride (elements)

template <typename T>
struct Mma;

template <>
struct Mma<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();  // never launched below sm_80 (the build targets sm_80 and sm_90 only)
#endif
  }
};

template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
  }
};

// Two consecutive 16-bit elements (the lower index in the low half) as one 32-bit register.
template <typename T>
__device__ __forceinline__ uint32_t ld2(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

inline int mma_q_stride(int Cq) { return round_up(Cq, 16) + 8; }

inline size_t fwd_mma_smem_bytes(int Cq, size_t elem) {
  const size_t tiles = (2 * static_cast<size_t>(kTile) * mma_q_stride(Cq) + static_cast<size_t>(kCV) * kVStride) * elem;
  // The epilogue stages 64 channels x 64 rows of float32 in the value tile's place.
  const size_t stage = static_cast<size_t>(kVC) * kPStride * sizeof(float);
  return std::max(tiles, 2 * static_cast<size_t>(kTile) * mma_q_stride(Cq) * elem + stage);
}

// Copies channels [0, rows) x positions [n0, n0 + 64) of a channel-major (channels, N) plane into
// a position-major tile dst[j * stride + c] (the transpose the fragments want), zero outside.
template <typename T, int NT>
__device__ __forceinline__ void load_tile_t(T* dst, int stride, const T* __restrict__ src, int channels, int rows, int n0,
                                            int N) {
  const T zero = from_float<T>(0.0f);
  for (int idx = threadIdx.x; idx < rows * kTile; idx += NT) {
    const int c = idx / kTile, j = idx % kTile;
    const int gj = n0 + j;
    dst[j * stride + c] = (c < channels && gj < N) ? src[static_cast<int64_t>(c) * N + gj] : zero;
  }
}

template <typename T>
__global__ void __launch_bounds__(kMmaThreads) attn_fwd_mma_kernel(
    const T* __restrict__ q, const T* __restrict__ x, const T* __restrict__ pre, const float* __restrict__ mask,
    const float* __restrict__ gamma_p, const float* __restrict__ alpha_p, T* __restrict__ y, T* __restrict__ cf,
    T* __restrict__ sa, T* __restrict__ ca, float* __restrict__ lse, int N, int Cq, int C, int Cp, float scale) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int cq16 = round_up(Cq, 16);
  const int qs = cq16 + 8;
  T* Qs = reinterpret_cast<T*>(smem_raw);  // [64 queries][qs]
  T* Ks = Qs + kTile * qs;                 // [64 keys][qs]
  T* Vs = Ks + kTile * qs;                 // [128 channels][kVStride]
  float* Os = reinterpret_cast<float*>(Vs);  // epilogue stage [64 channels][kPStride] (16-byte aligned: qs % 8 == 0)

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int wr = warp * 16;  // the warp's first row in the tile
  const int i0 = blockIdx.x * kTile, b = blockIdx.y, c0 = blockIdx.z * kCV;
  const int Ctot = C + Cp;
  const T* qb = q + static_cast<int64_t>(b) * Cq * N;
  const T* xb = x + static_cast<int64_t>(b) * C * N;
  const T* pb = Cp > 0 ? pre + static_cast<int64_t>(b) * Cp * N : nullptr;
  const T zero = from_float<T>(0.0f);

  load_tile_t<T, kMmaThreads>(Qs, qs, qb, Cq, cq16, i0, N);

  float o[kCV / 8][4];
#pragma unroll
  for (int vt = 0; vt < kCV / 8; ++vt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[vt][e] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY;  // rows wr + g and wr + g + 8
  float l0 = 0.0f, l1 = 0.0f;            // this thread's partial row sums (quad-reduced at the end)

  for (int j0 = 0; j0 < N; j0 += kTile) {
    __syncthreads();  // previous tile's Ks / Vs reads are done
    load_tile_t<T, kMmaThreads>(Ks, qs, qb, Cq, cq16, j0, N);
    for (int idx = tid; idx < kCV * kTile; idx += kMmaThreads) {
      const int c = idx / kTile, j = idx % kTile;
      const int gc = c0 + c, gj = j0 + j;
      T v = zero;
      if (gj < N) {
        if (gc < C) {
          v = xb[static_cast<int64_t>(gc) * N + gj];
        } else if (gc < Ctot) {
          v = pb[static_cast<int64_t>(gc - C) * N + gj];
        }
      }
      Vs[c * kVStride + j] = v;
    }
    __syncthreads();

    // S = Q_I^T Q_J for the warp's 16 rows x 64 keys.
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
    for (int kk = 0; kk < cq16; kk += 16) {
      uint32_t a[4];
      a[0] = ld2(Qs + (wr + g) * qs + kk + 2 * t);
      a[1] = ld2(Qs + (wr + g + 8) * qs + kk + 2 * t);
      a[2] = ld2(Qs + (wr + g) * qs + kk + 2 * t + 8);
      a[3] = ld2(Qs + (wr + g + 8) * qs + kk + 2 * t + 8);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const T* kp = Ks + (nt * 8 + g) * qs + kk + 2 * t;
        Mma<T>::run(s[nt], a, ld2(kp), ld2(kp + 8));
      }
    }

    // Online softmax (max subtracted in natural units, then exp2, as in the other kernels).
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = j0 + nt * 8 + 2 * t + (e & 1);
        s[nt][e] = col < N ? s[nt][e] * scale : -INFINITY;
      }
      mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
      mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {  // the 4 lanes of a quad hold one row
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);  // finite: every tile has a valid key
    const float corr0 = exp2f((m0 - mn0) * kLog2e), corr1 = exp2f((m1 - mn1) * kLog2e);
    m0 = mn0;
    m1 = mn1;
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      s[nt][0] = exp2f((s[nt][0] - mn0) * kLog2e);
      s[nt][1] = exp2f((s[nt][1] - mn0) * kLog2e);
      s[nt][2] = exp2f((s[nt][2] - mn1) * kLog2e);
      s[nt][3] = exp2f((s[nt][3] - mn1) * kLog2e);
      sum0 += s[nt][0] + s[nt][1];
      sum1 += s[nt][2] + s[nt][3];
    }
    l0 = l0 * corr0 + sum0;
    l1 = l1 * corr1 + sum1;
#pragma unroll
    for (int vt = 0; vt < kCV / 8; ++vt) {
      o[vt][0] *= corr0;
      o[vt][1] *= corr0;
      o[vt][2] *= corr1;
      o[vt][3] *= corr1;
    }

    // O += P V^T: P's accumulator fragments of n-tiles 2 kk and 2 kk + 1 are the A fragment of
    // keys [16 kk, 16 kk + 16).
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      uint32_t a[4];
      a[0] = Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]);
      a[1] = Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]);
      a[2] = Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int vt = 0; vt < kCV / 8; ++vt) {
        if (c0 + vt * 8 < Ctot) {  // warp-uniform: skips the chunk's empty channel tiles
          const T* vp = Vs + (vt * 8 + g) * kVStride + kk * 16 + 2 * t;
          Mma<T>::run(o[vt], a, ld2(vp), ld2(vp + 8));
        }
      }
    }
  }

#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  if (blockIdx.z == 0 && t == 0) {
    const int ia = i0 + wr + g, ib = ia + 8;
    if (ia < N) lse[static_cast<int64_t>(b) * N + ia] = m0 + logf(l0);
    if (ib < N) lse[static_cast<int64_t>(b) * N + ib] = m1 + logf(l1);
  }

  const float gamma = *gamma_p;
  const float alpha = Cp > 0 ? *alpha_p : 0.0f;
  const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
#pragma unroll
  for (int half = 0; half < kCV / kVC; ++half) {
    const int cs = c0 + half * kVC;
    if (cs < Ctot) {
      __syncthreads();  // Vs / the previous stage no longer read
#pragma unroll
      for (int v = 0; v < kVC / 8; ++v) {
        const int vt = half * (kVC / 8) + v;
        const int cl = v * 8 + 2 * t;  // channel within the stage
        Os[cl * kPStride + wr + g] = o[vt][0] * inv0;
        Os[(cl + 1) * kPStride + wr + g] = o[vt][1] * inv0;
        Os[cl * kPStride + wr + g + 8] = o[vt][2] * inv1;
        Os[(cl + 1) * kPStride + wr + g + 8] = o[vt][3] * inv1;
      }
      __syncthreads();
      write_outputs<T, kMmaThreads>(Os, cs, i0, b, N, C, Cp, gamma, alpha, x, pre, mask, y, cf, sa, ca);
    }
  }
}

// ---- backward ----------------------------------------------------------------------------------------

constexpr int kPreThreads = 256;

// One thread per position i of image blockIdx.y:
//   dA[c][i] = gamma dy[c][i] (c < C),  alpha (1 - m_i) dcf[c - C][i] (c >= C)     (float32)
//   delta_i = sum_c dA[c][i] O[c][i]  with O = [sa; ca]
//   grad_mask_i = sum_c dcf[c][i] (pre[c][i] - alpha ca[c][i])
// and per-block partial sums of sum(dy sa) and sum(dcf (1 - m) ca) into partial[block][2] (double).
template <typename T>
__global__ void __launch_bounds__(kPreThreads) attn_bwd_pre_kernel(
    const T* __restrict__ dy, const T* __restrict__ dcf, const T* __restrict__ sa, const T* __restrict__ ca,
    const T* __restrict__ pre, const float* __restrict__ mask, const float* __restrict__ gamma_p,
    const float* __restrict__ alpha_p, float* __restrict__ dA, float* __restrict__ delta, T* __restrict__ grad_mask,
    double* __restrict__ partial, int N, int C, int Cp) {
  __shared__ double scratch[kPreThreads / 32];
  const int b = blockIdx.y;
  const int i = blockIdx.x * kPreThreads + threadIdx.x;
  const int Ctot = C + Cp;
  const float gamma = *gamma_p;
  const float alpha = Cp > 0 ? *alpha_p : 0.0f;
  double g_part = 0.0, a_part = 0.0;
  if (i < N) {
    float d1 = 0.0f;
    for (int c = 0; c < C; ++c) {
      const int64_t off = (static_cast<int64_t>(b) * C + c) * N + i;
      const float g = to_float(dy[off]);
      const float o = to_float(sa[off]);
      d1 = fmaf(g, o, d1);
      dA[(static_cast<int64_t>(b) * Ctot + c) * N + i] = gamma * g;
    }
    g_part = d1;
    float dl = gamma * d1;
    if (Cp > 0) {
      const float m = mask[static_cast<int64_t>(b) * N + i];
      const float w = alpha * (1.0f - m);
      float d2 = 0.0f, gm = 0.0f;
      for (int c = 0; c < Cp; ++c) {
        const int64_t off = (static_cast<int64_t>(b) * Cp + c) * N + i;
        const float g = to_float(dcf[off]);
        const float o = to_float(ca[off]);
        d2 = fmaf(g, o, d2);
        gm = fmaf(g, to_float(pre[off]) - alpha * o, gm);
        dA[(static_cast<int64_t>(b) * Ctot + C + c) * N + i] = w * g;
      }
      dl = fmaf(w, d2, dl);
      a_part = static_cast<double>(1.0f - m) * d2;
      grad_mask[static_cast<int64_t>(b) * N + i] = from_float<T>(gm);
    }
    delta[static_cast<int64_t>(b) * N + i] = dl;
  }
  const double gs = block_sum(g_part, scratch);
  const double as = block_sum(a_part, scratch);
  if (threadIdx.x == 0) {
    const int64_t blk = static_cast<int64_t>(b) * gridDim.x + blockIdx.x;
    partial[2 * blk] = gs;
    partial[2 * blk + 1] = as;
  }
}

// Shared memory of the two main backward kernels, in floats.
inline size_t bwd_smem_floats(int Cq) {
  const int cq_pad = round_up(Cq, kQC);
  return static_cast<size_t>(cq_pad) * kTile        // Xs: own tile of q, [cq_pad][kTile] (float4 rows)
         + static_cast<size_t>(cq_pad) * kKStride   // Ys: other tile of q, [cq_pad][kKStride]
         + static_cast<size_t>(cq_pad) * kTile      // G: the q-gradient accumulator, [cq_pad][kTile]
         + kTile * kPStride                         // Pt: P or dS transposed
         // dP operands D0 [kDC][kPStride] + D1 [kDC][kKStride] | dA sub-chunk + dS^T (dkv kernel)
         + std::max(kDC * (kPStride + kKStride), kVC * kKStride + kTile * kPStride);
}

// One 64 x 64 tile of the backward, from the point of view of the block's own positions ("rows",
// 4 tr + r) against the other positions ("cols", tc + 16 k):
//   QUERY_ROWS = true  (dq kernel): rows are queries i, cols are keys j;
//   QUERY_ROWS = false (dkv kernel): rows are keys j, cols are queries i (the transposed tile).
// Computes p = P_ij and ds = dS_ij = P_ij (dP_ij - delta_i) for the thread's 16 entries.
// Xs holds the rows' q tile, Ys the cols' q tile; DA/DV are two [kDC][kKStride] staging tiles.
template <bool QUERY_ROWS, typename T>
__device__ __forceinline__ void bwd_tile(float (&p)[4][4], float (&ds)[4][4], const float* Xs, const float* Ys,
                                         float* D0, float* D1, const float* __restrict__ dAb, const T* __restrict__ xb,
                                         const T* __restrict__ pb, const float* __restrict__ lse_b,
                                         const float* __restrict__ delta_b, int row0, int col0, int N, int cq_pad,
                                         int C, int Cp, float scale) {
  const int tr = threadIdx.x >> 4, tc = threadIdx.x & 15;
  const int Ctot = C + Cp;
  // Scores of the tile (Ys has the odd stride so that the q-gradient products can read it along
  // positions too). The caller has synchronised after loading Xs and Ys.
  float s[4][4] = {};
#pragma unroll 4
  for (int c = 0; c < cq_pad; ++c) {
    const float4 a = *reinterpret_cast<const float4*>(Xs + c * kTile + 4 * tr);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float bv = Ys[c * kKStride + tc + 16 * k];
      s[0][k] = fmaf(a.x, bv, s[0][k]);
      s[1][k] = fmaf(a.y, bv, s[1][k]);
      s[2][k] = fmaf(a.z, bv, s[2][k]);
      s[3][k] = fmaf(a.w, bv, s[3][k]);
    }
  }
  // dP over both value streams: rows' dA (QUERY_ROWS) or V against the cols' V or dA.
  float dp[4][4] = {};
  for (int cc = 0; cc < Ctot; cc += kDC) {
    const int rows = min(kDC, Ctot - cc);
    __syncthreads();  // D0 / D1 no longer read
    // D0: [channel][row position] (float4 reads need a multiple-of-4 stride: kPStride).
    // D1: [channel][col position].
    if (QUERY_ROWS) {
      load_tile(D0, kPStride, dAb, Ctot, cc, rows, row0, N);
      load_v_tile(D1, kKStride, xb, pb, C, Cp, cc, rows, col0, N);
    } else {
      load_v_tile(D0, kPStride, xb, pb, C, Cp, cc, rows, row0, N);
      load_tile(D1, kKStride, dAb, Ctot, cc, rows, col0, N);
    }
    __syncthreads();
    tile_product(dp, D0, kPStride, D1, kKStride, rows);
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int rowpos = row0 + 4 * tr + r;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int colpos = col0 + tc + 16 * k;
      const int i = QUERY_ROWS ? rowpos : colpos;  // the query of this entry
      const bool valid = rowpos < N && colpos < N;
      const float pv = valid ? exp2f((s[r][k] * scale - lse_b[i]) * kLog2e) : 0.0f;
      p[r][k] = pv;
      ds[r][k] = valid ? pv * (dp[r][k] - delta_b[i]) : 0.0f;
    }
  }
}

// grad accumulators G[c][row] (c < cq_pad) += sum_col DSt[col][row] * Ys[c][col]: the q-gradient
// contribution of one tile, G = Ys dS^T over the rows' positions. Each thread owns rows 4 tr .. +3
// and channels tc + 16 k (k < cq_pad / 16), read-modify-write in shared memory.
__device__ __forceinline__ void q_grad_product(float* G, const float* DSt, const float* Ys, int cq_pad) {
  const int tr = threadIdx.x >> 4, tc = threadIdx.x & 15;
  for (int c16 = 0; c16 < cq_pad; c16 += 16) {
    const int c = c16 + tc;
    float4 g = *reinterpret_cast<float4*>(G + c * kTile + 4 * tr);
#pragma unroll 8
    for (int j = 0; j < kTile; ++j) {
      const float4 d = *reinterpret_cast<const float4*>(DSt + j * kPStride + 4 * tr);
      const float v = Ys[c * kKStride + j];
      g.x = fmaf(d.x, v, g.x);
      g.y = fmaf(d.y, v, g.y);
      g.z = fmaf(d.z, v, g.z);
      g.w = fmaf(d.w, v, g.w);
    }
    *reinterpret_cast<float4*>(G + c * kTile + 4 * tr) = g;
  }
}

// Query side: dq_part[b][c][i] = sum_j dS_ij q[c][j] for the block's 64 queries (unscaled).
// (Min-blocks 1: with the default bound ptxas squeezed this kernel into 64 registers and spilled;
// 112 registers, no spills, and the 76 KB of shared memory allow 2 blocks per SM either way.)
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) attn_bwd_dq_kernel(
    const T* __restrict__ q, const T* __restrict__ x, const T* __restrict__ pre, const float* __restrict__ dA,
    const float* __restrict__ lse, const float* __restrict__ delta, float* __restrict__ dq_part, int N, int Cq, int C,
    int Cp, float scale) {
  extern __shared__ __align__(16) float smem[];
  const int cq_pad = round_up(Cq, kQC);
  float* Xs = smem;
  float* Ys = Xs + cq_pad * kTile;
  float* G = Ys + cq_pad * kKStride;
  float* Pt = G + cq_pad * kTile;
  float* D0 = Pt + kTile * kPStride;
  float* D1 = D0 + kDC * kPStride;
  const int b = blockIdx.y, i0 = blockIdx.x * kTile;
  const int Ctot = C + Cp;
  const T* qb = q + static_cast<int64_t>(b) * Cq * N;
  const T* xb = x + static_cast<int64_t>(b) * C * N;
  const T* pb = Cp > 0 ? pre + static_cast<int64_t>(b) * Cp * N : nullptr;
  const float* dAb = dA + static_cast<int64_t>(b) * Ctot * N;
  const float* lse_b = lse + static_cast<int64_t>(b) * N;
  const float* delta_b = delta + static_cast<int64_t>(b) * N;

  load_tile(Xs, kTile, qb, Cq, 0, cq_pad, i0, N);
  for (int idx = threadIdx.x; idx < cq_pad * kTile; idx += kThreads) G[idx] = 0.0f;

  for (int j0 = 0; j0 < N; j0 += kTile) {
    __syncthreads();  // Ys and Pt free
    load_tile(Ys, kKStride, qb, Cq, 0, cq_pad, j0, N);
    __syncthreads();
    float p[4][4], ds[4][4];
    bwd_tile<true>(p, ds, Xs, Ys, D0, D1, dAb, xb, pb, lse_b, delta_b, i0, j0, N, cq_pad, C, Cp, scale);
    store_transposed(Pt, ds);
    __syncthreads();
    q_grad_product(G, Pt, Ys, cq_pad);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < Cq * kTile; idx += kThreads) {
    const int c = idx / kTile, r = idx % kTile;
    if (i0 + r < N) dq_part[(static_cast<int64_t>(b) * Cq + c) * N + i0 + r] = G[c * kTile + r];
  }
}

// Key side, for key block J and value-channel chunk blockIdx.z:
//   dV[c][j] = sum_i P_ij dA[c][i]        -> grad_x = dy + dV (c < C), grad_pre = m dcf + dV
//   dk[c][j] = sum_i dS_ij q[c][i]        (chunk 0) -> grad_q = scale (dq_part + dk)
template <typename T>
__global__ void __launch_bounds__(kThreads) attn_bwd_dkv_kernel(
    const T* __restrict__ q, const T* __restrict__ x, const T* __restrict__ pre, const float* __restrict__ mask,
    const T* __restrict__ dy, const T* __restrict__ dcf, const float* __restrict__ dA, const float* __restrict__ lse,
    const float* __restrict__ delta, const float* __restrict__ dq_part, T* __restrict__ grad_q,
    T* __restrict__ grad_x, T* __restrict__ grad_pre, int N, int Cq, int C, int Cp, float scale) {
  extern __shared__ __align__(16) float smem[];
  const int cq_pad = round_up(Cq, kQC);
  float* Xs = smem;                     // keys' q tile [cq_pad][kTile]
  float* Ys = Xs + cq_pad * kTile;      // queries' q tile [cq_pad][kKStride]
  float* G = Ys + cq_pad * kKStride;    // dk accumulator [cq_pad][kTile]
  float* Pt = G + cq_pad * kTile;       // P^T / dS^T of the tile, [query][kPStride]
  float* D0 = Pt + kTile * kPStride;    // dP operands, then dA sub-chunk [kVC][kKStride] + stage
  float* D1 = D0 + kDC * kPStride;
  float* St = D0 + kVC * kKStride;      // second staging tile [kTile][kPStride] (dS^T)
  const int b = blockIdx.y, j0 = blockIdx.x * kTile;
  const int c0 = blockIdx.z * kCV;
  const bool key_side = blockIdx.z == 0;
  const int Ctot = C + Cp;
  const int tr = threadIdx.x >> 4, tc = threadIdx.x & 15;
  const T* qb = q + static_cast<int64_t>(b) * Cq * N;
  const T* xb = x + static_cast<int64_t>(b) * C * N;
  const T* pb = Cp > 0 ? pre + static_cast<int64_t>(b) * Cp * N : nullptr;
  const float* dAb = dA + static_cast<int64_t>(b) * Ctot * N;
  const float* lse_b = lse + static_cast<int64_t>(b) * N;
  const float* delta_b = delta + static_cast<int64_t>(b) * N;

  load_tile(Xs, kTile, qb, Cq, 0, cq_pad, j0, N);
  for (int idx = threadIdx.x; idx < cq_pad * kTile; idx += kThreads) G[idx] = 0.0f;
  float dv[4][8];  // dv[r][sub * 4 + k]: key 4 tr + r, channel c0 + sub * kVC + tc + 16 k
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int k = 0; k < 8; ++k) dv[r][k] = 0.0f;

  for (int i0 = 0; i0 < N; i0 += kTile) {
    __syncthreads();  // Ys, Pt, St free
    load_tile(Ys, kKStride, qb, Cq, 0, cq_pad, i0, N);
    __syncthreads();
    float p[4][4], ds[4][4];
    bwd_tile<false>(p, ds, Xs, Ys, D0, D1, dAb, xb, pb, lse_b, delta_b, j0, i0, N, cq_pad, C, Cp, scale);
    __syncthreads();  // D0 / D1 (the dP operands) no longer read; St aliases them
    store_transposed(Pt, p);
    store_transposed(St, ds);
    // dV for this chunk: sum over the tile's queries of P^T[j][i] dA[c][i].
#pragma unroll
    for (int sub = 0; sub < kCV / kVC; ++sub) {
      const int cs = c0 + sub * kVC;
      if (cs < Ctot) {
        __syncthreads();  // Pt / St written; D0 free
        load_tile(D0, kKStride, dAb, Ctot, cs, kVC, i0, N);
        __syncthreads();
        float part[4][4];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int k = 0; k < 4; ++k) part[r][k] = dv[r][sub * 4 + k];
        value_product<4>(part, Pt, D0);
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int k = 0; k < 4; ++k) dv[r][sub * 4 + k] = part[r][k];
      }
    }
    if (key_side) {
      __syncthreads();  // St visible to every thread
      q_grad_product(G, St, Ys, cq_pad);
    }
  }

  // Epilogue: dV through a [channel][key] stage for coalesced writes.
#pragma unroll
  for (int sub = 0; sub < kCV / kVC; ++sub) {
    const int cs = c0 + sub * kVC;
    if (cs < Ctot) {
      __syncthreads();
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        *reinterpret_cast<float4*>(D0 + (tc + 16 * k) * kPStride + 4 * tr) =
            make_float4(dv[0][sub * 4 + k], dv[1][sub * 4 + k], dv[2][sub * 4 + k], dv[3][sub * 4 + k]);
      }
      __syncthreads();
      for (int idx = threadIdx.x; idx < kVC * kTile; idx += kThreads) {
        const int c = idx / kTile, r = idx % kTile;
        const int gc = cs + c, j = j0 + r;
        if (gc >= Ctot || j >= N) continue;
        const float v = D0[c * kPStride + r];
        if (gc < C) {
          const int64_t off = (static_cast<int64_t>(b) * C + gc) * N + j;
          grad_x[off] = from_float<T>(to_float(dy[off]) + v);
        } else {
          const int64_t off = (static_cast<int64_t>(b) * Cp + (gc - C)) * N + j;
          const float m = mask[static_cast<int64_t>(b) * N + j];
          grad_pre[off] = from_float<T>(fmaf(m, to_float(dcf[off]), v));
        }
      }
    }
  }
  if (key_side) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < Cq * kTile; idx += kThreads) {
      const int c = idx / kTile, r = idx % kTile;
      const int j = j0 + r;
      if (j < N) {
        const int64_t off = (static_cast<int64_t>(b) * Cq + c) * N + j;
        grad_q[off] = from_float<T>(scale * (dq_part[off] + G[c * kTile + r]));
      }
    }
  }
}

// ---- launchers -----------------------------------------------------------------------------------------

// The structural checks shared with the CPU kernels (csrc/short_long_attention_inputs.h), then the
// CUDA ones: q, x and pre CUDA tensors of one dtype in the envelope, each with a channel, the mask
// floating, every input on x's device, and the sizes within the launch limits.
AttentionGeometry check_inputs(const char* op, const at::Tensor& q, const at::Tensor& x, const at::Tensor& gamma,
                               const std::optional<at::Tensor>& pre, const std::optional<at::Tensor>& mask,
                               const std::optional<at::Tensor>& alpha) {
  const AttentionGeometry g = check_short_long_attention_inputs(op, q, x, gamma, pre, mask, alpha);
  const at::Device dev = x.device();
  check_cuda_float(op, "x", x, dev);
  check_cuda_float(op, "q", q, dev);
  check_same_dtype(op, "q", q, "x", x);
  TORCH_CHECK(g.C >= 1, op, ": `x` must have at least one channel, got shape ", x.sizes());
  check_device(op, "gamma", gamma, dev);
  if (g.has_pre) {
    check_cuda_float(op, "pre", *pre, dev);
    check_same_dtype(op, "pre", *pre, "x", x);
    TORCH_CHECK(g.Cp >= 1, op, ": `pre` must have at least one channel, got shape ", pre->sizes());
    check_floating(op, "mask", *mask);
    check_device(op, "mask", *mask, dev);
    check_device(op, "alpha", *alpha, dev);
  }
  check_launch_limit(op, "N = H * W", g.N, kMaxIndexSize, "the kernels' int indices");
  check_launch_limit(op, "the value channels C + Cp", g.C + g.Cp, kMaxIndexSize, "the kernels' int indices");
  check_launch_limit(op, "the batch size B", g.B, kMaxGridYZ, "the CUDA grid's y extent");
  return g;
}

// Raises the block's dynamic shared-memory limit when a launch needs more than the default 48 KiB.
template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes, const char* op, int64_t Cq) {
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(optin), op, ": Cq = ", Cq, " needs ", bytes,
              " bytes of shared memory per block, more than this GPU's ", optin,
              "; use backend='triton' or 'reference' for such wide queries");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// A one-element tensor as a float32 device scalar the kernels read (no host synchronisation, so
// the op stays capturable by CUDA graphs).
at::Tensor device_scalar(const at::Tensor& t) { return t.reshape({1}).to(at::kFloat).contiguous(); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> short_long_attention_fwd_cuda(
    const at::Tensor& q_in, const at::Tensor& x_in, const at::Tensor& gamma, const std::optional<at::Tensor>& pre_in,
    const std::optional<at::Tensor>& mask_in, const std::optional<at::Tensor>& alpha_in, double scale) {
  const char* op = "short_long_attention_fwd (CUDA)";
  const AttentionGeometry g = check_inputs(op, q_in, x_in, gamma, pre_in, mask_in, alpha_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor q = q_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor pre = g.has_pre ? pre_in->contiguous() : at::Tensor();
  const at::Tensor mask = g.has_pre ? mask_in->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor gam = device_scalar(gamma);
  const at::Tensor alp = g.has_pre ? device_scalar(*alpha_in) : gam;

  const auto opts = x.options();
  at::Tensor y = at::empty({g.B, g.C, g.H, g.W}, opts);
  at::Tensor sa = at::empty({g.B, g.C, g.H, g.W}, opts);
  at::Tensor cf = g.has_pre ? at::empty({g.B, g.Cp, g.H, g.W}, opts) : at::empty({0}, opts);
  at::Tensor ca = g.has_pre ? at::empty({g.B, g.Cp, g.H, g.W}, opts) : at::empty({0}, opts);
  at::Tensor lse = at::empty({g.B, g.H, g.W}, opts.dtype(accumulate_dtype(x.scalar_type())));
  if (g.B == 0 || g.N == 0) return {y, cf, sa, ca, lse};

  const int64_t chunks = ceil_div(g.C + g.Cp, kCV);
  check_launch_limit(op, "the number of value-channel chunks", chunks, kMaxGridYZ, "the CUDA grid's z extent");
  const dim3 grid(static_cast<unsigned>(ceil_div(g.N, kTile)), static_cast<unsigned>(g.B),
                  static_cast<unsigned>(chunks));
  const cudaStream_t stream = current_stream();
  // float16 / bfloat16 run on tensor cores unless INPAINT_FAST_CUDA_SIMT=1 asks for the float32
  // CUDA-core kernel (a debugging and comparison switch); float32 always takes the CUDA-core kernel.
  const char* simt_env = std::getenv("INPAINT_FAST_CUDA_SIMT");
  const bool use_mma = x.scalar_type() != at::kFloat && !(simt_env && std::string(simt_env) == "1");
  dispatch_float_types(x.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>) {
      if (use_mma) {
        const size_t smem = fwd_mma_smem_bytes(static_cast<int>(g.Cq), sizeof(T));
        auto kernel = attn_fwd_mma_kernel<T>;
        set_smem(kernel, smem, op, g.Cq);
        kernel<<<grid, kMmaThreads, smem, stream>>>(
            device_ptr<const T>(q), device_ptr<const T>(x), g.has_pre ? device_ptr<const T>(pre) : nullptr,
            g.has_pre ? mask.data_ptr<float>() : nullptr, gam.data_ptr<float>(), alp.data_ptr<float>(),
            device_ptr<T>(y), g.has_pre ? device_ptr<T>(cf) : nullptr, device_ptr<T>(sa),
            g.has_pre ? device_ptr<T>(ca) : nullptr, lse.data_ptr<float>(), static_cast<int>(g.N),
            static_cast<int>(g.Cq), static_cast<int>(g.C), static_cast<int>(g.Cp), static_cast<float>(scale));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
    }
    const size_t smem = fwd_smem_floats(static_cast<int>(g.Cq)) * sizeof(float);
    auto kernel = attn_fwd_kernel<T>;
    set_smem(kernel, smem, op, g.Cq);
    kernel<<<grid, kThreads, smem, stream>>>(
        device_ptr<const T>(q), device_ptr<const T>(x), g.has_pre ? device_ptr<const T>(pre) : nullptr,
        g.has_pre ? mask.data_ptr<float>() : nullptr, gam.data_ptr<float>(), alp.data_ptr<float>(),
        device_ptr<T>(y), g.has_pre ? device_ptr<T>(cf) : nullptr, device_ptr<T>(sa),
        g.has_pre ? device_ptr<T>(ca) : nullptr, lse.data_ptr<float>(), static_cast<int>(g.N),
        static_cast<int>(g.Cq), static_cast<int>(g.C), static_cast<int>(g.Cp), static_cast<float>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, cf, sa, ca, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> short_long_attention_bwd_cuda(
    const at::Tensor& grad_y_in, const at::Tensor& grad_cf_in, const at::Tensor& q_in, const at::Tensor& x_in,
    const at::Tensor& gamma, const std::optional<at::Tensor>& pre_in, const std::optional<at::Tensor>& mask_in,
    const std::optional<at::Tensor>& alpha_in, const at::Tensor& sa_in, const at::Tensor& ca_in,
    const at::Tensor& lse_in, double scale) {
  const char* op = "short_long_attention_bwd (CUDA)";
  const AttentionGeometry g = check_inputs(op, q_in, x_in, gamma, pre_in, mask_in, alpha_in);
  const bool has_grad_cf =
      check_short_long_attention_bwd_inputs(op, g, grad_y_in, grad_cf_in, x_in, pre_in, sa_in, ca_in, lse_in);
  const at::Device dev = x_in.device();
  check_cuda_float(op, "grad_y", grad_y_in, dev);
  check_cuda_float(op, "sa", sa_in, dev);
  check_device(op, "lse", lse_in, dev);
  if (g.has_pre) check_cuda_float(op, "ca", ca_in, dev);
  if (has_grad_cf) check_cuda_float(op, "grad_cf", grad_cf_in, dev);
  const c10::cuda::CUDAGuard guard(dev);
  const auto st = x_in.scalar_type();
  // Every tensor the kernels read shares x's dtype; gradients from autograd may arrive in another
  // floating dtype (e.g. under autocast), so they are converted here.
  const at::Tensor q = q_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dy = grad_y_in.to(st).contiguous();
  const at::Tensor sa = sa_in.to(st).contiguous();
  const at::Tensor lse = lse_in.to(at::kFloat).contiguous();
  const at::Tensor gam = device_scalar(gamma);
  at::Tensor pre, mask, dcf, ca, alp = gam;
  if (g.has_pre) {
    pre = pre_in->contiguous();
    mask = mask_in->to(at::kFloat).contiguous();
    ca = ca_in.to(st).contiguous();
    dcf = has_grad_cf ? grad_cf_in.to(st).contiguous() : at::zeros_like(pre, at::MemoryFormat::Contiguous);
    alp = device_scalar(*alpha_in);
  }
  const int64_t Ctot = g.C + g.Cp;
  const auto opts = x.options();
  const auto fopts = opts.dtype(at::kFloat);

  at::Tensor grad_q = at::empty({g.B, g.Cq, g.H, g.W}, q.options());
  at::Tensor grad_x = at::empty({g.B, g.C, g.H, g.W}, opts);
  at::Tensor grad_pre = g.has_pre ? at::empty({g.B, g.Cp, g.H, g.W}, opts) : at::empty({0}, opts);
  at::Tensor grad_mask = g.has_pre ? at::empty({g.B, 1, g.H, g.W}, opts) : at::empty({0}, opts);
  at::Tensor dA = at::empty({g.B, Ctot, g.N}, fopts);
  at::Tensor delta = at::empty({g.B, g.N}, fopts);
  at::Tensor dq_part = at::empty({g.B, g.Cq, g.N}, fopts);
  if (g.B == 0 || g.N == 0) {  // nothing to launch (the Python layer rejects such inputs anyway)
    grad_q.zero_();
    grad_x.copy_(dy);
    if (g.has_pre) {
      grad_pre.zero_();
      grad_mask.zero_();
    }
    return {grad_q, grad_x, at::zeros_like(gamma), grad_pre, grad_mask,
            g.has_pre ? at::zeros_like(*alpha_in) : at::empty({0}, opts)};
  }
  const int64_t pre_blocks = ceil_div(g.N, kPreThreads);
  at::Tensor partial = at::empty({g.B * pre_blocks, 2}, opts.dtype(at::kDouble));

  const cudaStream_t stream = current_stream();
  const int N = static_cast<int>(g.N), Cq = static_cast<int>(g.Cq), C = static_cast<int>(g.C),
            Cp = static_cast<int>(g.Cp);
  const float fscale = static_cast<float>(scale);
  const size_t smem = bwd_smem_floats(Cq) * sizeof(float);
  const int64_t chunks = ceil_div(Ctot, kCV);
  check_launch_limit(op, "the number of value-channel chunks", chunks, kMaxGridYZ, "the CUDA grid's z extent");
  dispatch_float_types(st, op, [&](auto tag) {
    using T = decltype(tag);
    const T* pre_p = g.has_pre ? device_ptr<const T>(pre) : nullptr;
    const float* mask_p = g.has_pre ? mask.data_ptr<float>() : nullptr;
    attn_bwd_pre_kernel<T><<<dim3(static_cast<unsigned>(pre_blocks), static_cast<unsigned>(g.B)), kPreThreads, 0,
                             stream>>>(
        device_ptr<const T>(dy), g.has_pre ? device_ptr<const T>(dcf) : nullptr, device_ptr<const T>(sa),
        g.has_pre ? device_ptr<const T>(ca) : nullptr, pre_p, mask_p, gam.data_ptr<float>(), alp.data_ptr<float>(),
        dA.data_ptr<float>(), delta.data_ptr<float>(), g.has_pre ? device_ptr<T>(grad_mask) : nullptr,
        partial.data_ptr<double>(), N, C, Cp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    auto dq_kernel = attn_bwd_dq_kernel<T>;
    set_smem(dq_kernel, smem, op, g.Cq);
    dq_kernel<<<dim3(static_cast<unsigned>(ceil_div(g.N, kTile)), static_cast<unsigned>(g.B)), kThreads, smem,
                stream>>>(device_ptr<const T>(q), device_ptr<const T>(x), pre_p, dA.data_ptr<float>(),
                          lse.data_ptr<float>(), delta.data_ptr<float>(), dq_part.data_ptr<float>(), N, Cq, C, Cp,
                          fscale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    auto dkv_kernel = attn_bwd_dkv_kernel<T>;
    set_smem(dkv_kernel, smem, op, g.Cq);
    dkv_kernel<<<dim3(static_cast<unsigned>(ceil_div(g.N, kTile)), static_cast<unsigned>(g.B),
                      static_cast<unsigned>(chunks)),
                 kThreads, smem, stream>>>(
        device_ptr<const T>(q), device_ptr<const T>(x), pre_p, mask_p, device_ptr<const T>(dy),
        g.has_pre ? device_ptr<const T>(dcf) : nullptr, dA.data_ptr<float>(), lse.data_ptr<float>(),
        delta.data_ptr<float>(), dq_part.data_ptr<float>(), device_ptr<T>(grad_q), device_ptr<T>(grad_x),
        g.has_pre ? device_ptr<T>(grad_pre) : nullptr, N, Cq, C, Cp, fscale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // grad_gamma = sum(dy * sa), grad_alpha = sum(dcf * (1 - m) * ca): per-block partials, then a
  // fixed-order reduction (at::sum over the block axis), in double.
  const at::Tensor sums = partial.sum(0);
  at::Tensor grad_gamma = sums.select(0, 0).reshape(gamma.sizes()).to(gamma.scalar_type()).contiguous();
  at::Tensor grad_alpha = g.has_pre ? sums.select(0, 1).reshape(alpha_in->sizes()).to(alpha_in->scalar_type()).contiguous()
                                    : at::empty({0}, opts);
  if (g.has_pre && mask_in->scalar_type() != st) grad_mask = grad_mask.to(mask_in->scalar_type());
  return {grad_q, grad_x, grad_gamma, grad_pre, grad_mask, grad_alpha};
}

TORCH_LIBRARY_IMPL(inpaint_fast, CUDA, m) {
  m.impl("short_long_attention_fwd", &short_long_attention_fwd_cuda);
  m.impl("short_long_attention_bwd", &short_long_attention_bwd_cuda);
}

}  // namespace cuda
}  // namespace inpaint_fast
