// CPU kernels of the short+long-range attention (PIC's Auto_Attn core), docs/short_long_attention.md.
//
// Notation: N = H*W positions flattened row-major, E = scale * q^T q (N x N per image),
// P = softmax over the keys of E, V = [x; pre] the concatenated values (Ctot = C + Cp channels),
// O = V P^T = [sa; ca] the un-gated attention outputs.
//
// The N x N map is never materialised. Work is split into strips of query rows (up to 64 in the
// forward, 128 in the backward; see kForwardBlockRows): a strip holds the complete score rows of
// its queries (rows x N), so the softmax is exact and needs no online rescaling. Each product is a
// GEMM, one strip per thread at a time: in float on AVX2 CPUs all of them run on the register-tiled
// kernels of strip_gemm.h (those whose right-hand operand is the same for every strip of an image
// against that operand packed once per image, the backward's key-side products transposed against
// a strip's rows of a small operand packed per strip); in double, or by default on CPUs with
// AVX-512 or without AVX2, they are BLAS calls on tensor views (inside at::parallel_for, MKL runs
// single-threaded; strip_gemm's AVX-512 tiles are not faster than MKL there, see
// strip_gemm_choice). The elementwise work between the GEMMs is done by fused row kernels
// (short_long_attention_rows.h), row by row. Peak extra memory is therefore O(threads * rows * N)
// for the strips, O(threads * N * (Cq + Ctot)) for the backward accumulators and O(B * N * (Cq +
// Ctot)) for the packed operands, instead of the O(N^2) of the reference.
//
// Layouts are chosen for the GEMMs, whose speed depends on them far more than the O(N * C)
// transposes cost: position-major copies (N x channels) of q and the upstream gradients (and, for
// BLAS, of V) make every strip-side operand and result a contiguous block of rows, and the strips'
// row stride is padded off a multiple of 4 KiB (a power-of-two stride maps the rows of a GEMM panel
// onto the same cache sets; measured at N = 4096: the P.V product ran at 70% of the rate it has at
// a padded stride). strip_gemm packs V (or V^T) straight from the channel-major x and pre. The
// forward's outputs are written channel-major from each strip's position-major P.V rows while
// they are in cache (gated_outputs_strip).
//
// All arithmetic runs in accumulate_dtype (csrc/dtypes.h): float32 for float32 and bfloat16 inputs,
// float64 for float64 inputs. bfloat16 inputs are read as stored where a kernel reads them
// channel-major (the row kernels and strip_gemm's value packing convert as they read; the
// operands that are copied anyway, such as q, are converted in that copy), and both directions
// write their bfloat16 results from the float results directly.
//
// The backward's O(N * channels) work around its strip products is two tiled passes over positions
// (upstream_grads_tile, attention_grads_tile in short_long_attention_rows.h): the upstream
// gradients transposed to position-major, and every input gradient from the key-side sums. As
// whole-tensor ATen operations (a transposed copy, adds over transposed views, three reductions
// with their temporaries) they took ~8% of the backward at N = 4096.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../dtypes.h"
#include "../short_long_attention_inputs.h"
#include "common.h"
#include "short_long_attention_rows.h"
#include "strip_gemm.h"

