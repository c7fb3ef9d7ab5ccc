// CUDA kernels of DFNet's fusion block: inpaint_fast::fusion_block_fwd / _bwd for CUDA tensors
// (schemas in inpaint_fast/ops/schemas.inc; the contract is the CPU kernel's, csrc/cpu/fusion_block.cpp).
//
// Per pixel of the (h, w) grid, with in = [Xk, R] the 6 inputs of the blend block:
//   Xk = bilinear(image -> h x w, align_corners=False)      R = sigmoid(Wm F + bm)
//   a1 = lrelu(BN1(W1 in + b1))  (Cm ch)   z2 = conv3x3(a1, W2) + b2  (A ch, zero padding)
//   a2 = lrelu(BN2(z2))   alpha = sigmoid(W3 a2 + b3)   Y = alpha R + (1 - alpha) Xk
//
// Kernels (all arithmetic in float32; BN statistics and reductions in double):
//  * fusion_tile_kernel<T, A, TRAIN> — one block per 8 x 32 tile of output pixels of one image,
//    256 threads, one output pixel per thread. The tile's 10 x 34 halo of `in` is built in shared
//    memory (eval: Xk and R computed from the image and the features; training: read from the XR
//    buffer of fusion_xr_kernel), then a1 is computed for the halo in chunks of kA1Chunk channels
//    (never stored in global memory) and the 3x3 convolution reads it from shared memory.
//      eval (TRAIN = false): BN1 and BN2 are folded into conv1 / conv2 on the host side, and the
//        thread finishes its pixel (head, sigmoid, blend): the whole block in one kernel.
//      training: writes z2 (float32 buffer) and the block's partial sums of z2 and z2^2.
//    The halo costs 340 / 256 = 1.33x the feature reads of R in eval (neighbouring tiles' halo
//    pixels mostly hit L2). Feature loads are scalar but coalesced (a warp reads 32 consecutive
//    pixels of one channel); 16-byte vector loads are not used yet.
//  * fusion_xr_kernel<T> (training) — one thread per pixel: Xk and R into a float32 (B, 6, h, w)
//    buffer, and per-block sums of in and in in^T (double), from which BN1's batch statistics
//    follow exactly as in the CPU kernel: z1 = W1 in + b1 is affine in `in`, so mean1 = W1 mu + b1
//    and var1 = diag(W1 Cov(in) W1^T), without a pass over the Cm channels.
//  * fusion_finish_kernel<T, A> (training) — one thread per pixel: BN2 with the batch statistics,
//    the head and the blend.
// Reductions: each block writes its partial sums; the host side reduces them with at::sum over the
// block axis (fixed order, no atomics), so the statistics are deterministic run to run.
// Training statistics are rounded to float32 (the dtype they are returned in) before they are used,
// as in the CPU kernel, so a backward that receives them recomputes exactly the forward's values.
//
// The backward (fusion_block_bwd) follows the CPU kernel's passes; see "backward kernels" below.

#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../dtypes.h"
#include "../fusion_block_params.h"
#include "common.cuh"

