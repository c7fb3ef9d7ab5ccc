// C++ test of the compiled ops through the dispatcher, against plain ATen compositions of the
// same math (the C++ twin of inpaint_fast/reference/). Runs under ctest; exits non-zero on failure.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>
#include <optional>
#include <string>
#include <tuple>

namespace {

int failures = 0;

// The signatures of inpaint_fast::short_long_attention_fwd and inpaint_fast::fusion_block_fwd.
using AttentionFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double);
using FusionFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    bool, double);

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

void expect_close(const std::string& what, const at::Tensor& got, const at::Tensor& want, double tol) {
  const bool same_shape = got.sizes() == want.sizes();
  const double err = same_shape ? (got - want).abs().max().item<double>() : -1.0;
  if (!same_shape || err > tol) {
    ++failures;
    std::cerr << "FAIL " << what << ": " << (same_shape ? "max error " + std::to_string(err) : "shape mismatch")
              << " (tolerance " << tol << ")\n";
  } else {
    std::cout << "ok   " << what << " (max error " << err << ")\n";
  }
}

void test_short_long_attention() {
  auto op = find_op<AttentionFwd>("inpaint_fast::short_long_attention_fwd");
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const int64_t B = 2, Cq = 3, C = 5, Cp = 6, H = 7, W = 9, N = H * W;
  at::Tensor q = at::randn({B, Cq, H, W}, opts), x = at::randn({B, C, H, W}, opts);
  at::Tensor pre = at::randn({B, Cp, H, W}, opts), mask = at::rand({B, 1, H, W}, opts);
  at::Tensor gamma = at::full({1}, 0.7, opts), alpha = at::full({1}, -0.4, opts);
  const double scale = 0.5;
  auto [y, cf, sa, ca, lse] = op.call(q, x, gamma, pre, mask, alpha, scale);

  at::Tensor qf = q.reshape({B, Cq, N});
  at::Tensor energy = at::bmm(qf.transpose(1, 2), qf) * scale;
  at::Tensor attn = at::softmax(energy, -1);
  at::Tensor sa_ref = at::bmm(x.reshape({B, C, N}), attn.transpose(1, 2)).reshape({B, C, H, W});
  at::Tensor ca_ref = at::bmm(pre.reshape({B, Cp, N}), attn.transpose(1, 2)).reshape({B, Cp, H, W});
  expect_close("attention y", y, 0.7 * sa_ref + x, 1e-10);
  expect_close("attention cf", cf, -0.4 * (1 - mask) * ca_ref + mask * pre, 1e-10);
  expect_close("attention lse", lse, at::logsumexp(energy, -1).reshape({B, H, W}), 1e-10);
}

void test_fusion_block_eval() {
  auto op = find_op<FusionFwd>("inpaint_fast::fusion_block_fwd");
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const int64_t B = 2, c = 5, h = 6, w = 7, Cm = 32, A = 3;
  at::Tensor feat = at::randn({B, c, h, w}, opts), image = at::rand({B, 3, 2 * h, 2 * w}, opts);
  at::Tensor mw = at::randn({3, c, 1, 1}, opts), mb = at::randn({3}, opts);
  at::Tensor w1 = at::randn({Cm, 6, 1, 1}, opts), b1 = at::randn({Cm}, opts);
  at::Tensor g1 = at::rand({Cm}, opts) + 0.5, be1 = at::randn({Cm}, opts);
  at::Tensor m1 = at::randn({Cm}, opts), v1 = at::rand({Cm}, opts) + 0.5;
  at::Tensor w2 = at::randn({A, Cm, 3, 3}, opts) * 0.2, b2 = at::randn({A}, opts);
  at::Tensor g2 = at::rand({A}, opts) + 0.5, be2 = at::randn({A}, opts);
  at::Tensor m2 = at::randn({A}, opts), v2 = at::rand({A}, opts) + 0.5;
  at::Tensor w3 = at::randn({A, A, 1, 1}, opts), b3 = at::randn({A}, opts);
  const double eps = 1e-5;
  auto outs = op.call(feat, image, mw, mb, w1, b1, g1, be1, m1, v1, w2, b2, g2, be2, m2, v2, w3, b3, false, eps);

  at::Tensor xk = at::upsample_bilinear2d(image, {h, w}, false);
  at::Tensor raw = at::sigmoid(at::conv2d(feat, mw, mb));
  at::Tensor t = at::conv2d(at::cat({xk, raw}, 1), w1, b1);
  t = at::leaky_relu(at::batch_norm(t, g1, be1, m1, v1, false, 0.1, eps, false), 0.2);
  t = at::conv2d(t, w2, b2, 1, 1);
  t = at::leaky_relu(at::batch_norm(t, g2, be2, m2, v2, false, 0.1, eps, false), 0.2);
  at::Tensor alpha = at::sigmoid(at::conv2d(t, w3, b3));
  expect_close("fusion_block out", std::get<0>(outs), alpha * raw + (1 - alpha) * xk, 1e-10);
  expect_close("fusion_block alpha", std::get<1>(outs), alpha, 1e-10);
  expect_close("fusion_block raw", std::get<2>(outs), raw, 1e-10);
}