namespace inpaint_fast {
namespace cpu {
namespace {

// Query rows per strip, per direction. Measured at N = 4096 on a 2-core AVX-512 Xeon (1.25 MiB L2
// per core), one thread, each kernel timed in turn with a 2048^3 GEMM: the forward ran at 62% of
// the GEMM's rate with 64 rows and 56% with 128 (a 64-row strip, 1 MiB, stays in L2 between the
// softmax and the P.V GEMM), the backward at 52-56% with 64 rows and 60-62% with 128 (its
// key-side accumulators take one rank-`rows` update per strip: deeper updates run faster).
constexpr int64_t kForwardBlockRows = 64;
constexpr int64_t kBackwardBlockRows = 128;
// Smaller images get smaller strips so that every thread still has work, down to this size.
constexpr int64_t kMinBlockRows = 16;

// Extra elements per row of N: keeps the row stride off a multiple of 4 KiB (see the top).
constexpr int64_t kStripPad = 16;

// The structural checks (csrc/short_long_attention_inputs.h), then the CPU dtype envelope for the
// tensors the kernels read.
AttentionGeometry check_inputs(const char* op, const at::Tensor& q, const at::Tensor& x, const at::Tensor& gamma,
                               const std::optional<at::Tensor>& pre, const std::optional<at::Tensor>& mask,
                               const std::optional<at::Tensor>& alpha) {
  const AttentionGeometry g = check_short_long_attention_inputs(op, q, x, gamma, pre, mask, alpha);
  check_cpu_dtype(op, "q", q);
  check_cpu_dtype(op, "x", x);
  if (g.has_pre) {
    check_cpu_dtype(op, "pre", *pre);
    check_cpu_dtype(op, "mask", *mask);
  }
  return g;
}

// (B, ch, H, W) -> contiguous (B, ch, N) in the compute dtype. A no-op for contiguous inputs that
// already have the compute dtype.
at::Tensor flat(const at::Tensor& t, at::ScalarType dtype) {
  return t.to(dtype).contiguous().reshape({t.size(0), t.size(1), -1});
}

// Gives a result its public form: the requested shape and dtype, as a contiguous tensor that owns
// its whole storage. Results are often views into a shared buffer (sa and ca are the two halves
// of one GEMM output); returned as such they would be non-contiguous or alias each other, while
// the fake kernels promise fresh contiguous NCHW tensors.
at::Tensor finish(const at::Tensor& t, at::IntArrayRef shape, at::ScalarType dtype) {
  at::Tensor out = t.reshape(shape).to(dtype);
  const bool owns_storage = out.storage_offset() == 0 && out.storage().nbytes() == out.nbytes();
  if (!out.is_contiguous() || !owns_storage) {
    out = out.clone(at::MemoryFormat::Contiguous);
  }
  return out;
}

// Rows per strip for `batch` images of n positions: the largest power-of-two fraction of
// `max_rows` that still gives each thread at least two strips, when that is possible.
int64_t choose_block_rows(int64_t n, int64_t batch, int64_t max_rows) {
  const int64_t want = 2 * at::get_num_threads();
  int64_t bm = max_rows;
  while (bm > kMinBlockRows && batch * ((n + bm - 1) / bm) < want) {
    bm /= 2;
  }
  return std::max<int64_t>(1, std::min(bm, n));
}

// (B, ch, H, W) -> contiguous position-major (B, N, ch) in the compute dtype.
at::Tensor flat_t(const at::Tensor& t, at::ScalarType dtype) {
  return flat(t, dtype).transpose(1, 2).contiguous();
}

// [a; b] along channels in position-major layout: (B, N, ca + cb).
at::Tensor cat_t(const at::Tensor& a, const at::Tensor& b, at::ScalarType dtype) {
  return at::cat({flat(a, dtype), flat(b, dtype)}, 1).transpose(1, 2).contiguous();
}

// An uninitialised (d0, d1, n) tensor whose rows of n elements sit at the padded stride: for every
// GEMM operand or result with rows over all N positions (strips, channel-major q and V,
// key-side accumulators).
at::Tensor padded_rows(int64_t d0, int64_t d1, int64_t n, const at::TensorOptions& opts) {
  return at::empty({d0, d1, n + kStripPad}, opts).narrow(2, 0, n);
}

// (B, ch, H, W) -> (B, ch, N) in the compute dtype, rows at the padded stride.
at::Tensor flat_padded(const at::Tensor& t, const at::TensorOptions& opts) {
  at::Tensor out = padded_rows(t.size(0), t.size(1), t.size(2) * t.size(3), opts);
  out.copy_(t.reshape({t.size(0), t.size(1), -1}));
  return out;
}

// B images' right-hand operands of the strip products, k x n each, in strip_gemm's packed form
// (B, packed size): pack_panel(b, p, dst) packs panel p of image b into dst, the image's packed
// form. One task per (image, panel), so one image packs on all threads.
template <typename PackPanel>
at::Tensor pack_panels(int64_t B, int64_t k, int64_t n, const at::TensorOptions& opts, const PackPanel& pack_panel) {
  const int64_t size = strip_gemm_packed_size(k, n);
  const int64_t panels = strip_gemm_panels(n);
  at::Tensor packed = at::empty({B, size}, opts);
  float* dst = packed.data_ptr<float>();
  at::parallel_for(0, B * panels, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) pack_panel(t / panels, t % panels, dst + (t / panels) * size);
  });
  return packed;
}

// The per-image right-hand operands (B, k, n) of the strip products that have them as a tensor
// (the keys Q, the backward's Qt), packed (above). float only.
at::Tensor pack_for_strip_mm(const at::Tensor& b_op) {
  const int64_t k = b_op.size(1), n = b_op.size(2);
  // A single column may have any stride (the position-major copy of a one-channel q is a view).
  TORCH_INTERNAL_ASSERT(b_op.scalar_type() == at::kFloat && (b_op.stride(2) == 1 || n == 1));
  const float* base = b_op.data_ptr<float>();
  const int64_t sb = b_op.stride(0), sk = b_op.stride(1);
  return pack_panels(b_op.size(0), k, n, b_op.options(), [&](int64_t b, int64_t p, float* dst) {
    strip_gemm_pack_b_panel_from_rows([&](int64_t kk) { return base + b * sb + kk * sk; }, k, n, p, dst);
  });
}

// Calls f(E()) with E the type the kernels read inputs or write results in: bfloat16 when `bf16`
// (for float compute: inputs are converted as read, results rounded once as written), else the
// compute type T.
template <typename T, typename F>
void with_storage_type(bool bf16, const F& f) {
  if constexpr (std::is_same_v<T, float>) {
    if (bf16) {
      f(c10::BFloat16());
      return;
    }
  }
  f(T());
}

// Whether every defined tensor of `ts` is bfloat16: then the kernels read (or write) them as such.
bool all_bfloat16(std::initializer_list<at::Tensor> ts) {
  return std::all_of(ts.begin(), ts.end(),
                     [](const at::Tensor& t) { return !t.defined() || t.scalar_type() == at::kBFloat16; });
}

// An optional input as a tensor, undefined when absent.
at::Tensor or_undefined(const std::optional<at::Tensor>& t) {
  return t.value_or(at::Tensor());
}

// The values V = [x; pre] ((C + Cp) x N per image) packed for strip_gemm straight from the
// channel-major xf (B, C, N) and pf (B, Cp, N; undefined without pre), float or bfloat16 (converted
// as packed): as V^T (N x (C + Cp), the forward's P.V operand) when `transposed`, else as V (the
// backward's dP = dA_I^T V operand). A channel of x or pre is a row of V and a column of V^T, so
// both pack from the inputs' channels, without a position-major copy.
at::Tensor pack_values(const at::Tensor& xf, const at::Tensor& pf, bool transposed) {
  TORCH_INTERNAL_ASSERT(xf.is_contiguous() && (!pf.defined() || (pf.is_contiguous() && pf.scalar_type() == xf.scalar_type())));
  const int64_t C = xf.size(1), Cp = pf.defined() ? pf.size(1) : 0, N = xf.size(2);
  at::Tensor packed;
  with_storage_type<float>(xf.scalar_type() == at::kBFloat16, [&](auto stored) {
    using E = decltype(stored);
    const E* x = xf.data_ptr<E>();
    const E* pre = pf.defined() ? pf.data_ptr<E>() : nullptr;
    const auto opts = xf.options().dtype(at::kFloat);
    packed = pack_panels(xf.size(0), transposed ? N : C + Cp, transposed ? C + Cp : N, opts,
                         [&](int64_t b, int64_t p, float* dst) {
                           const auto channel = [&](int64_t j) {
                             return j < C ? x + (b * C + j) * N : pre + (b * Cp + j - C) * N;
                           };
                           if (transposed) {
                             strip_gemm_pack_b_panel_from_columns(channel, N, C + Cp, p, dst);
                           } else {
                             strip_gemm_pack_b_panel_from_rows(channel, C + Cp, N, p, dst);
                           }
                         });
  });
  return packed;
}

// out = a @ b for a product of a strip (unit column strides): on strip_gemm's `gemm` tiles against
// b's packed form `b_packed` (float; b itself is then not read and may be undefined), or on BLAS
// when `gemm` is nullopt.
void strip_mm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& b_packed,
              std::optional<StripGemmIsa> gemm) {
  if (!gemm) {
    at::mm_out(out, a, b);
    return;
  }
  TORCH_INTERNAL_ASSERT((a.stride(1) == 1 || a.size(1) == 1) && (out.stride(1) == 1 || out.size(1) == 1));
  strip_gemm(*gemm, a.data_ptr<float>(), a.stride(0), a.size(0), a.size(1), b_packed.data_ptr<float>(), out.size(1),
             out.data_ptr<float>(), out.stride(0));
}