namespace inpaint_fast {
namespace cuda {
namespace {

constexpr int kTileW = 32, kTileH = 8;        // output pixels per block
constexpr int kHaloW = kTileW + 2, kHaloH = kTileH + 2;
constexpr int kHalo = kHaloW * kHaloH;         // 340 halo pixels
constexpr int kTileThreads = kTileW * kTileH;  // 256
constexpr int kA1Chunk = 8;                    // a1 channels held in shared memory at once
constexpr int kPixThreads = 256;               // per-pixel kernels
constexpr int kMoments = 6 + 36;               // sum in (6), sum in in^T (6 x 6)
constexpr float kSlope = 0.2f;                 // LeakyReLU slope of DFNet's blend block

// Bilinear source coordinates of PyTorch's upsample (align_corners=False, no scale_factor):
// src = max(scale (d + 0.5) - 0.5, 0), i0 = floor(src), i1 = min(i0 + 1, in - 1), l1 = src - i0.
struct Lerp {
  int i0, i1;
  float l0, l1;
};
__device__ __forceinline__ Lerp lerp_coord(int d, int in, float scale) {
  const float src = fmaxf(scale * (static_cast<float>(d) + 0.5f) - 0.5f, 0.0f);
  const int i0 = min(static_cast<int>(src), in - 1);
  Lerp l;
  l.i0 = i0;
  l.i1 = i0 + (i0 < in - 1 ? 1 : 0);
  l.l1 = fminf(fmaxf(src - static_cast<float>(i0), 0.0f), 1.0f);
  l.l0 = 1.0f - l.l1;
  return l;
}

// Xk (3 values) and R (3 values) of pixel (y, x) of one image.
//   img: (3, H, W) of this image; F: (c, h, w) of this image; Wm: (3, c); bm: (3).
template <typename T>
__device__ __forceinline__ void xr_pixel(const T* __restrict__ img, int H, int W, float scale_y, float scale_x,
                                         const T* __restrict__ F, int c, int64_t hw, int64_t pix,
                                         const float* __restrict__ Wm, const float* __restrict__ bm, int y, int x,
                                         float (&in)[6]) {
  const Lerp ly = lerp_coord(y, H, scale_y);
  const Lerp lx = lerp_coord(x, W, scale_x);
  const int64_t HW = static_cast<int64_t>(H) * W;
#pragma unroll
  for (int ch = 0; ch < 3; ++ch) {
    const T* p = img + ch * HW;
    const float v00 = to_float(p[static_cast<int64_t>(ly.i0) * W + lx.i0]);
    const float v01 = to_float(p[static_cast<int64_t>(ly.i0) * W + lx.i1]);
    const float v10 = to_float(p[static_cast<int64_t>(ly.i1) * W + lx.i0]);
    const float v11 = to_float(p[static_cast<int64_t>(ly.i1) * W + lx.i1]);
    in[ch] = ly.l0 * (lx.l0 * v00 + lx.l1 * v01) + ly.l1 * (lx.l0 * v10 + lx.l1 * v11);
  }
  float r0 = bm[0], r1 = bm[1], r2 = bm[2];
  const T* f = F + pix;
#pragma unroll 4
  for (int k = 0; k < c; ++k) {
    const float v = to_float(f[k * hw]);
    r0 = fmaf(Wm[k], v, r0);
    r1 = fmaf(Wm[c + k], v, r1);
    r2 = fmaf(Wm[2 * c + k], v, r2);
  }
  in[3] = sigmoidf_acc(r0);
  in[4] = sigmoidf_acc(r1);
  in[5] = sigmoidf_acc(r2);
}

// The head after z2: BN2 as an affine map (n = z * s2 + t2), lrelu, the A x A conv3, sigmoid, and
// the blend. Writes out, alpha and raw of one pixel (off3 / offA: offsets of channel 0).
template <typename T, int A>
__device__ __forceinline__ void finish_pixel(const float (&z)[A], const float* __restrict__ s2,
                                             const float* __restrict__ t2, const float* __restrict__ W3,
                                             const float* __restrict__ b3, const float (&in)[6], int64_t hw,
                                             T* __restrict__ out, T* __restrict__ alpha, T* __restrict__ raw,
                                             int64_t off3, int64_t offA) {
  float a2[A], al[A];
#pragma unroll
  for (int a = 0; a < A; ++a) a2[a] = lrelu(fmaf(z[a], s2[a], t2[a]), kSlope);
#pragma unroll
  for (int a = 0; a < A; ++a) {
    float v = b3[a];
#pragma unroll
    for (int k = 0; k < A; ++k) v = fmaf(W3[a * A + k], a2[k], v);
    al[a] = sigmoidf_acc(v);
    alpha[offA + a * hw] = from_float<T>(al[a]);
  }
#pragma unroll
  for (int ch = 0; ch < 3; ++ch) {
    const float g = al[A == 1 ? 0 : ch];
    const float r = in[3 + ch], xk = in[ch];
    out[off3 + ch * hw] = from_float<T>(g * r + (1.0f - g) * xk);
    raw[off3 + ch * hw] = from_float<T>(r);
  }
}

// Parameters of the tile kernel, all float32 device arrays.
struct TileParams {
  const float* Wm;   // (3, c)      eval only
  const float* bm;   // (3)         eval only
  const float* W1;   // (Cm, 6)     BN1 folded in
  const float* b1;   // (Cm)
  const float* W2;   // (A, Cm, 9)  eval: BN2 folded in
  const float* b2;   // (A)
  const float* s2;   // (A)         eval: ones (BN2 folded)
  const float* t2;   // (A)         eval: zeros
  const float* W3;   // (A, A)
  const float* b3;   // (A)
};

inline size_t tile_smem_floats(int64_t c, int64_t Cm, int A, bool train) {
  return (train ? 0 : 3 * c) + Cm * 7 + static_cast<size_t>(A) * Cm * 9 + 6 * kHalo + kA1Chunk * kHalo;
}

template <typename T, int A, bool TRAIN>
__global__ void __launch_bounds__(kTileThreads) fusion_tile_kernel(
    const T* __restrict__ feat, const T* __restrict__ image, const float* __restrict__ xr, TileParams prm, int c,
    int Cm, int h, int w, int H, int W, float scale_y, float scale_x, T* __restrict__ out, T* __restrict__ alpha,
    T* __restrict__ raw, float* __restrict__ z2, double* __restrict__ partial) {
  extern __shared__ __align__(16) float smem[];
  float* Wm_s = smem;                              // (3, c), eval only
  float* W1_s = Wm_s + (TRAIN ? 0 : 3 * c);        // (Cm, 6)
  float* b1_s = W1_s + Cm * 6;                     // (Cm)
  float* W2_s = b1_s + Cm;                         // (A, Cm, 9)
  float* in_s = W2_s + A * Cm * 9;                 // (6, kHalo)
  float* a1_s = in_s + 6 * kHalo;                  // (kA1Chunk, kHalo)

  const int tid = threadIdx.x;
  const int tx = tid % kTileW, ty = tid / kTileW;
  const int x0 = blockIdx.x * kTileW, y0 = blockIdx.y * kTileH, b = blockIdx.z;
  const int64_t hw = static_cast<int64_t>(h) * w;

  if (!TRAIN)
    for (int i = tid; i < 3 * c; i += kTileThreads) Wm_s[i] = prm.Wm[i];
  for (int i = tid; i < Cm * 6; i += kTileThreads) W1_s[i] = prm.W1[i];
  for (int i = tid; i < Cm; i += kTileThreads) b1_s[i] = prm.b1[i];
  for (int i = tid; i < A * Cm * 9; i += kTileThreads) W2_s[i] = prm.W2[i];
  if (!TRAIN) __syncthreads();  // Wm_s is read below

  // The halo of in = [Xk, R]; zero outside the image (a1 is zeroed there separately below).
  const T* img_b = TRAIN ? nullptr : image + static_cast<int64_t>(b) * 3 * H * W;
  const T* F_b = TRAIN ? nullptr : feat + static_cast<int64_t>(b) * c * hw;
  for (int p = tid; p < kHalo; p += kTileThreads) {
    const int gy = y0 - 1 + p / kHaloW, gx = x0 - 1 + p % kHaloW;
    float v[6] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (gy >= 0 && gy < h && gx >= 0 && gx < w) {
      const int64_t pix = static_cast<int64_t>(gy) * w + gx;
      if (TRAIN) {
        const float* src = xr + static_cast<int64_t>(b) * 6 * hw + pix;
#pragma unroll
        for (int ch = 0; ch < 6; ++ch) v[ch] = src[ch * hw];
      } else {
        xr_pixel(img_b, H, W, scale_y, scale_x, F_b, c, hw, pix, Wm_s, prm.bm, gy, gx, v);
      }
    }
#pragma unroll
    for (int ch = 0; ch < 6; ++ch) in_s[ch * kHalo + p] = v[ch];
  }

  float acc[A];
#pragma unroll
  for (int a = 0; a < A; ++a) acc[a] = 0.0f;
  for (int m0 = 0; m0 < Cm; m0 += kA1Chunk) {
    const int mc = min(kA1Chunk, Cm - m0);
    __syncthreads();  // in_s complete (first chunk) / a1_s of the previous chunk consumed
    for (int idx = tid; idx < mc * kHalo; idx += kTileThreads) {
      const int kk = idx / kHalo, p = idx % kHalo;
      const int gy = y0 - 1 + p / kHaloW, gx = x0 - 1 + p % kHaloW;
      float v = 0.0f;  // the 3x3 convolution zero-pads a1
      if (gy >= 0 && gy < h && gx >= 0 && gx < w) {
        const float* wr = W1_s + (m0 + kk) * 6;
        v = b1_s[m0 + kk];
#pragma unroll
        for (int i = 0; i < 6; ++i) v = fmaf(wr[i], in_s[i * kHalo + p], v);
        v = lrelu(v, kSlope);
      }
      a1_s[kk * kHalo + p] = v;
    }
    __syncthreads();
    for (int kk = 0; kk < mc; ++kk) {
      const float* a1 = a1_s + kk * kHalo + ty * kHaloW + tx;
      float nb[9];
#pragma unroll
      for (int dy = 0; dy < 3; ++dy)
#pragma unroll
        for (int dx = 0; dx < 3; ++dx) nb[dy * 3 + dx] = a1[dy * kHaloW + dx];
#pragma unroll
      for (int a = 0; a < A; ++a) {
        const float* k9 = W2_s + (a * Cm + m0 + kk) * 9;
#pragma unroll
        for (int t = 0; t < 9; ++t) acc[a] = fmaf(k9[t], nb[t], acc[a]);
      }
    }
  }

  const int gy = y0 + ty, gx = x0 + tx;
  const bool valid = gy < h && gx < w;
  const int64_t pix = static_cast<int64_t>(gy) * w + gx;
  float z[A];
#pragma unroll
  for (int a = 0; a < A; ++a) z[a] = acc[a] + prm.b2[a];
  if (!TRAIN) {
    if (valid) {
      float in[6];
      const int p = (ty + 1) * kHaloW + tx + 1;
#pragma unroll
      for (int ch = 0; ch < 6; ++ch) in[ch] = in_s[ch * kHalo + p];
      finish_pixel<T, A>(z, prm.s2, prm.t2, prm.W3, prm.b3, in, hw, out, alpha, raw,
                         static_cast<int64_t>(b) * 3 * hw + pix, static_cast<int64_t>(b) * A * hw + pix);
    }
  } else {
    __shared__ double scratch[kTileThreads / 32];
#pragma unroll
    for (int a = 0; a < A; ++a) {
      if (valid) z2[(static_cast<int64_t>(b) * A + a) * hw + pix] = z[a];
      const double zv = valid ? static_cast<double>(z[a]) : 0.0;
      const double s1 = block_sum(zv, scratch);
      const double s2 = block_sum(zv * zv, scratch);
      if (tid == 0) {
        const int64_t blk = (static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
        partial[blk * 2 * A + a] = s1;
        partial[blk * 2 * A + A + a] = s2;
      }
    }
  }
}

// Training pass 1: in = [Xk, R] of every pixel into xr (B, 6, h, w), and per-block moment sums:
// partial[blk][0..6) = sum in, partial[blk][6 + 6 i + j] = sum in_i in_j (double).
template <typename T>
__global__ void __launch_bounds__(kPixThreads) fusion_xr_kernel(const T* __restrict__ feat, const T* __restrict__ image,
                                                                const float* __restrict__ Wm,
                                                                const float* __restrict__ bm, int c, int h, int w,
                                                                int H, int W, float scale_y, float scale_x,
                                                                float* __restrict__ xr, double* __restrict__ partial) {
  __shared__ double scratch[kPixThreads / 32][kMoments];
  const int b = blockIdx.y;
  const int64_t hw = static_cast<int64_t>(h) * w;
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * kPixThreads + threadIdx.x;
  float in[6] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (pix < hw) {
    const int y = static_cast<int>(pix / w), x = static_cast<int>(pix % w);
    xr_pixel(image + static_cast<int64_t>(b) * 3 * H * W, H, W, scale_y, scale_x, feat + static_cast<int64_t>(b) * c * hw,
             c, hw, pix, Wm, bm, y, x, in);
    float* dst = xr + static_cast<int64_t>(b) * 6 * hw + pix;
#pragma unroll
    for (int ch = 0; ch < 6; ++ch) dst[ch * hw] = in[ch];
  }
  // Warp sums of the 42 moments, then the warps in index order (deterministic).
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int i = 0; i < 6; ++i) {
    const double s = warp_sum(static_cast<double>(in[i]));
    if (lane == 0) scratch[warp][i] = s;
#pragma unroll
    for (int j = 0; j < 6; ++j) {
      const double sij = warp_sum(static_cast<double>(in[i]) * static_cast<double>(in[j]));
      if (lane == 0) scratch[warp][6 + 6 * i + j] = sij;
    }
  }
  __syncthreads();
  if (threadIdx.x < kMoments) {
    double total = 0.0;
    for (int k = 0; k < kPixThreads / 32; ++k) total += scratch[k][threadIdx.x];
    partial[(static_cast<int64_t>(b) * gridDim.x + blockIdx.x) * kMoments + threadIdx.x] = total;
  }
}

// Training pass 3: BN2 with batch statistics (folded into s2, t2), the head and the blend.
template <typename T, int A>
__global__ void __launch_bounds__(kPixThreads) fusion_finish_kernel(const float* __restrict__ xr,
                                                                    const float* __restrict__ z2, TileParams prm,
                                                                    int64_t hw, T* __restrict__ out,
                                                                    T* __restrict__ alpha, T* __restrict__ raw) {
  const int b = blockIdx.y;
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * kPixThreads + threadIdx.x;
  if (pix >= hw) return;
  float in[6], z[A];
#pragma unroll
  for (int ch = 0; ch < 6; ++ch) in[ch] = xr[(static_cast<int64_t>(b) * 6 + ch) * hw + pix];
#pragma unroll
  for (int a = 0; a < A; ++a) z[a] = z2[(static_cast<int64_t>(b) * A + a) * hw + pix];
  finish_pixel<T, A>(z, prm.s2, prm.t2, prm.W3, prm.b3, in, hw, out, alpha, raw,
                     static_cast<int64_t>(b) * 3 * hw + pix, static_cast<int64_t>(b) * A * hw + pix);
}

// ---- backward kernels -----------------------------------------------------------------------------
//
// The backward mirrors the CPU kernel's passes (csrc/cpu/fusion_block.cpp, backward_typed), with the
// same linear-algebra shortcuts for BN1 (z1 is affine in the 6 inputs, so BN1's backward and the
// conv1 weight gradient follow from per-channel sums of g1 and g1 (in - mu) plus the 6 x 6
// covariance of `in`; no Cm-channel buffer is ever stored):
//   1. fusion_xr_kernel: in = [Xk, R] of every pixel and its moments (mu, covariance).
//   2. fusion_tile_kernel<TRAIN = true>: z2 = conv3x3(a1) + b2, a1 from the given BN1 statistics.
//   3. fusion_head_bwd_kernel: the head's backward per pixel -> g2 (dL/d BN2 output), n2, the direct
//      parts of dL/dXk and dL/dR, and block sums for dW3, db3, dgamma2, dbeta2, sum n2.
//   4. fusion_conv_bwd_kernel: per 8 x 32 tile with a halo of a1 and dz2 = cA g2 + cB n2 + cC
//      (BN2's backward): g1 = lrelu'(a1) conv3x3^T(dz2), block sums for dW2, sum g1 and
//      sum g1 (in - mu); adds u = (W1 D)^T g1 to dL/dXk and dL/dR.
//   5. fusion_tail_bwd_kernel: the input-dependent part of W1^T dz1 (training), sigmoid', and the
//      map conv's input gradient dF = Wm^T dr; dWm = dr F^T is one batched GEMM afterwards.

struct HeadBwdParams {
  const float* mean2;    // (A) the statistics BN2 normalised with
  const float* invstd2;  // (A)
  const float* g2;       // (A) bn2 weight
  const float* be2;      // (A) bn2 bias
  const float* W3;       // (A, A)
  const float* b3;       // (A)
};

// Sums each of the K per-thread values over the block (warps by shuffles, then the warps in index
// order in double) and writes the K totals to out (by threads 0..K-1). scratch: (nwarps, K) floats.
template <int K>
__device__ __forceinline__ void block_sums_to(const float (&v)[K], float* scratch, double* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const float s = warp_sum(v[k]);
    if (lane == 0) scratch[warp * K + k] = s;
  }
  __syncthreads();
  if (threadIdx.x < K) {
    double total = 0.0;
    for (int w = 0; w < nwarps; ++w) total += scratch[w * K + threadIdx.x];
    out[threadIdx.x] = total;
  }
  __syncthreads();  // scratch reusable
}

template <typename T, int A>
__global__ void __launch_bounds__(kPixThreads) fusion_head_bwd_kernel(
    const float* __restrict__ xr, const float* __restrict__ z2, const T* __restrict__ gout,
    const T* __restrict__ galpha, const T* __restrict__ graw, HeadBwdParams hp, int64_t hw, float* __restrict__ G2,
    float* __restrict__ N2, float* __restrict__ gX, float* __restrict__ dRd, double* __restrict__ partial) {
  constexpr int K = A * A + 4 * A;  // dW3[A*A], db3[A], sum g2[A], sum g2 n2[A], sum n2[A]
  __shared__ float scratch[(kPixThreads / 32) * K];
  const int b = blockIdx.y;
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * kPixThreads + threadIdx.x;
  float acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0.0f;
  if (pix < hw) {
    float X[3], R[3], n2[A], bv[A], a2[A], al[A], dz3[A];
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      X[j] = xr[(static_cast<int64_t>(b) * 6 + j) * hw + pix];
      R[j] = xr[(static_cast<int64_t>(b) * 6 + 3 + j) * hw + pix];
    }
#pragma unroll
    for (int a = 0; a < A; ++a) {
      n2[a] = (z2[(static_cast<int64_t>(b) * A + a) * hw + pix] - hp.mean2[a]) * hp.invstd2[a];
      bv[a] = fmaf(hp.g2[a], n2[a], hp.be2[a]);
      a2[a] = lrelu(bv[a], kSlope);
    }
#pragma unroll
    for (int a = 0; a < A; ++a) {
      float v = hp.b3[a];
#pragma unroll
      for (int k = 0; k < A; ++k) v = fmaf(hp.W3[a * A + k], a2[k], v);
      al[a] = sigmoidf_acc(v);
      dz3[a] = to_float(galpha[(static_cast<int64_t>(b) * A + a) * hw + pix]);
    }
    // dalpha = grad_alpha + grad_out (R - Xk) (summed over colours when alpha is shared).
#pragma unroll
    for (int ch = 0; ch < 3; ++ch) {
      const int a = A == 1 ? 0 : ch;
      const int64_t off = (static_cast<int64_t>(b) * 3 + ch) * hw + pix;
      const float go = to_float(gout[off]);
      dz3[a] = fmaf(go, R[ch] - X[ch], dz3[a]);
      gX[off] = go * (1.0f - al[a]);
      dRd[off] = fmaf(go, al[a], to_float(graw[off]));
    }
#pragma unroll
    for (int a = 0; a < A; ++a) dz3[a] *= al[a] * (1.0f - al[a]);
#pragma unroll
    for (int q = 0; q < A; ++q) {
      float da2 = 0.0f;
#pragma unroll
      for (int a = 0; a < A; ++a) da2 = fmaf(hp.W3[a * A + q], dz3[a], da2);
      const float g2 = bv[q] > 0.0f ? da2 : da2 * kSlope;
      G2[(static_cast<int64_t>(b) * A + q) * hw + pix] = g2;
      N2[(static_cast<int64_t>(b) * A + q) * hw + pix] = n2[q];
      acc[A * A + A + q] = g2;
      acc[A * A + 2 * A + q] = g2 * n2[q];
      acc[A * A + 3 * A + q] = n2[q];
    }
#pragma unroll
    for (int a = 0; a < A; ++a) {
      acc[A * A + a] = dz3[a];
#pragma unroll
      for (int q = 0; q < A; ++q) acc[a * A + q] = dz3[a] * a2[q];
    }
  }
  block_sums_to<K>(acc, scratch, partial + (static_cast<int64_t>(b) * gridDim.x + blockIdx.x) * K);
}

struct ConvBwdParams {
  const float* W1;   // (Cm, 6) BN1 folded in (recomputes a1)
  const float* b1;   // (Cm)
  const float* W1D;  // (Cm, 6) W1 scaled by gamma1 invstd1 (u = W1D^T g1)
  const float* W2;   // (A, Cm, 9) raw conv2 weight
  const float* cA;   // (A) dz2 = cA g2 + cB n2 + cC
  const float* cB;
  const float* cC;
  const float* mu;   // (6) mean of in
};

inline size_t conv_bwd_smem_bytes(int64_t Cm, int A) {
  const size_t floats = Cm * 13 + static_cast<size_t>(A) * Cm * 9 + (6 + A + kA1Chunk) * kHalo +
                        (kTileThreads / 32) * (A * 9 + 7);
  const size_t doubles = static_cast<size_t>(A) * Cm * 9 + 7 * Cm;
  return doubles * sizeof(double) + floats * sizeof(float);
}

// Partial sums per block: dW2 [A*Cm*9], sum g1 [Cm], sum g1 (in - mu) [Cm*6].
template <typename T, int A>
__global__ void __launch_bounds__(kTileThreads) fusion_conv_bwd_kernel(
    const float* __restrict__ xr, const float* __restrict__ G2, const float* __restrict__ N2, ConvBwdParams prm,
    int Cm, int h, int w, float* __restrict__ gX, float* __restrict__ dRd, double* __restrict__ partial) {
  constexpr int KR = A * 9 + 7;  // values reduced per a1 channel
  extern __shared__ __align__(16) unsigned char smem_raw[];
  double* acc_s = reinterpret_cast<double*>(smem_raw);    // (A*Cm*9 + 7*Cm) block totals
  float* W1_s = reinterpret_cast<float*>(acc_s + A * Cm * 9 + 7 * Cm);
  float* b1_s = W1_s + Cm * 6;
  float* W1D_s = b1_s + Cm;
  float* W2_s = W1D_s + Cm * 6;
  float* in_s = W2_s + A * Cm * 9;                        // (6, kHalo)
  float* dz_s = in_s + 6 * kHalo;                         // (A, kHalo)
  float* a1_s = dz_s + A * kHalo;                         // (kA1Chunk, kHalo)
  float* red_s = a1_s + kA1Chunk * kHalo;                 // (warps, KR)

  const int tid = threadIdx.x;
  const int tx = tid % kTileW, ty = tid / kTileW;
  const int x0 = blockIdx.x * kTileW, y0 = blockIdx.y * kTileH, b = blockIdx.z;
  const int64_t hw = static_cast<int64_t>(h) * w;
  for (int i = tid; i < Cm * 6; i += kTileThreads) {
    W1_s[i] = prm.W1[i];
    W1D_s[i] = prm.W1D[i];
  }
  for (int i = tid; i < Cm; i += kTileThreads) b1_s[i] = prm.b1[i];
  for (int i = tid; i < A * Cm * 9; i += kTileThreads) W2_s[i] = prm.W2[i];
  for (int p = tid; p < kHalo; p += kTileThreads) {
    const int gy = y0 - 1 + p / kHaloW, gx = x0 - 1 + p % kHaloW;
    const bool inside = gy >= 0 && gy < h && gx >= 0 && gx < w;
    const int64_t pix = static_cast<int64_t>(gy) * w + gx;
#pragma unroll
    for (int ch = 0; ch < 6; ++ch) in_s[ch * kHalo + p] = inside ? xr[(static_cast<int64_t>(b) * 6 + ch) * hw + pix] : 0.0f;
#pragma unroll
    for (int a = 0; a < A; ++a) {
      const int64_t off = (static_cast<int64_t>(b) * A + a) * hw + pix;
      // Outputs outside the image do not exist: their gradient is zero (the conv's zero padding).
      dz_s[a * kHalo + p] = inside ? fmaf(prm.cA[a], G2[off], fmaf(prm.cB[a], N2[off], prm.cC[a])) : 0.0f;
    }
  }

  const int gy = y0 + ty, gx = x0 + tx;
  const bool valid = gy < h && gx < w;
  const int pc = (ty + 1) * kHaloW + tx + 1;  // this thread's pixel in halo coordinates
  float u[6] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};