// Calls fn, which must throw a c10::Error whose message contains `want`.
template <typename Fn>
void expect_error(const std::string& what, const std::string& want, Fn&& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    if (msg.find(want) != std::string::npos) {
      std::cout << "ok   " << what << " (" << msg.substr(0, msg.find('\n')) << ")\n";
    } else {
      ++failures;
      std::cerr << "FAIL " << what << ": message\n  " << msg << "\nlacks\n  " << want << "\n";
    }
    return;
  }
  ++failures;
  std::cerr << "FAIL " << what << ": no error\n";
}

// The input checks (csrc/checks.h) name the op, the argument, what was expected and what was got.
void test_check_messages() {
  auto fusion = find_op<FusionFwd>("inpaint_fast::fusion_block_fwd");
  const int64_t Cm = 32, A = 1;
  at::Tensor feat = at::randn({2, 5, 4, 6}), image = at::rand({2, 3, 8, 12});
  at::Tensor mw = at::randn({3, 5, 1, 1}), mb = at::randn({3}), w1 = at::randn({Cm, 6, 1, 1}), v1 = at::ones({Cm});
  at::Tensor w2 = at::randn({A, Cm, 3, 3}), v2 = at::ones({A}), w3 = at::randn({A, A, 1, 1});
  auto call = [&](const at::Tensor& f, const at::Tensor& conv1_weight, const at::Tensor& bn2_var, bool training) {
    const at::Tensor img = f.size(0) == image.size(0) ? image : at::rand({f.size(0), 3, 2, 2});
    fusion.call(f, img, mw, mb, conv1_weight, v1, v1, v1, v1, v1, w2, v2, v2, v2, v2, bn2_var, w3, v2, training,
                1e-5);
  };
  expect_error("fusion_block conv1_weight shape",
               "fusion_block_fwd: `conv1_weight` must have shape (Cm, 6, 1, 1) = (*, 6, 1, 1), got [32, 5, 1, 1]",
               [&] { call(feat, at::randn({Cm, 5, 1, 1}), v2, false); });
  expect_error("fusion_block bn2 statistics",
               "fusion_block_fwd: `bn2_running_var` must have A = 1 elements, got shape [2]",
               [&] { call(feat, w1, at::ones({2}), false); });
  expect_error("fusion_block dtype", "fusion_block_fwd: `feat` has dtype float16; the CPU kernels support",
               [&] { call(feat.to(at::kHalf), w1, v2, false); });
  expect_error("fusion_block training batch", "got B * h * w = 1",
               [&] { call(at::randn({1, 5, 1, 1}), w1, v2, true); });

  auto attn = find_op<AttentionFwd>("inpaint_fast::short_long_attention_fwd");
  at::Tensor x = at::randn({2, 6, 4, 5}), gamma = at::full({1}, 0.5);
  expect_error("attention q shape",
               "short_long_attention_fwd: `q` must have shape (B, Cq, H, W) = (2, *, 4, 5) (batch and spatial sizes "
               "of `x`), got [2, 3, 4, 6]",
               [&] { attn.call(at::randn({2, 3, 4, 6}), x, gamma, {}, {}, {}, 1.0); });
  expect_error("attention gates", "`pre`, `mask` and `alpha` must be given together or not at all",
               [&] { attn.call(at::randn({2, 3, 4, 5}), x, gamma, at::randn({2, 2, 4, 5}), {}, {}, 1.0); });
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_short_long_attention();
  test_fusion_block_eval();
  test_check_messages();
  if (failures) {
    std::cerr << failures << " check(s) failed\n";
    return 1;
  }
  std::cout << "all C++ op checks passed\n";
  return 0;
}