// Which GEMM runs this call's float strip products: strip_gemm's tiles of an instruction set, or
// BLAS (nullopt; always for double). INPAINT_FAST_CPU_GEMM, read at every call (a comparison
// switch, like INPAINT_FAST_CUDA_SIMT): unset or "auto" for the default (the AVX2 tiles on AVX2 CPUs
// without AVX-512, BLAS elsewhere: on an AVX-512 Xeon the AVX-512 tiles ran the forward at MKL's
// time and the backward at 0.86-0.94x its speed, benchmarks/NOTES.md), "blas" for BLAS everywhere,
// "strip" for the widest tiles the CPU runs (an error where none do), "strip-avx2" or
// "strip-avx512" for those tiles.
std::optional<StripGemmIsa> strip_gemm_choice(const char* op, at::ScalarType acc) {
  const char* env = std::getenv("INPAINT_FAST_CPU_GEMM");
  const std::string choice = env ? env : "";
  const std::optional<StripGemmIsa> widest = strip_gemm_supported(StripGemmIsa::kAvx512)
                                                 ? std::optional(StripGemmIsa::kAvx512)
                                             : strip_gemm_supported(StripGemmIsa::kAvx2)
                                                 ? std::optional(StripGemmIsa::kAvx2)
                                                 : std::nullopt;
  std::optional<StripGemmIsa> want;
  if (choice.empty() || choice == "auto") {
    if (widest == StripGemmIsa::kAvx2) want = widest;  // BLAS where AVX-512 is present (see above)
  } else if (choice == "blas") {
    want = std::nullopt;
  } else if (choice == "strip") {
    TORCH_CHECK(widest, op, ": INPAINT_FAST_CPU_GEMM=strip needs a CPU with AVX2 and FMA or AVX-512; ",
                "this one has neither (use auto or blas)");
    want = widest;
  } else if (choice == "strip-avx2" || choice == "strip-avx512") {
    const bool avx2 = choice == "strip-avx2";
    want = avx2 ? StripGemmIsa::kAvx2 : StripGemmIsa::kAvx512;
    TORCH_CHECK(strip_gemm_supported(*want), op, ": INPAINT_FAST_CPU_GEMM=", choice, " needs a CPU with ",
                avx2 ? "AVX2 and FMA; this one lacks AVX2 or FMA" : "AVX-512; this one has none", " (use auto or blas)");
  } else {
    TORCH_CHECK(false, op, ": INPAINT_FAST_CPU_GEMM=", choice,
                ": expected auto, blas, strip, strip-avx2 or strip-avx512");
  }
  return acc == at::kFloat ? want : std::nullopt;
}

// Splits [0, n) into `parts` nearly equal contiguous ranges; returns the start of range `i`.
int64_t split_point(int64_t n, int64_t parts, int64_t i) {
  return n * i / parts;
}

// The number of tiles of kGradTileRows positions in an image of n.
int64_t grad_tiles(int64_t n) {
  return (n + kGradTileRows - 1) / kGradTileRows;
}

// Runs f(b, p0, rows, t) for every tile t (numbered image by image) of kGradTileRows positions of B
// images of n positions, spread over the threads.
template <typename F>
void for_each_grad_tile(int64_t B, int64_t n, const F& f) {
  const int64_t tiles = grad_tiles(n);
  at::parallel_for(0, B * tiles, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = (t % tiles) * kGradTileRows;
      f(t / tiles, p0, std::min(kGradTileRows, n - p0), t);
    }
  });
}