  for (int m0 = 0; m0 < Cm; m0 += kA1Chunk) {
    const int mc = min(kA1Chunk, Cm - m0);
    __syncthreads();  // in_s / dz_s ready (first chunk); a1_s of the previous chunk consumed
    for (int idx = tid; idx < mc * kHalo; idx += kTileThreads) {
      const int kk = idx / kHalo, p = idx % kHalo;
      const int hy = y0 - 1 + p / kHaloW, hx = x0 - 1 + p % kHaloW;
      float v = 0.0f;
      if (hy >= 0 && hy < h && hx >= 0 && hx < w) {
        const float* wr = W1_s + (m0 + kk) * 6;
        v = b1_s[m0 + kk];
#pragma unroll
        for (int i = 0; i < 6; ++i) v = fmaf(wr[i], in_s[i * kHalo + p], v);
        v = lrelu(v, kSlope);
      }
      a1_s[kk * kHalo + p] = v;
    }
    __syncthreads();
    for (int kk = 0; kk < mc; ++kk) {
      const int m = m0 + kk;
      const float* a1 = a1_s + kk * kHalo;
      float r[KR];
      // da1 at this pixel: tap (dy, dx) of the output at (y - dy + 1, x - dx + 1) read it.
      float da1 = 0.0f;
#pragma unroll
      for (int a = 0; a < A; ++a) {
        const float* k9 = W2_s + (a * Cm + m) * 9;
        const float dzc = dz_s[a * kHalo + pc];
#pragma unroll
        for (int dy = 0; dy < 3; ++dy)
#pragma unroll
          for (int dx = 0; dx < 3; ++dx) {
            da1 = fmaf(k9[dy * 3 + dx], dz_s[a * kHalo + (ty + 2 - dy) * kHaloW + tx + 2 - dx], da1);
            // dW2[a][m][dy][dx] += dz2(this pixel) a1(y + dy - 1, x + dx - 1).
            r[a * 9 + dy * 3 + dx] = dzc * a1[(ty + dy) * kHaloW + tx + dx];
          }
      }
      const float g1 = valid ? (a1[pc] > 0.0f ? da1 : da1 * kSlope) : 0.0f;
      r[A * 9] = g1;
#pragma unroll
      for (int j = 0; j < 6; ++j) {
        r[A * 9 + 1 + j] = g1 * (in_s[j * kHalo + pc] - prm.mu[j]);
        u[j] = fmaf(W1D_s[m * 6 + j], g1, u[j]);
      }
      // Block totals of this channel's KR values, kept in shared memory (double) until the end.
      const int lane = tid & 31, warp = tid >> 5;
#pragma unroll
      for (int k = 0; k < KR; ++k) {
        const float s = warp_sum(r[k]);
        if (lane == 0) red_s[warp * KR + k] = s;
      }
      __syncthreads();
      if (tid < KR) {
        double total = 0.0;
        for (int wi = 0; wi < kTileThreads / 32; ++wi) total += red_s[wi * KR + tid];
        const int dst = tid < A * 9 ? (tid / 9 * Cm + m) * 9 + tid % 9        // dW2[a][m][tap]
                                    : tid == A * 9 ? A * Cm * 9 + m            // sum g1
                                                   : A * Cm * 9 + Cm + m * 6 + (tid - A * 9 - 1);  // P[m][j]
        acc_s[dst] = total;  // each (channel, value) is reduced exactly once per block
      }
      __syncthreads();
    }
  }
  if (valid) {
    const int64_t pix = static_cast<int64_t>(gy) * w + gx;
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      const int64_t off = (static_cast<int64_t>(b) * 3 + j) * hw + pix;
      gX[off] += u[j];
      dRd[off] += u[3 + j];
    }
  }
  const int64_t blk = (static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int total = A * Cm * 9 + 7 * Cm;
  for (int i = tid; i < total; i += kTileThreads) partial[blk * total + i] = acc_s[i];
}

