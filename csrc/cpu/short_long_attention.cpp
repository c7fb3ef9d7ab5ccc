// CPU kernels of the short+long-range attention (PIC's Auto_Attn core), docs/short_long_attention.md.
//
// Notation: N = H*W positions flattened row-major, E = scale * q^T q (N x N per image),
// P = softmax over the keys of E, V = [x; pre] the concatenated values (Ctot = C + Cp channels),
// O = V P^T = [sa; ca] the un-gated attention outputs.
//
// The N x N map is never materialised. Work is split into strips of up to 128 query rows: a strip
// holds the complete score rows of its queries (rows x N), so the softmax is exact and needs no
// online rescaling, and every product is a plain BLAS GEMM on tensor views (inside
// at::parallel_for, MKL runs single-threaded, one strip per thread at a time). Peak extra memory
// is therefore O(threads * rows * N) for the strips plus O(threads * N * (Cq + Ctot)) for the
// backward accumulators, instead of the O(N^2) of the reference.
//
// All arithmetic runs in accumulate_dtype (csrc/dtypes.h): float32 for float32 and bfloat16 inputs,
// float64 for float64 inputs. bfloat16 inputs are converted once at entry and the results
// converted back.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "../dtypes.h"
#include "../short_long_attention_inputs.h"
#include "common.h"

