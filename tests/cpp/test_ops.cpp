// C++ test of the compiled ops through the dispatcher, against plain ATen compositions of the
// same math (the C++ twin of inpaint_fast/reference/). Runs under ctest; exits non-zero on failure.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>
#include <string>
#include <tuple>

namespace {

int failures = 0;

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
  using Fwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
      const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double);
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("inpaint_fast::short_long_attention_fwd", "").typed<Fwd>();
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
  using Fwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double);
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("inpaint_fast::fusion_block_fwd", "").typed<Fwd>();
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

}  // namespace

int main() {
  at::manual_seed(0);
  test_short_long_attention();
  test_fusion_block_eval();
  if (failures) {
    std::cerr << failures << " check(s) failed\n";
    return 1;
  }
  std::cout << "all C++ op checks passed\n";
  return 0;
}