// Per pixel: dZ = c0 + K (in - mu) (training; the input-dependent part of W1^T dz1), then
// dr = (dRd + dZ[3:]) R (1 - R), grad_image_resized = gX + dZ[:3], dF[k] = sum_j Wm[j][k] dr[j].
template <typename T>
__global__ void __launch_bounds__(kPixThreads) fusion_tail_bwd_kernel(
    const float* __restrict__ xr, const float* __restrict__ gX, const float* __restrict__ dRd,
    const float* __restrict__ Wm, const float* __restrict__ K, const float* __restrict__ c0v,
    const float* __restrict__ mu, bool train, int c, int64_t hw, T* __restrict__ grad_xk, float* __restrict__ dr_out,
    T* __restrict__ grad_feat) {
  const int b = blockIdx.y;
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * kPixThreads + threadIdx.x;
  if (pix >= hw) return;
  float in[6], dz[6] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int j = 0; j < 6; ++j) in[j] = xr[(static_cast<int64_t>(b) * 6 + j) * hw + pix];
  if (train) {
#pragma unroll
    for (int i = 0; i < 6; ++i) {
      float v = c0v[i];
#pragma unroll
      for (int j = 0; j < 6; ++j) v = fmaf(K[i * 6 + j], in[j] - mu[j], v);
      dz[i] = v;
    }
  }
  float dr[3];