// The backward's upstream gradients of the un-gated outputs, dA = [gamma * dy; dcf * ((1 - m) *
// alpha)] in the channel layout of V = [x; pre], position-major (B, N, C + Cp): one pass over the
// channel-major dy (B, C, N), dcf (B, Cp, N) and m (B, 1, N) (dcf, m undefined without pre),
// stored in the compute dtype `acc` or (for float compute) bfloat16.
at::Tensor upstream_grads_t(const at::Tensor& dy, const at::Tensor& dcf, const at::Tensor& m, double gamma,
                            double alpha, at::ScalarType acc) {
  const int64_t B = dy.size(0), C = dy.size(1), N = dy.size(2);
  const int64_t Cp = dcf.defined() ? dcf.size(1) : 0;
  at::Tensor dat = at::empty({B, N, C + Cp}, dy.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "upstream_grads_t", [&] {
    with_storage_type<scalar_t>(dy.scalar_type() == at::kBFloat16, [&](auto stored) {
      using I = decltype(stored);
      const I* dy_p = dy.data_ptr<I>();
      const I* dcf_p = Cp ? dcf.data_ptr<I>() : nullptr;
      const I* m_p = Cp ? m.data_ptr<I>() : nullptr;
      scalar_t* out = dat.data_ptr<scalar_t>();
      for_each_grad_tile(B, N, [&](int64_t b, int64_t p0, int64_t rows, int64_t) {
        upstream_grads_tile<scalar_t, I>(dy_p + b * C * N + p0, Cp ? dcf_p + b * Cp * N + p0 : nullptr,
                                         Cp ? m_p + b * N + p0 : nullptr, rows, C, Cp, N,
                                         static_cast<scalar_t>(gamma), static_cast<scalar_t>(alpha),
                                         out + (b * N + p0) * (C + Cp));
      });
    });
  });
  return dat;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
short_long_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& x, const at::Tensor& gamma,
                             const std::optional<at::Tensor>& pre,
                             const std::optional<at::Tensor>& mask,
                             const std::optional<at::Tensor>& alpha, double scale) {
  const char* op = "short_long_attention_fwd";
  const AttentionGeometry g = check_inputs(op, q, x, gamma, pre, mask, alpha);
  const int64_t B = g.B, C = g.C, Cp = g.Cp, H = g.H, W = g.W, N = g.N;
  const int64_t Ctot = C + Cp;
  const auto acc = accumulate_dtype(x.scalar_type());
  const auto opts = x.options().dtype(acc);
  const std::optional<StripGemmIsa> gemm = strip_gemm_choice(op, acc);  // Which GEMM runs the strip products.
  const bool own_gemm = gemm.has_value();

  // q serves as query and key: the score GEMM of a strip is Qt[rows] (rows x Cq) @ Q (Cq x N).
  const at::Tensor Q = flat_padded(q, opts);  // (B, Cq, N)
  const at::Tensor Qt = flat_t(q, acc);        // (B, N, Cq)
  // The inputs the gated outputs (and strip_gemm's value packing) read, channel-major (B, ch, N):
  // as they are when all are bfloat16 (converted as read), else in the compute dtype.
  const bool bf16_in = all_bfloat16({x, or_undefined(pre), or_undefined(mask)});
  const auto in_dtype = bf16_in ? at::kBFloat16 : acc;
  const at::Tensor xf = flat(x, in_dtype);
  const at::Tensor pf = g.has_pre ? flat(*pre, in_dtype) : at::Tensor();
  const at::Tensor mf = g.has_pre ? flat(*mask, in_dtype) : at::Tensor();  // (B, 1, N)
  const double gam = gamma.item<double>();
  const double alp = g.has_pre ? alpha->item<double>() : 0.0;

  // The outputs, written strip by strip (gated_outputs_strip): in bfloat16 straight away when x
  // and pre are bfloat16 (the one rounding of the float result, as a conversion afterwards would
  // do), otherwise in the compute dtype and converted at the end.
  const bool bf16_out = all_bfloat16({x, or_undefined(pre)});
  const auto out_opts = bf16_out ? x.options() : opts;
  at::Tensor y = at::empty({B, C, H, W}, out_opts), sa = at::empty({B, C, H, W}, out_opts);
  at::Tensor cf = at::empty({B, Cp, H, W}, out_opts), ca = at::empty({B, Cp, H, W}, out_opts);
  at::Tensor lse = at::empty({B, N}, opts);

  if (N > 0 && B > 0) {
    const int64_t BM = choose_block_rows(N, B, kForwardBlockRows);
    const int64_t nblk = (N + BM - 1) / BM;
    const int64_t items = B * nblk;
    const int64_t nchunks = std::min<int64_t>(at::get_num_threads(), items);
    // Per-chunk scratch, allocated once: the score strip, its [sa; ca] rows (position-major, the
    // form the P.V product writes) and the row statistics.
    at::Tensor strip = padded_rows(nchunks, BM, N, opts);
    at::Tensor strip_out = padded_rows(nchunks, BM, Ctot, opts);
    at::Tensor row_stats = at::empty({nchunks, 2, BM}, opts);

    // Both value streams see the same P, so one product against V = [x; pre] reads each strip of
    // P once. Both products of a strip have a right-hand operand shared by all strips of the image
    // (the keys, the values): on strip_gemm (see the top), packed once per image, the values
    // straight from the channel-major inputs; BLAS reads the values as one position-major copy.
    const at::Tensor Qpacked = own_gemm ? pack_for_strip_mm(Q) : at::Tensor();
    const at::Tensor Vpacked = own_gemm ? pack_values(xf, pf, /*transposed=*/true) : at::Tensor();
    const at::Tensor Vt = own_gemm ? at::Tensor() : g.has_pre ? cat_t(x, *pre, acc) : flat_t(x, acc);  // (B, N, Ctot)

    // One chunk (with its scratch) per thread. Strips are independent in the forward and each is
    // computed the same way whichever chunk takes it, so the chunks take (image, strip) items from
    // a shared counter as they finish: a thread slowed down (by a busy core, say) takes fewer,
    // instead of the others waiting for its fixed share. Results do not depend on the split.
    std::atomic<int64_t> next_item{0};
    AT_DISPATCH_FLOATING_TYPES(acc, "short_long_attention_fwd_cpu", [&] {
      const scalar_t sc = static_cast<scalar_t>(scale);
      at::parallel_for(0, nchunks, 1, [&](int64_t cbegin, int64_t cend) {
        // Worker threads do not inherit the caller's dispatch state, so without this guard the
        // ATen calls below would go through the autograd layer (and reject out= on inputs that
        // require grad). Kernels always run below autograd.
        at::AutoDispatchBelowADInplaceOrView below_autograd;
        for (int64_t c = cbegin; c < cend; ++c) {
          scalar_t* mx = row_stats[c][0].data_ptr<scalar_t>();
          scalar_t* l = row_stats[c][1].data_ptr<scalar_t>();
          for (int64_t it = next_item.fetch_add(1, std::memory_order_relaxed); it < items;
               it = next_item.fetch_add(1, std::memory_order_relaxed)) {
            const int64_t b = it / nblk;
            const int64_t i0 = (it % nblk) * BM;
            const int64_t rows = std::min(BM, N - i0);
            at::Tensor s = strip[c].narrow(0, 0, rows);

            // Energies of the strip against every key: (rows x Cq) @ (Cq x N).
            strip_mm(s, Qt[b].narrow(0, i0, rows), Q[b], own_gemm ? Qpacked[b] : at::Tensor(), gemm);
            // Exact max-subtracted softmax in one pass after the max, left unnormalised: dividing
            // the (rows x Ctot) output by the row sums is cheaper than dividing the strip.
            softmax_strip<scalar_t>(s.data_ptr<scalar_t>(), rows, N, s.stride(0), sc, mx, l);
            // [sa; ca] for the strip's positions: (rows x N) @ (N x Ctot).
            at::Tensor o = strip_out[c].narrow(0, 0, rows);
            strip_mm(o, s, own_gemm ? at::Tensor() : Vt[b], own_gemm ? Vpacked[b] : at::Tensor(), gemm);
            // Normalised, gated and written to the outputs while o is still in cache.
            const int64_t at_i0 = b * C * N + i0, at_i0_pre = b * Cp * N + i0;
            with_storage_type<scalar_t>(bf16_in, [&](auto in_type) {
              using I = decltype(in_type);
              with_storage_type<scalar_t>(bf16_out, [&](auto out_type) {
                using O = decltype(out_type);
                gated_outputs_strip<scalar_t, I, O>(
                    o.data_ptr<scalar_t>(), o.stride(0), rows, l, C, Cp, N, static_cast<scalar_t>(gam),
                    static_cast<scalar_t>(alp), xf.data_ptr<I>() + at_i0,
                    g.has_pre ? pf.data_ptr<I>() + at_i0_pre : nullptr,
                    g.has_pre ? mf.data_ptr<I>() + b * N + i0 : nullptr, y.data_ptr<O>() + at_i0,
                    sa.data_ptr<O>() + at_i0, cf.data_ptr<O>() + at_i0_pre, ca.data_ptr<O>() + at_i0_pre);
              });
            });
            scalar_t* lse_rows = lse[b].data_ptr<scalar_t>() + i0;
            for (int64_t r = 0; r < rows; ++r) lse_rows[r] = mx[r] + std::log(l[r]);
          }
        }
      });
    });
  }

  // The outputs in the inputs' dtypes (a no-op unless they were written in the compute dtype).
  y = finish(y, {B, C, H, W}, x.scalar_type());
  sa = finish(sa, {B, C, H, W}, x.scalar_type());
  if (g.has_pre) {
    cf = finish(cf, {B, Cp, H, W}, pre->scalar_type());
    ca = finish(ca, {B, Cp, H, W}, pre->scalar_type());
  } else {
    cf = at::empty({0}, x.options());
    ca = at::empty({0}, x.options());
  }
  return {y, cf, sa, ca, lse.reshape({B, H, W})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
short_long_attention_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& grad_cf,
                             const at::Tensor& q, const at::Tensor& x, const at::Tensor& gamma,
                             const std::optional<at::Tensor>& pre,
                             const std::optional<at::Tensor>& mask,
                             const std::optional<at::Tensor>& alpha, const at::Tensor& sa,
                             const at::Tensor& ca, const at::Tensor& lse, double scale) {
  const char* op = "short_long_attention_bwd";
  const AttentionGeometry g = check_inputs(op, q, x, gamma, pre, mask, alpha);
  const bool has_grad_cf = check_short_long_attention_bwd_inputs(op, g, grad_y, grad_cf, x, pre, sa, ca, lse);
  const int64_t B = g.B, Cq = g.Cq, C = g.C, Cp = g.Cp, H = g.H, W = g.W, N = g.N;
  const int64_t Ctot = C + Cp;
  const auto acc = accumulate_dtype(x.scalar_type());
  const auto opts = x.options().dtype(acc);
  const std::optional<StripGemmIsa> gemm = strip_gemm_choice(op, acc);  // Which GEMM runs the strip products.
  const bool own_gemm = gemm.has_value();
  const double gam = gamma.item<double>();

  const at::Tensor Q = flat_padded(q, opts);  // (B, Cq, N)
  // The inputs the passes over positions (and strip_gemm's value packing) read, channel-major
  // (B, ch, N): as they are when all are bfloat16 (converted as read), else in the compute dtype.
  const bool bf16_in = all_bfloat16({grad_y, x, sa, or_undefined(pre), or_undefined(mask),
                                     g.has_pre ? ca : at::Tensor(), has_grad_cf ? grad_cf : at::Tensor()});
  const auto in_dtype = bf16_in ? at::kBFloat16 : acc;
  const auto in_opts = x.options().dtype(in_dtype);
  const at::Tensor dy = flat(grad_y, in_dtype);
  const at::Tensor xf = flat(x, in_dtype);
  const at::Tensor saf = flat(sa, in_dtype);

  // The probabilities are recomputed as P = exp(E - lse).
  const at::Tensor lse_f = lse.to(acc).reshape({B, N}).contiguous();

  // BLAS reads the values V = [x; pre] as one (B, Ctot, N) copy at the padded stride; strip_gemm
  // packs them straight from x and pre (below).
  const double alp = g.has_pre ? alpha->item<double>() : 0.0;
  at::Tensor V, pf, caf, m, dcf;
  if (g.has_pre) {
    pf = flat(*pre, in_dtype);
    caf = flat(ca, in_dtype);
    m = flat(*mask, in_dtype);
    dcf = has_grad_cf ? flat(grad_cf, in_dtype) : at::zeros({B, Cp, N}, in_opts);
    if (!own_gemm) {
      V = padded_rows(B, Ctot, N, opts);
      V.narrow(1, 0, C).copy_(xf);
      V.narrow(1, C, Cp).copy_(pf);
    }
  } else if (!own_gemm) {
    V = flat_padded(x, opts);
  }
  // Position-major operands of the strip-side products (see the top of the file): q, and the
  // upstream gradients dA of the un-gated outputs in the channel layout of V.
  const at::Tensor Qt = flat_t(q, acc);                            // (B, N, Cq)
  const at::Tensor dAt = upstream_grads_t(dy, dcf, m, gam, alp, acc);  // (B, N, Ctot)

  // The query-side term of dq, (dS Q^T)_I for the strip's rows I, is a block of rows of dq_rows
  // (B, N, Cq); the key-side term Q_I dS touches every position of dq and, like the values'
  // gradient dA_I P, is accumulated over the strips. On BLAS these sums are channel-major, dq
  // (B, Cq, N) and dv (B, Ctot, N); on strip_gemm position-major, dq (B, N, Cq) and dv (B, N, Ctot):
  // computed as (dS^T) Q_I and (P^T) dA_I, their small right-hand operands (a strip's rows of Qt
  // and dAt) are packed per strip, where Q_I dS and dA_I P would need the strip itself packed.
  const auto key_sums = [&](int64_t d0, int64_t ch) {
    return own_gemm ? at::empty({d0, N, ch}, opts) : padded_rows(d0, ch, N, opts);
  };
  at::Tensor dq_rows = at::empty({B, N, Cq}, opts);
  at::Tensor dq = key_sums(B, Cq);
  at::Tensor dv = key_sums(B, Ctot);

  if (N > 0 && B > 0) {
    const int64_t BM = choose_block_rows(N, B, kBackwardBlockRows);
    const int64_t nblk = (N + BM - 1) / BM;
    const int64_t T = at::get_num_threads();
    // Two ways to spread the work. When one image has at least as many strips as there are
    // threads, images are processed one after another and their strips are split over the
    // chunks; the per-chunk accumulators are then summed in chunk order. Otherwise (many small
    // images) each chunk owns whole images, so it accumulates straight into dq and dv.
    const bool split_strips = nblk >= T || B == 1;
    const int64_t nchunks = split_strips ? std::min(T, nblk) : std::min(T, B);

    at::Tensor strip_p = padded_rows(nchunks, BM, N, opts);
    at::Tensor strip_ds = padded_rows(nchunks, BM, N, opts);
    at::Tensor row_delta = at::empty({nchunks, BM}, opts);
    // In split mode the first chunk accumulates straight into dq and dv, so only the others need
    // buffers of their own.
    const int64_t extra = split_strips ? nchunks - 1 : 0;
    at::Tensor acc_q = key_sums(extra, Cq);
    at::Tensor acc_v = key_sums(extra, Ctot);
    // strip_gemm: the key-side products' right-hand operands, packed per strip.
    at::Tensor strip_qt = own_gemm ? at::empty({nchunks, strip_gemm_packed_size(BM, Cq)}, opts) : at::Tensor();
    at::Tensor strip_dat = own_gemm ? at::empty({nchunks, strip_gemm_packed_size(BM, Ctot)}, opts) : at::Tensor();

    // In float on strip_gemm (see the forward): the products whose right-hand operand is the same
    // for every strip of an image against operands packed once per image, the key-side products
    // as strip_gemm_transposed_a (above). Packing P per strip for dA_I P instead made it slower
    // than MKL's, measured (AVX2 EPYC, two threads, alternated call by call: backward 1.05-1.08x
    // faster than all products on BLAS, against 1.09-1.10x with the key-side products on BLAS).
    const at::Tensor Qpacked = own_gemm ? pack_for_strip_mm(Q) : at::Tensor();
    const at::Tensor Vpacked = own_gemm ? pack_values(xf, pf, /*transposed=*/false) : at::Tensor();
    const at::Tensor Qtpacked = own_gemm ? pack_for_strip_mm(Qt) : at::Tensor();

    AT_DISPATCH_FLOATING_TYPES(acc, "short_long_attention_bwd_cpu", [&] {
      const scalar_t sc = static_cast<scalar_t>(scale);
      // Processes strips [blk_begin, blk_end) of image b with the scratch of chunk c, and leaves
      // the key-side sums of those strips in aq and av (Cq and Ctot channels, layouts above). The first strip
      // overwrites them (a GEMM with beta = 0), which spares a separate zero fill.
      auto run_strips = [&](int64_t b, int64_t blk_begin, int64_t blk_end, int64_t c, at::Tensor aq,
                            at::Tensor av) {
        if (blk_begin == blk_end) {
          aq.zero_();
          av.zero_();
          return;
        }
        const at::Tensor Q_b = Q[b];
        const at::Tensor Qt_b = Qt[b];
        const at::Tensor V_b = own_gemm ? at::Tensor() : V[b];  // strip_gemm reads Vpacked
        const scalar_t* lse_b = lse_f[b].data_ptr<scalar_t>();
        scalar_t* delta = row_delta[c].data_ptr<scalar_t>();
        for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
          const int64_t i0 = blk * BM;
          const int64_t rows = std::min(BM, N - i0);
          at::Tensor p = strip_p[c].narrow(0, 0, rows);
          at::Tensor ds = strip_ds[c].narrow(0, 0, rows);
          const at::Tensor dAt_rows = dAt[b].narrow(0, i0, rows);  // (rows, Ctot)
          const at::Tensor Qt_rows = Qt_b.narrow(0, i0, rows);     // (rows, Cq)

          // Energies (rows x Cq) @ (Cq x N), and dP = dA_I^T V (both value streams).
          strip_mm(p, Qt_rows, Q_b, own_gemm ? Qpacked[b] : at::Tensor(), gemm);
          strip_mm(ds, dAt_rows, V_b, own_gemm ? Vpacked[b] : at::Tensor(), gemm);
          // P = exp(E - lse) with delta_i = sum_j P_ij dP_ij, then dS = P * (dP - delta).
          // Flash-style kernels take delta from the saved outputs (sum_c dA_ci O_ci, equal in
          // exact arithmetic) because they never hold a whole row; the strip does hold it, and the
          // row's own sum is consistent with its P and dP, so the rounding errors cancel in
          // dP - delta as in PyTorch's softmax backward. Measured: the saved-output delta gave
          // grad_q errors up to 4x the reference's in float32.
          // (strip_p and strip_ds have one shape, so one row stride.)
          softmax_backward_strip<scalar_t>(p.data_ptr<scalar_t>(), ds.data_ptr<scalar_t>(), rows, N, p.stride(0), sc,
                                           lse_b + i0, delta);
          // Query side: rows I of dS Q^T (the scale is applied once at the end).
          at::Tensor dq_r = dq_rows[b].narrow(0, i0, rows);
          strip_mm(dq_r, ds, Qt_b, own_gemm ? Qtpacked[b] : at::Tensor(), gemm);
          // Key side: Q_I dS, and the values' gradient dA_I P, for every key position.
          const bool add = blk != blk_begin;
          if (own_gemm) {
            float* qt_packed = strip_qt[c].data_ptr<float>();
            float* dat_packed = strip_dat[c].data_ptr<float>();
            strip_gemm_pack_b(Qt_rows.data_ptr<float>(), Qt_rows.stride(0), rows, Cq, qt_packed);
            strip_gemm_pack_b(dAt_rows.data_ptr<float>(), dAt_rows.stride(0), rows, Ctot, dat_packed);
            strip_gemm_transposed_a(*gemm, ds.data_ptr<float>(), ds.stride(0), N, rows, qt_packed, Cq, aq.data_ptr<float>(),
                                    aq.stride(0), add);
            strip_gemm_transposed_a(*gemm, p.data_ptr<float>(), p.stride(0), N, rows, dat_packed, Ctot, av.data_ptr<float>(),
                                    av.stride(0), add);
          } else if (!add) {
            at::mm_out(aq, Qt_rows.t(), ds);
            at::mm_out(av, dAt_rows.t(), p);
          } else {
            aq.addmm_(Qt_rows.t(), ds);
            av.addmm_(dAt_rows.t(), p);
          }
        }
      };

      if (split_strips) {
        for (int64_t b = 0; b < B; ++b) {
          at::Tensor dq_b = dq[b];
          at::Tensor dv_b = dv[b];
          at::parallel_for(0, nchunks, 1, [&](int64_t cbegin, int64_t cend) {
            at::AutoDispatchBelowADInplaceOrView below_autograd;  // See the forward.
            for (int64_t c = cbegin; c < cend; ++c) {
              run_strips(b, split_point(nblk, nchunks, c), split_point(nblk, nchunks, c + 1), c,
                         c == 0 ? dq_b : acc_q[c - 1], c == 0 ? dv_b : acc_v[c - 1]);
            }
          });
          // Summing the chunks in a fixed order keeps the result deterministic.
          for (int64_t c = 1; c < nchunks; ++c) {
            dq_b.add_(acc_q[c - 1]);
            dv_b.add_(acc_v[c - 1]);
          }
        }
      } else {
        at::parallel_for(0, nchunks, 1, [&](int64_t cbegin, int64_t cend) {
          at::AutoDispatchBelowADInplaceOrView below_autograd;  // See the forward.
          for (int64_t c = cbegin; c < cend; ++c) {
            for (int64_t b = split_point(B, nchunks, c); b < split_point(B, nchunks, c + 1); ++b) {
              run_strips(b, 0, nblk, c, dq[b], dv[b]);
            }
          }
        });
      }
    });
  }

  // dq = scale * (dS + dS^T) q, the key-side sums plus the query-side rows, and the inputs'
  // gradients, in one pass over positions (attention_grads_tile) that reads the key-side sums
  // channel-major (on strip_gemm a transposed view of the position-major sums). Written in
  // bfloat16 straight away when every input that has a gradient here is bfloat16.
  const at::Tensor dq_cm = own_gemm ? dq.transpose(1, 2) : dq;  // (B, Cq, N)
  const at::Tensor dv_cm = own_gemm ? dv.transpose(1, 2) : dv;  // (B, Ctot, N)
  const bool bf16_out = all_bfloat16({q, x, or_undefined(pre), or_undefined(mask)});
  const auto out_opts = bf16_out ? x.options() : opts;
  at::Tensor grad_q = at::empty({B, Cq, H, W}, out_opts);
  at::Tensor grad_x = at::empty({B, C, H, W}, out_opts);
  at::Tensor grad_pre = at::empty({g.has_pre ? B : 0, Cp, H, W}, out_opts);
  at::Tensor grad_mask = at::empty({g.has_pre ? B : 0, 1, H, W}, out_opts);
  std::vector<GateGradTerms> terms(B * grad_tiles(N));
  AT_DISPATCH_FLOATING_TYPES(acc, "short_long_attention_bwd_cpu_grads", [&] {
    with_storage_type<scalar_t>(bf16_in, [&](auto in_type) {
      using I = decltype(in_type);
      with_storage_type<scalar_t>(bf16_out, [&](auto out_type) {
        using O = decltype(out_type);
        const auto pre_in = [&](const at::Tensor& t, int64_t b, int64_t ch) {
          return g.has_pre ? t.data_ptr<I>() + b * ch * N : nullptr;
        };
        const auto pre_out = [&](at::Tensor& t, int64_t b, int64_t ch) {
          return g.has_pre ? t.data_ptr<O>() + b * ch * N : nullptr;
        };
        for_each_grad_tile(B, N, [&](int64_t b, int64_t p0, int64_t rows, int64_t t) {
          const AttentionGradsImage<scalar_t, I, O> im{
              dy.data_ptr<I>() + b * C * N, saf.data_ptr<I>() + b * C * N, pre_in(dcf, b, Cp),
              pre_in(pf, b, Cp), pre_in(caf, b, Cp), pre_in(m, b, 1),
              dq_cm[b].data_ptr<scalar_t>(), dq_cm.stride(2), dq_cm.stride(1),
              dv_cm[b].data_ptr<scalar_t>(), dv_cm.stride(2), dv_cm.stride(1),
              dq_rows[b].data_ptr<scalar_t>(),
              grad_q.data_ptr<O>() + b * Cq * N, grad_x.data_ptr<O>() + b * C * N, pre_out(grad_pre, b, Cp),
              pre_out(grad_mask, b, 1),
              Cq, C, Cp, N, static_cast<scalar_t>(scale), static_cast<scalar_t>(alp)};
          terms[t] = attention_grads_tile(im, p0, rows);
        });
      });
    });
  });
  // The gate gradients: the tiles' terms summed in tile order, so the result does not depend on
  // the number of threads.
  GateGradTerms sums;
  for (const GateGradTerms& t : terms) {
    sums.gamma += t.gamma;
    sums.alpha += t.alpha;
  }
  const at::Tensor grad_gamma = at::full(gamma.sizes(), sums.gamma, gamma.options());
  grad_q = finish(grad_q, {B, Cq, H, W}, q.scalar_type());
  grad_x = finish(grad_x, {B, C, H, W}, x.scalar_type());
  at::Tensor grad_alpha;
  if (g.has_pre) {
    grad_pre = finish(grad_pre, {B, Cp, H, W}, pre->scalar_type());
    grad_mask = finish(grad_mask, {B, 1, H, W}, mask->scalar_type());
    grad_alpha = at::full(alpha->sizes(), sums.alpha, alpha->options());
  } else {
    grad_pre = at::empty({0}, x.options());
    grad_mask = at::empty({0}, x.options());
    grad_alpha = at::empty({0}, x.options());
  }
  return {grad_q, grad_x, grad_gamma, grad_pre, grad_mask, grad_alpha};
}

TORCH_LIBRARY_IMPL(inpaint_fast, CPU, m) {
  m.impl("short_long_attention_fwd", &short_long_attention_fwd_cpu);
  m.impl("short_long_attention_bwd", &short_long_attention_bwd_cpu);
}

}  // namespace cpu
}  // namespace inpaint_fast