namespace inpaint_fast {
namespace cpu {
namespace {

// Query rows per strip. The GEMMs are what the kernel spends its time in (about 90% of it at
// N = 4096), and on a 2-core AVX-512 machine 96 to 192 rows run them equally fast, while 64 rows
// is measurably slower. 128 rows keep the strips at 2 MiB (forward) and 4 MiB (backward) per
// thread at N = 4096.
constexpr int64_t kMaxBlockRows = 128;
// Smaller images get smaller strips so that every thread still has work, down to this size.
constexpr int64_t kMinBlockRows = 16;

constexpr double kLog2e = 1.4426950408889634074;  // log2(e)
constexpr double kLn2 = 0.69314718055994530942;    // ln(2)

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
// kMaxBlockRows that still gives each thread at least two strips, when that is possible.
int64_t choose_block_rows(int64_t n, int64_t batch) {
  const int64_t want = 2 * at::get_num_threads();
  int64_t bm = kMaxBlockRows;
  while (bm > kMinBlockRows && batch * ((n + bm - 1) / bm) < want) {
    bm /= 2;
  }
  return std::max<int64_t>(1, std::min(bm, n));
}

// Splits [0, n) into `parts` nearly equal contiguous ranges; returns the start of range `i`.
int64_t split_point(int64_t n, int64_t parts, int64_t i) {
  return n * i / parts;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
short_long_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& x, const at::Tensor& gamma,
                             const std::optional<at::Tensor>& pre,
                             const std::optional<at::Tensor>& mask,
                             const std::optional<at::Tensor>& alpha, double scale) {
  const AttentionGeometry g = check_inputs("short_long_attention_fwd", q, x, gamma, pre, mask, alpha);
  const int64_t B = g.B, C = g.C, Cp = g.Cp, H = g.H, W = g.W, N = g.N;
  const int64_t Ctot = C + Cp;
  const auto acc = accumulate_dtype(x.scalar_type());
  const auto opts = x.options().dtype(acc);

  // q serves as query and key: one flattened copy feeds both sides of the score GEMM.
  const at::Tensor Q = flat(q, acc);                                     // (B, Cq, N)
  // Both value streams see the same P, so one GEMM against [x; pre] reads each strip of P once.
  const at::Tensor V = g.has_pre ? at::cat({flat(x, acc), flat(*pre, acc)}, 1)
                                 : flat(x, acc);                         // (B, Ctot, N)

  at::Tensor O = at::empty({B, Ctot, N}, opts);  // [sa; ca]
  at::Tensor lse = at::empty({B, N}, opts);

  if (N > 0 && B > 0) {
    const int64_t BM = choose_block_rows(N, B);
    const int64_t nblk = (N + BM - 1) / BM;
    const int64_t items = B * nblk;
    const int64_t nchunks = std::min<int64_t>(at::get_num_threads(), items);
    // Per-chunk scratch, allocated once: the score strip and the row statistics.
    at::Tensor strip = at::empty({nchunks, BM, N}, opts);
    at::Tensor row_max = at::empty({nchunks, BM, 1}, opts);
    at::Tensor row_sum = at::empty({nchunks, BM, 1}, opts);

    // One chunk per thread with a fixed item range, so the work split (and every result bit)
    // does not depend on how the backend schedules chunks onto threads. Strips are independent
    // in the forward, so (image, strip) pairs are spread over the chunks freely.
    at::parallel_for(0, nchunks, 1, [&](int64_t cbegin, int64_t cend) {
      // Worker threads do not inherit the caller's dispatch state, so without this guard the ATen
      // calls below would go through the autograd layer (and reject out= on inputs that
      // require grad). Kernels always run below autograd.
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t c = cbegin; c < cend; ++c) {
        for (int64_t it = split_point(items, nchunks, c); it < split_point(items, nchunks, c + 1);
             ++it) {
          const int64_t b = it / nblk;
          const int64_t i0 = (it % nblk) * BM;
          const int64_t rows = std::min(BM, N - i0);
          at::Tensor s = strip[c].narrow(0, 0, rows);
          at::Tensor mx = row_max[c].narrow(0, 0, rows);
          at::Tensor l = row_sum[c].narrow(0, 0, rows);

          // Energies of the strip against every key: (rows x Cq) @ (Cq x N), then the scale.
          at::mm_out(s, Q[b].narrow(1, i0, rows).t(), Q[b]);
          if (scale != 1.0) {
            s.mul_(scale);
          }
          // Exact max-subtracted softmax, left unnormalised: dividing the (Ctot x rows) output
          // by the row sums is cheaper than dividing the (rows x N) strip. The max is subtracted
          // in natural units *before* the conversion to base 2: exp2 is about three times faster
          // than exp in ATen, and rounding (E - max) * log2(e) costs a relative error of
          // (E - max), which is small where the probabilities are large. (Folding log2(e) into
          // the GEMM instead would round E itself: an error of eps * |E| on every probability,
          // measured at up to 3x the reference's error on trained-like energies.)
          at::amax_out(mx, s, {1}, /*keepdim=*/true);
          s.sub_(mx).mul_(kLog2e).exp2_();
          at::sum_out(l, s, {1}, /*keepdim=*/true);
          // [sa; ca] for the strip's positions, written straight into their columns of O
          // (BLAS takes the row stride N): (Ctot x N) @ (N x rows).
          at::Tensor o = O[b].narrow(1, i0, rows);
          at::mm_out(o, V[b], s.t());
          o.div_(l.view({1, rows}));
          // lse = max + ln(sum) = max + ln(2) * log2(sum).
          at::Tensor lse_rows = lse[b].narrow(0, i0, rows).unsqueeze(1);
          at::log2_out(lse_rows, l);
          lse_rows.mul_(kLn2).add_(mx);
        }
      }
    });
  }