#pragma unroll
  for (int j = 0; j < 3; ++j) {
    const int64_t off = (static_cast<int64_t>(b) * 3 + j) * hw + pix;
    grad_xk[off] = from_float<T>(gX[off] + dz[j]);
    const float r = in[3 + j];
    dr[j] = (dRd[off] + dz[3 + j]) * r * (1.0f - r);
    dr_out[off] = dr[j];
  }
  T* gf = grad_feat + static_cast<int64_t>(b) * c * hw + pix;
#pragma unroll 4
  for (int k = 0; k < c; ++k) {
    gf[k * hw] = from_float<T>(fmaf(Wm[k], dr[0], fmaf(Wm[c + k], dr[1], Wm[2 * c + k] * dr[2])));
  }
}

// ---- host side ----------------------------------------------------------------------------------------

at::Tensor f32(const at::Tensor& t) { return t.reshape({-1}).to(at::kFloat).contiguous(); }
at::Tensor f64(const at::Tensor& t) { return t.reshape({-1}).to(at::kDouble); }

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes, const char* what) {
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(optin), "fusion_block (CUDA): ", what, " needs ", bytes,
              " bytes of shared memory per block, more than this GPU's ", optin,
              "; use backend='triton' or 'reference'");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <typename Body>
void dispatch_alpha_channels(int64_t A, Body&& body) {
  if (A == 1) {
    body(std::integral_constant<int, 1>{});
  } else {
    body(std::integral_constant<int, 3>{});
  }
}

// Sizes of one call, and the grids every pass uses.
struct Dims : FusionBlockDims {
  double M;  // B * h * w, the number of values each BN statistic averages
  float scale_y, scale_x;
  dim3 tile_grid, pix_grid;
};

// The structural checks shared with the CPU kernels (csrc/fusion_block_params.h), then the CUDA
// ones: feat and image CUDA tensors of one dtype in the envelope, every parameter on their device,
// and the sizes within the launch limits.
Dims check_inputs(const char* op, const at::Tensor& feat, const at::Tensor& image, const FusionBlockParams& p,
                  bool training) {
  const FusionBlockDims sizes = check_fusion_block_params(op, feat, image, p, training);
  const at::Device dev = feat.device();
  check_cuda_float(op, "feat", feat, dev);
  check_cuda_float(op, "image", image, dev);
  check_same_dtype(op, "image", image, "feat", feat);
  p.for_each(sizes, [&](const char* name, const at::Tensor& t, int64_t, const char*) {
    check_device(op, name, t, dev);
  });
  Dims d{};
  static_cast<FusionBlockDims&>(d) = sizes;
  const int64_t nty = ceil_div(d.h, kTileH);
  check_launch_limit(op, "the number of tile rows", nty, kMaxGridYZ, "the CUDA grid's y extent");
  check_launch_limit(op, "the batch size B", d.B, kMaxGridYZ, "the CUDA grid's z extent");
  const std::pair<const char*, int64_t> indexed[] = {{"c", d.c}, {"h", d.h}, {"w", d.w}, {"H", d.H}, {"W", d.W}};
  for (const auto& [what, value] : indexed) {
    check_launch_limit(op, what, value, kMaxIndexSize, "the kernels' int indices");
  }
  d.M = static_cast<double>(d.B * d.h * d.w);
  // PyTorch's bilinear scale for an output size without scale_factor: in / out.
  d.scale_y = static_cast<float>(static_cast<double>(d.H) / static_cast<double>(d.h));
  d.scale_x = static_cast<float>(static_cast<double>(d.W) / static_cast<double>(d.w));
  d.tile_grid = dim3(static_cast<unsigned>(ceil_div(d.w, kTileW)), static_cast<unsigned>(nty),
                     static_cast<unsigned>(d.B));
  d.pix_grid = dim3(static_cast<unsigned>(ceil_div(d.h * d.w, kPixThreads)), static_cast<unsigned>(d.B));
  return d;
}

// Pass: in = [Xk, R] into xr (B, 6, h, w) float32; returns the per-block moment sums (double).
at::Tensor launch_xr(const char* op, const Dims& d, const at::Tensor& feat, const at::Tensor& image,
                     const at::Tensor& Wm, const at::Tensor& bm, at::Tensor& xr, cudaStream_t stream) {
  at::Tensor part = at::empty({d.B * static_cast<int64_t>(d.pix_grid.x), kMoments},
                              feat.options().dtype(at::kDouble));
  dispatch_float_types(feat.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    fusion_xr_kernel<T><<<d.pix_grid, kPixThreads, 0, stream>>>(
        device_ptr<const T>(feat), device_ptr<const T>(image), Wm.data_ptr<float>(), bm.data_ptr<float>(),
        static_cast<int>(d.c), static_cast<int>(d.h), static_cast<int>(d.w), static_cast<int>(d.H),
        static_cast<int>(d.W), d.scale_y, d.scale_x, xr.data_ptr<float>(), part.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return part;
}

// Pass: z2 = conv3x3(a1) + b2 from xr (float32 (B, A, h, w)); returns the per-block sums of z2 and
// z2^2 (double).
at::Tensor launch_z2(const char* op, const Dims& d, at::ScalarType st, const at::Tensor& xr, const TileParams& prm,
                     at::Tensor& z2, cudaStream_t stream) {
  const int64_t blocks = static_cast<int64_t>(d.tile_grid.x) * d.tile_grid.y * d.tile_grid.z;
  at::Tensor part = at::empty({blocks, 2 * d.A}, xr.options().dtype(at::kDouble));
  const size_t smem = tile_smem_floats(d.c, d.Cm, static_cast<int>(d.A), true) * sizeof(float);
  dispatch_float_types(st, op, [&](auto tag) {
    using T = decltype(tag);
    dispatch_alpha_channels(d.A, [&](auto a_tag) {
      constexpr int kA = decltype(a_tag)::value;
      auto kernel = fusion_tile_kernel<T, kA, true>;
      set_smem(kernel, smem, "Cm");
      kernel<<<d.tile_grid, kTileThreads, smem, stream>>>(
          nullptr, nullptr, xr.data_ptr<float>(), prm, static_cast<int>(d.c), static_cast<int>(d.Cm),
          static_cast<int>(d.h), static_cast<int>(d.w), static_cast<int>(d.H), static_cast<int>(d.W), d.scale_y,
          d.scale_x, nullptr, nullptr, nullptr, z2.data_ptr<float>(), part.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return part;
}

// BN1 folded into conv1 for the given statistics (double math, float32 results):
// W1f = s1 W1, b1f = s1 (b1 - mean1) + beta1, s1 = gamma1 / sqrt(var1 + eps). Returns s1 (double).
at::Tensor fold_bn1(const Dims& d, const FusionBlockParams& p, const at::Tensor& mean1, const at::Tensor& var1,
                    double eps, at::Tensor& W1f, at::Tensor& b1f) {
  const at::Tensor W1d = f64(p.conv1_weight).reshape({d.Cm, 6});
  const at::Tensor s1 = f64(p.bn1_weight) / (f64(var1) + eps).sqrt();
  W1f = (W1d * s1.unsqueeze(1)).to(at::kFloat).contiguous();
  b1f = (s1 * (f64(p.conv1_bias) - f64(mean1)) + f64(p.bn1_bias)).to(at::kFloat).contiguous();
  return s1;
}

// A fresh contiguous gradient with the shape and dtype of `like`.
at::Tensor grad_like(const at::Tensor& v, const at::Tensor& like) {
  return v.reshape(like.sizes()).to(like.scalar_type()).contiguous();
}

}  // namespace

// The ops on CUDA tensors, registered through fusion_block_fwd_op / fusion_block_bwd_op
// (csrc/fusion_block_params.h), which build the FusionBlockParams from the schemas' arguments.
FusionBlockForward fusion_block_forward(const at::Tensor& feat_in, const at::Tensor& image_in, const FusionBlockParams& p,
                                        bool training, double eps) {
  const char* op = "fusion_block_fwd (CUDA)";
  const Dims d = check_inputs(op, feat_in, image_in, p, training);
  const c10::cuda::CUDAGuard guard(feat_in.device());
  const at::Tensor feat = feat_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const auto st = feat.scalar_type();
  const auto fopts = feat.options().dtype(at::kFloat);
  const cudaStream_t stream = current_stream();
  const int64_t B = d.B, h = d.h, w = d.w, A = d.A;

  at::Tensor out = at::empty({B, 3, h, w}, feat.options());
  at::Tensor alpha = at::empty({B, A, h, w}, feat.options());
  at::Tensor raw = at::empty({B, 3, h, w}, feat.options());
  const at::Tensor Wm = f32(p.map_weight), bm = f32(p.map_bias), W3 = f32(p.conv3_weight), b3 = f32(p.conv3_bias);
  const at::Tensor W2d = f64(p.conv2_weight).reshape({A, d.Cm * 9});
  const at::Tensor b2d = f64(p.conv2_bias), g2d = f64(p.bn2_weight), be2d = f64(p.bn2_bias);

  // The statistics BN normalises with, as device tensors of the returned dtype (float32 for every
  // dtype the CUDA kernels take).
  const at::ScalarType stat = accumulate_dtype(st);
  at::Tensor mean1, var1, mean2, var2, W1f, b1f;

  if (!training) {
    // Eval: running statistics, returned as fresh copies; BN1 and BN2 folded into conv1 / conv2.
    mean1 = p.bn1_mean.reshape({-1}).to(stat, false, /*copy=*/true);
    var1 = p.bn1_var.reshape({-1}).to(stat, false, /*copy=*/true);
    mean2 = p.bn2_mean.reshape({-1}).to(stat, false, /*copy=*/true);
    var2 = p.bn2_var.reshape({-1}).to(stat, false, /*copy=*/true);
    fold_bn1(d, p, p.bn1_mean, p.bn1_var, eps, W1f, b1f);
    const at::Tensor s2 = g2d / (f64(p.bn2_var) + eps).sqrt();
    const at::Tensor W2f = (W2d * s2.unsqueeze(1)).to(at::kFloat).contiguous();
    const at::Tensor b2f = (s2 * (b2d - f64(p.bn2_mean)) + be2d).to(at::kFloat).contiguous();
    const at::Tensor ones = at::ones({A}, fopts), zeros = at::zeros({A}, fopts);
    const TileParams prm{Wm.data_ptr<float>(),  bm.data_ptr<float>(),    W1f.data_ptr<float>(),
                         b1f.data_ptr<float>(), W2f.data_ptr<float>(),   b2f.data_ptr<float>(),
                         ones.data_ptr<float>(), zeros.data_ptr<float>(), W3.data_ptr<float>(),
                         b3.data_ptr<float>()};
    const size_t smem = tile_smem_floats(d.c, d.Cm, static_cast<int>(A), false) * sizeof(float);
    dispatch_float_types(st, op, [&](auto tag) {
      using T = decltype(tag);
      dispatch_alpha_channels(A, [&](auto a_tag) {
        constexpr int kA = decltype(a_tag)::value;
        auto kernel = fusion_tile_kernel<T, kA, false>;
        set_smem(kernel, smem, "the feature width c / Cm");
        kernel<<<d.tile_grid, kTileThreads, smem, stream>>>(
            device_ptr<const T>(feat), device_ptr<const T>(image), nullptr, prm, static_cast<int>(d.c),
            static_cast<int>(d.Cm), static_cast<int>(h), static_cast<int>(w), static_cast<int>(d.H),
            static_cast<int>(d.W), d.scale_y, d.scale_x, device_ptr<T>(out), device_ptr<T>(alpha), device_ptr<T>(raw),
            nullptr, nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    return {out, alpha, raw, mean1, var1, mean2, var2};
  }

  // Training. Pass 1: in = [Xk, R] and its moments -> BN1 batch statistics.
  at::Tensor xr = at::empty({B, 6, h, w}, fopts);
  {
    const at::Tensor mom = launch_xr(op, d, feat, image, Wm, bm, xr, stream).sum(0);
    const at::Tensor mu = mom.narrow(0, 0, 6) / d.M;                                        // (6)
    const at::Tensor cov = mom.narrow(0, 6, 36).reshape({6, 6}) / d.M - at::outer(mu, mu);  // (6, 6), biased
    const at::Tensor W1d = f64(p.conv1_weight).reshape({d.Cm, 6});
    const at::Tensor m1 = at::mv(W1d, mu) + f64(p.conv1_bias);
    const at::Tensor v1 = (at::mm(W1d, cov) * W1d).sum(1).clamp_min(0.0);
    // Normalise with exactly what is returned, as the CPU kernel does.
    mean1 = m1.to(stat);
    var1 = v1.to(stat);
  }
  fold_bn1(d, p, mean1, var1, eps, W1f, b1f);

  // Pass 2: z2 and its per-block sums -> BN2 batch statistics.
  const at::Tensor W2raw = W2d.to(at::kFloat).contiguous(), b2raw = b2d.to(at::kFloat).contiguous();
  at::Tensor z2 = at::empty({B, A, h, w}, fopts);
  const at::Tensor unused = at::empty({A}, fopts);
  TileParams prm{nullptr, nullptr, W1f.data_ptr<float>(), b1f.data_ptr<float>(), W2raw.data_ptr<float>(),
                 b2raw.data_ptr<float>(), unused.data_ptr<float>(), unused.data_ptr<float>(), W3.data_ptr<float>(),
                 b3.data_ptr<float>()};
  const at::Tensor zs = launch_z2(op, d, st, xr, prm, z2, stream).sum(0);
  const at::Tensor m2 = zs.narrow(0, 0, A) / d.M;
  const at::Tensor v2 = (zs.narrow(0, A, A) / d.M - m2 * m2).clamp_min(0.0);
  mean2 = m2.to(stat);
  var2 = v2.to(stat);
  // BN2 as an affine map of z2: n * gamma2 + beta2 = z2 s2 + t2.
  const at::Tensor s2d = g2d / (var2.to(at::kDouble) + eps).sqrt();
  const at::Tensor s2 = s2d.to(at::kFloat).contiguous();
  const at::Tensor t2 = (be2d - s2d * mean2.to(at::kDouble)).to(at::kFloat).contiguous();
  prm.s2 = s2.data_ptr<float>();
  prm.t2 = t2.data_ptr<float>();

  // Pass 3: the head and the blend.
  dispatch_float_types(st, op, [&](auto tag) {
    using T = decltype(tag);
    dispatch_alpha_channels(A, [&](auto a_tag) {
      constexpr int kA = decltype(a_tag)::value;
      fusion_finish_kernel<T, kA><<<d.pix_grid, kPixThreads, 0, stream>>>(
          xr.data_ptr<float>(), z2.data_ptr<float>(), prm, h * w, device_ptr<T>(out), device_ptr<T>(alpha),
          device_ptr<T>(raw));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, alpha, raw, mean1, var1, mean2, var2};
}

FusionBlockBackward fusion_block_backward(const at::Tensor& grad_out, const at::Tensor& grad_alpha,
                                          const at::Tensor& grad_raw, const at::Tensor& feat_in, const at::Tensor& image_in,
                                          const FusionBlockParams& p, bool training, double eps) {
  const char* op = "fusion_block_bwd (CUDA)";
  const Dims d = check_inputs(op, feat_in, image_in, p, training);
  const at::Device dev = feat_in.device();
  const c10::cuda::CUDAGuard guard(dev);
  const at::Tensor feat = feat_in.contiguous();
  const at::Tensor image = image_in.contiguous();
  const auto st = feat.scalar_type();
  const auto fopts = feat.options().dtype(at::kFloat);
  const cudaStream_t stream = current_stream();
  const int64_t B = d.B, c = d.c, h = d.h, w = d.w, A = d.A, Cm = d.Cm;
  const int64_t hw = h * w;
  const double M = d.M;

  // A gradient autograd did not materialise may arrive undefined or as (0,): it is zero.
  auto prep_grad = [&](const at::Tensor& g, int64_t C, const char* name, const char* layout) {
    if (!check_fusion_block_grad(op, name, g, d, C, layout)) return at::zeros({B, C, h, w}, feat.options());
    check_cuda_float(op, name, g, dev);
    return g.to(st).contiguous();
  };
  const at::Tensor gout = prep_grad(grad_out, 3, "grad_out", "(B, 3, h, w)");
  const at::Tensor galpha = prep_grad(grad_alpha, A, "grad_alpha", "(B, A, h, w)");
  const at::Tensor graw = prep_grad(grad_raw, 3, "grad_raw", "(B, 3, h, w)");

  const at::Tensor Wm = f32(p.map_weight), bm = f32(p.map_bias), W3 = f32(p.conv3_weight), b3 = f32(p.conv3_bias);
  const at::Tensor W1d = f64(p.conv1_weight).reshape({Cm, 6});

  // Pass 1: in = [Xk, R] and its moments (mu, and Csum = sum (in - mu)(in - mu)^T).
  at::Tensor xr = at::empty({B, 6, h, w}, fopts);
  const at::Tensor mom = launch_xr(op, d, feat, image, Wm, bm, xr, stream).sum(0);
  const at::Tensor mu = mom.narrow(0, 0, 6) / M;
  const at::Tensor Csum = mom.narrow(0, 6, 36).reshape({6, 6}) - M * at::outer(mu, mu);

  // Pass 2: z2 with the given BN1 statistics.
  at::Tensor W1f, b1f;
  const at::Tensor D = fold_bn1(d, p, p.bn1_mean, p.bn1_var, eps, W1f, b1f);  // gamma1 invstd1
  const at::Tensor W2raw = f32(p.conv2_weight), b2raw = f32(p.conv2_bias);
  at::Tensor z2 = at::empty({B, A, h, w}, fopts);
  const at::Tensor unused = at::empty({A}, fopts);
  const TileParams prm{nullptr, nullptr, W1f.data_ptr<float>(), b1f.data_ptr<float>(), W2raw.data_ptr<float>(),
                       b2raw.data_ptr<float>(), unused.data_ptr<float>(), unused.data_ptr<float>(),
                       W3.data_ptr<float>(), b3.data_ptr<float>()};
  launch_z2(op, d, st, xr, prm, z2, stream);

  // Pass 3: the head's backward.
  const at::Tensor invstd2d = 1.0 / (f64(p.bn2_var) + eps).sqrt();
  const at::Tensor mean2f = f32(p.bn2_mean), invstd2f = invstd2d.to(at::kFloat).contiguous();
  const at::Tensor g2f = f32(p.bn2_weight), be2f = f32(p.bn2_bias);
  const HeadBwdParams hp{mean2f.data_ptr<float>(), invstd2f.data_ptr<float>(), g2f.data_ptr<float>(),
                         be2f.data_ptr<float>(),   W3.data_ptr<float>(),       b3.data_ptr<float>()};
  at::Tensor G2 = at::empty({B, A, h, w}, fopts), N2 = at::empty({B, A, h, w}, fopts);
  at::Tensor gX = at::empty({B, 3, h, w}, fopts), dRd = at::empty({B, 3, h, w}, fopts);
  const int64_t k_head = A * A + 4 * A;
  at::Tensor head_part = at::empty({B * static_cast<int64_t>(d.pix_grid.x), k_head}, fopts.dtype(at::kDouble));
  dispatch_float_types(st, op, [&](auto tag) {
    using T = decltype(tag);
    dispatch_alpha_channels(A, [&](auto a_tag) {
      constexpr int kA = decltype(a_tag)::value;
      fusion_head_bwd_kernel<T, kA><<<d.pix_grid, kPixThreads, 0, stream>>>(
          xr.data_ptr<float>(), z2.data_ptr<float>(), device_ptr<const T>(gout), device_ptr<const T>(galpha),
          device_ptr<const T>(graw), hp, hw, G2.data_ptr<float>(), N2.data_ptr<float>(), gX.data_ptr<float>(),
          dRd.data_ptr<float>(), head_part.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  const at::Tensor head = head_part.sum(0);
  const at::Tensor dW3 = head.narrow(0, 0, A * A), db3 = head.narrow(0, A * A, A);
  const at::Tensor dbeta2 = head.narrow(0, A * A + A, A), dgamma2 = head.narrow(0, A * A + 2 * A, A);
  const at::Tensor sum_n2 = head.narrow(0, A * A + 3 * A, A);
  // BN2 backward as dz2 = cA g2 + cB n2 + cC (training: dz = gamma invstd (g - mean g - n mean(g n))).
  const at::Tensor cA = f64(p.bn2_weight) * invstd2d;
  const at::Tensor cB = training ? -cA * dgamma2 / M : at::zeros_like(cA);
  const at::Tensor cC = training ? -cA * dbeta2 / M : at::zeros_like(cA);
  const at::Tensor db2 = cA * dbeta2 + cB * sum_n2 + cC * M;

  // Pass 4: the 3x3 conv's and lrelu1's backward, with the folded BN1 / conv1 sums.
  const at::Tensor W1Df = (W1d * D.unsqueeze(1)).to(at::kFloat).contiguous();
  const at::Tensor cAf = cA.to(at::kFloat).contiguous(), cBf = cB.to(at::kFloat).contiguous(),
                   cCf = cC.to(at::kFloat).contiguous(), muf = mu.to(at::kFloat).contiguous();
  const ConvBwdParams cp{W1f.data_ptr<float>(), b1f.data_ptr<float>(), W1Df.data_ptr<float>(), W2raw.data_ptr<float>(),
                         cAf.data_ptr<float>(), cBf.data_ptr<float>(), cCf.data_ptr<float>(), muf.data_ptr<float>()};
  const int64_t tile_blocks = static_cast<int64_t>(d.tile_grid.x) * d.tile_grid.y * d.tile_grid.z;
  const int64_t k_conv = A * Cm * 9 + 7 * Cm;
  at::Tensor conv_part = at::empty({tile_blocks, k_conv}, fopts.dtype(at::kDouble));
  const size_t smem = conv_bwd_smem_bytes(Cm, static_cast<int>(A));
  dispatch_float_types(st, op, [&](auto tag) {
    using T = decltype(tag);
    dispatch_alpha_channels(A, [&](auto a_tag) {
      constexpr int kA = decltype(a_tag)::value;
      auto kernel = fusion_conv_bwd_kernel<T, kA>;
      set_smem(kernel, smem, "Cm");
      kernel<<<d.tile_grid, kTileThreads, smem, stream>>>(xr.data_ptr<float>(), G2.data_ptr<float>(),
                                                           N2.data_ptr<float>(), cp, static_cast<int>(Cm),
                                                           static_cast<int>(h), static_cast<int>(w),
                                                           gX.data_ptr<float>(), dRd.data_ptr<float>(),
                                                           conv_part.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  const at::Tensor conv = conv_part.sum(0);
  const at::Tensor dW2 = conv.narrow(0, 0, A * Cm * 9);
  const at::Tensor S1 = conv.narrow(0, A * Cm * 9, Cm);                 // sum g1 (= dbeta1)
  const at::Tensor P = conv.narrow(0, A * Cm * 9 + Cm, 6 * Cm).reshape({Cm, 6});  // sum g1 (in - mu)^T

  // BN1 + conv1 backward from the sums (the CPU kernel's derivation): with in' = in - mu,
  // dd = W1 mu + b1 - mean1, invstd1, D = gamma1 invstd1 and, in training, E = D invstd1 S2 / M:
  //   dgamma1 = S2 = invstd1 (W1 . P + dd S1),  dbeta1 = S1
  //   training: dW1 = D P - E (W1 Csum + M dd mu^T), db1 = -E M dd, W1^T dz1 = u + K in' + c0 with
  //             K = -W1^T diag(E) W1, c0 = -W1^T (D S1 / M + E dd)
  //   eval:     dW1 = D (P + S1 mu^T), db1 = D S1
  const at::Tensor invstd1 = 1.0 / (f64(p.bn1_var) + eps).sqrt();
  const at::Tensor dd = at::mv(W1d, mu) + f64(p.conv1_bias) - f64(p.bn1_mean);
  const at::Tensor S2 = invstd1 * ((W1d * P).sum(1) + dd * S1);
  at::Tensor dW1, db1, K, c0;
  if (training) {
    const at::Tensor E = D * invstd1 * S2 / M;
    dW1 = D.unsqueeze(1) * P - E.unsqueeze(1) * (at::mm(W1d, Csum) + M * at::outer(dd, mu));
    db1 = -E * M * dd;
    K = -at::mm(W1d.t(), E.unsqueeze(1) * W1d);
    c0 = -at::mv(W1d.t(), D * S1 / M + E * dd);
  } else {
    dW1 = D.unsqueeze(1) * (P + at::outer(S1, mu));
    db1 = D * S1;
    K = at::zeros({6, 6}, S1.options());
    c0 = at::zeros({6}, S1.options());
  }
  const at::Tensor Kf = K.to(at::kFloat).contiguous(), c0f = c0.to(at::kFloat).contiguous();

  // Pass 5: the rest of dXk and dR, then the map conv's input gradient; dWm = dr F^T as a GEMM.
  at::Tensor grad_xk = at::empty({B, 3, h, w}, feat.options());
  at::Tensor grad_feat = at::empty({B, c, h, w}, feat.options());
  at::Tensor dr = at::empty({B, 3, h, w}, fopts);
  dispatch_float_types(st, op, [&](auto tag) {
    using T = decltype(tag);
    fusion_tail_bwd_kernel<T><<<d.pix_grid, kPixThreads, 0, stream>>>(
        xr.data_ptr<float>(), gX.data_ptr<float>(), dRd.data_ptr<float>(), Wm.data_ptr<float>(), Kf.data_ptr<float>(),
        c0f.data_ptr<float>(), muf.data_ptr<float>(), training, static_cast<int>(c), hw, device_ptr<T>(grad_xk),
        dr.data_ptr<float>(), device_ptr<T>(grad_feat));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // (B, 3, hw) x (B, hw, c) summed over the batch, in float32 (cuBLAS, deterministic). The block
  // is float32 by policy, like batch_norm, so TF32 stays off here even where the program allows it
  // for matmuls: a TF32 reduction over hw (up to 2^20 pixels) would be the only TF32 in the op.
  at::Tensor dWm;
  {
    const at::NoTF32Guard fp32_only;
    dWm = at::bmm(dr.reshape({B, 3, hw}), feat.reshape({B, c, hw}).to(at::kFloat).transpose(1, 2)).sum(0);
  }
  const at::Tensor dbm = dr.to(at::kDouble).sum(at::IntArrayRef{0, 2, 3});

  return {grad_feat,
          grad_xk.to(image_in.scalar_type()),
          grad_like(dWm, p.map_weight),
          grad_like(dbm, p.map_bias),
          grad_like(dW1, p.conv1_weight),
          grad_like(db1, p.conv1_bias),
          grad_like(S2, p.bn1_weight),
          grad_like(S1, p.bn1_bias),
          grad_like(dW2, p.conv2_weight),
          grad_like(db2, p.conv2_bias),
          grad_like(dgamma2, p.bn2_weight),
          grad_like(dbeta2, p.bn2_bias),
          grad_like(dW3, p.conv3_weight),
          grad_like(db3, p.conv3_bias)};
}

TORCH_LIBRARY_IMPL(inpaint_fast, CUDA, m) {
  m.impl("fusion_block_fwd", &fusion_block_fwd_op<fusion_block_forward>);
  m.impl("fusion_block_bwd", &fusion_block_bwd_op<fusion_block_backward>);
}

}  // namespace cuda
}  // namespace inpaint_fast