  // The gated outputs are cheap O(N * C) elementwise work, done on whole tensors.
  const at::Tensor sa_acc = O.narrow(1, 0, C);
  const at::Tensor xf = V.narrow(1, 0, C);
  at::Tensor y = finish(at::add(xf, sa_acc, gamma.item<double>()), {B, C, H, W}, x.scalar_type());
  at::Tensor sa = finish(sa_acc, {B, C, H, W}, x.scalar_type());
  at::Tensor cf, ca;
  if (g.has_pre) {
    const at::Tensor ca_acc = O.narrow(1, C, Cp);
    const at::Tensor pf = V.narrow(1, C, Cp);
    const at::Tensor m = flat(*mask, acc);  // (B, 1, N)
    const double a = alpha->item<double>();
    // cf = (1 - m) * (a * ca) + m * pre, evaluated as written so that visible pixels (m = 1)
    // return pre bit for bit and holes (m = 0) exactly a * ca, as in the reference.
    cf = finish(at::addcmul(m * pf, 1 - m, ca_acc * a), {B, Cp, H, W}, pre->scalar_type());
    ca = finish(ca_acc, {B, Cp, H, W}, pre->scalar_type());
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
  const double gam = gamma.item<double>();

  const at::Tensor Q = flat(q, acc);        // (B, Cq, N)
  const at::Tensor dy = flat(grad_y, acc);  // (B, C, N)
  const at::Tensor xf = flat(x, acc);
  const at::Tensor saf = flat(sa, acc);

  // The probabilities are recomputed as P = exp2(log2(e) * (E - lse)), subtracting lse in
  // natural units first for the accuracy reason given in the forward.
  const at::Tensor lse_f = lse.to(acc).reshape({B, N});

  // Upstream gradients of the un-gated outputs, dA = [gamma * dy; alpha * (1 - m) * dcf] in the
  // channel layout of V = [x; pre].
  at::Tensor V, dA, pf, caf, m, dcf;
  if (g.has_pre) {
    pf = flat(*pre, acc);
    caf = flat(ca, acc);
    m = flat(*mask, acc);
    dcf = has_grad_cf ? flat(grad_cf, acc) : at::zeros({B, Cp, N}, opts);
    V = at::cat({xf, pf}, 1);  // (B, Ctot, N)
    dA = at::empty({B, Ctot, N}, opts);
    at::Tensor dA1 = dA.narrow(1, 0, C);
    at::Tensor dA2 = dA.narrow(1, C, Cp);
    at::mul_out(dA1, dy, gam);
    at::mul_out(dA2, dcf, (1 - m) * alpha->item<double>());
  } else {
    V = xf;
    dA = dy * gam;
  }

  // dq in channel layout (B, Cq, N): the strip of query rows I writes columns I of Q dS^T
  // directly; the key-side term Q_I dS touches every column and goes to per-chunk accumulators,
  // as does the values' gradient dA_I P (Ctot x N).
  at::Tensor dq = at::empty({B, Cq, N}, opts);
  at::Tensor dv = at::empty({B, Ctot, N}, opts);

  if (N > 0 && B > 0) {
    const int64_t BM = choose_block_rows(N, B);
    const int64_t nblk = (N + BM - 1) / BM;
    const int64_t T = at::get_num_threads();
    // Two ways to spread the work. When one image has at least as many strips as there are
    // threads, images are processed one after another and their strips are split over the
    // chunks; the per-chunk accumulators are then summed in chunk order. Otherwise (many small
    // images) each chunk owns whole images, so its accumulators hold complete sums.
    const bool split_strips = nblk >= T || B == 1;
    const int64_t nchunks = split_strips ? std::min(T, nblk) : std::min(T, B);

    at::Tensor strip_p = at::empty({nchunks, BM, N}, opts);
    at::Tensor strip_ds = at::empty({nchunks, BM, N}, opts);
    at::Tensor row_delta = at::empty({nchunks, BM, 1}, opts);
    at::Tensor acc_q = at::empty({nchunks, Cq, N}, opts);
    // In split mode the first chunk accumulates the values' gradient straight into dv, so only
    // the others need buffers of their own.
    at::Tensor acc_v = at::empty({split_strips ? nchunks - 1 : 0, Ctot, N}, opts);

    // Processes strips [blk_begin, blk_end) of image b with the scratch of chunk c, and leaves
    // the key-side sums of those strips in aq (Cq x N) and av (Ctot x N). The first strip
    // overwrites them (a GEMM with beta = 0), which spares a separate zero fill.
    auto run_strips = [&](int64_t b, int64_t blk_begin, int64_t blk_end, int64_t c,
                          at::Tensor aq, at::Tensor av) {
      if (blk_begin == blk_end) {
        aq.zero_();
        av.zero_();
        return;
      }
      const at::Tensor lse_b = lse_f[b];
      const at::Tensor Q_b = Q[b];
      const at::Tensor V_b = V[b];
      const at::Tensor dA_b = dA[b];
      at::Tensor dq_b = dq[b];
      for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
        const int64_t i0 = blk * BM;
        const int64_t rows = std::min(BM, N - i0);
        at::Tensor p = strip_p[c].narrow(0, 0, rows);
        at::Tensor ds = strip_ds[c].narrow(0, 0, rows);
        const at::Tensor dA_rows = dA_b.narrow(1, i0, rows);  // (Ctot, rows)
        const at::Tensor Q_rows = Q_b.narrow(1, i0, rows);    // (Cq, rows)

        // P = exp2(log2(e) * (E - lse)): one GEMM plus elementwise passes.
        at::mm_out(p, Q_rows.t(), Q_b);
        if (scale != 1.0) {
          p.mul_(scale);
        }
        p.sub_(lse_b.narrow(0, i0, rows).unsqueeze(1)).mul_(kLog2e).exp2_();
        // dS = P * (dP - delta) with dP = dA_I^T V (both value streams) and
        // delta_i = sum_j P_ij dP_ij. Flash-style kernels take delta from the saved outputs
        // (sum_c dA_ci O_ci, equal in exact arithmetic) because they never hold a whole row; the
        // strip does hold it, and the row's own sum is consistent with its P and dP, so the
        // rounding errors cancel in dP - delta as in PyTorch's softmax backward. Measured: the
        // saved-output delta gave grad_q errors up to 4x the reference's in float32.
        at::Tensor d = row_delta[c].narrow(0, 0, rows);
        at::mm_out(ds, dA_rows.t(), V_b);
        ds.mul_(p);
        at::sum_out(d, ds, {1}, /*keepdim=*/true);
        ds.addcmul_(p, d, -1.0);
        // Query side: columns I of Q dS^T (the scale is applied once at the end).
        at::Tensor dq_cols = dq_b.narrow(1, i0, rows);
        at::mm_out(dq_cols, Q_b, ds.t());
        // Key side: Q_I dS, and the values' gradient dA_I P, for every key column.
        if (blk == blk_begin) {
          at::mm_out(aq, Q_rows, ds);
          at::mm_out(av, dA_rows, p);
        } else {
          aq.addmm_(Q_rows, ds);
          av.addmm_(dA_rows, p);
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
                       acc_q[c], c == 0 ? dv_b : acc_v[c - 1]);
          }
        });
        // Summing the chunks in a fixed order keeps the result deterministic.
        for (int64_t c = 0; c < nchunks; ++c) {
          dq_b.add_(acc_q[c]);
          if (c > 0) {
            dv_b.add_(acc_v[c - 1]);
          }
        }
      }
    } else {
      at::parallel_for(0, nchunks, 1, [&](int64_t cbegin, int64_t cend) {
        at::AutoDispatchBelowADInplaceOrView below_autograd;  // See the forward.
        for (int64_t c = cbegin; c < cend; ++c) {
          for (int64_t b = split_point(B, nchunks, c); b < split_point(B, nchunks, c + 1); ++b) {
            run_strips(b, 0, nblk, c, acc_q[c], dv[b]);
            dq[b].add_(acc_q[c]);
          }
        }
      });
    }
  }

  // dq = scale * (dS + dS^T) q.
  at::Tensor grad_q = finish(dq.mul_(scale), {B, Cq, H, W}, q.scalar_type());
  at::Tensor grad_x = finish(dv.narrow(1, 0, C).add_(dy), {B, C, H, W}, x.scalar_type());
  at::Tensor grad_gamma = finish((dy * saf).sum(), gamma.sizes(), gamma.scalar_type());
  at::Tensor grad_pre, grad_mask, grad_alpha;
  if (g.has_pre) {
    const double a = alpha->item<double>();
    grad_pre = finish(dv.narrow(1, C, Cp).addcmul_(m, dcf), {B, Cp, H, W}, pre->scalar_type());
    grad_alpha = finish((dcf * (1 - m) * caf).sum(), alpha->sizes(), alpha->scalar_type());
    grad_mask = finish((dcf * (pf - caf * a)).sum(1, /*keepdim=*/true), {B, 1, H, W},
                       mask->scalar_type());
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
