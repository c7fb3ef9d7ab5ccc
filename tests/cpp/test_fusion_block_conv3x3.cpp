// C++ test of the fusion block's register-blocked 3x3 conv row and its backward input gradient
// (csrc/cpu/fusion_block_conv3x3.h) against a double reference: row widths below, at and above
// the 8-, 24- and 32-pixel blocks (so the scalar tail and each block size run alone and together),
// channel counts below, at and above the backward's 4-channel blocks, A = 1 and 3. Every output must be within the rounding bound of its
// sum, and nothing outside the A x w output may be written. Runs wherever the kernel can (AVX2 +
// FMA, AVX-512 CPUs included, where it is not the default); exits 77 (ctest: skipped) on CPUs
// without AVX2 + FMA, non-zero on failure.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "../../csrc/cpu/fusion_block_conv3x3.h"

namespace {

using namespace inpaint_fast::cpu;

int failures = 0;

// Counts a case as failed if an element exceeded its bound (worst > 1) or one of the `guard`
// sentinels before or after the n elements the kernel writes was overwritten, and prints it.
void report(const char* which, int A, int64_t Cm, int64_t w, double worst, const std::vector<float>& buf,
            int64_t guard, int64_t n, float sentinel) {
  int64_t stray = 0;
  for (int64_t i = 0; i < guard; ++i) stray += (buf[i] != sentinel) + (buf[guard + n + i] != sentinel);
  const bool ok = worst <= 1.0 && stray == 0;
  failures += !ok;
  std::printf("%s %s A=%d Cm=%lld w=%lld: error / bound %.3g, %lld elements written outside the result\n",
              ok ? "ok  " : "FAIL", which, A, static_cast<long long>(Cm), static_cast<long long>(w), worst,
              static_cast<long long>(stray));
}

template <int A>
void check(int64_t Cm, int64_t w, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  const int64_t ld = w + 2;
  // Three padded a1 rows (Cm x ld each, the zero columns 0 and w + 1 are the conv's padding).
  std::vector<float> rows[3];
  for (auto& r : rows) {
    r.assign(Cm * ld, 0.0f);
    for (int64_t m = 0; m < Cm; ++m)
      for (int64_t x = 1; x <= w; ++x) r[m * ld + x] = normal(rng);
  }
  std::vector<float> W2(A * Cm * 9), bias(A);
  for (float& v : W2) v = normal(rng);
  for (float& v : bias) v = normal(rng);

  const float sentinel = 12345.0f;
  const int64_t guard = 16;
  std::vector<float> out(A * w + 2 * guard, sentinel);
  conv3x3_row_avx2<A>(rows[0].data(), rows[1].data(), rows[2].data(), Cm, w, W2.data(), bias.data(),
                      out.data() + guard);

  // A float sum of n = 9 Cm products and the bias, one FMA per product: |error| <= (n + 1) 2^-24
  // times the sum of the magnitudes of its terms. A wrong tap or a missing term is far above it.
  const double unit = std::ldexp(1.0, -24);
  double worst = 0;
  for (int a = 0; a < A; ++a)
    for (int64_t x = 0; x < w; ++x) {
      double want = bias[a], magnitude = std::fabs(bias[a]);
      for (int64_t m = 0; m < Cm; ++m)
        for (int dy = 0; dy < 3; ++dy)
          for (int dx = 0; dx < 3; ++dx) {
            const double t = static_cast<double>(W2[(a * Cm + m) * 9 + dy * 3 + dx]) * rows[dy][m * ld + x + dx];
            want += t;
            magnitude += std::fabs(t);
          }
      const double bound = (9 * Cm + 1) * unit * magnitude + 1e-30;
      worst = std::max(worst, std::fabs(out[guard + a * w + x] - want) / bound);
    }
  report("fwd", A, Cm, w, worst, out, guard, A * w, sentinel);
}

// The backward's input gradient, conv3x3_bwd_input_avx2: g[m][x] = lrelu'(a1[m][x]) *
// sum_{a, dy, dx} W2[a][m][dy][dx] dz2[a][row dy][x + 1 - dx] against a double reference, the same
// bound (9 A products per sum), nothing written outside the Cm x w gradient.
template <int A>
void check_bwd(int64_t Cm, int64_t w, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  const int64_t ld = w + 2;
  std::vector<float> d[3];  // padded dz2 rows y-1, y, y+1 (A x ld)
  for (auto& r : d) {
    r.assign(A * ld, 0.0f);
    for (int a = 0; a < A; ++a)
      for (int64_t x = 1; x <= w; ++x) r[a * ld + x] = normal(rng);
  }
  std::vector<float> act(Cm * ld, 0.0f);  // padded a1 row y; mixed signs for lrelu's derivative
  for (int64_t m = 0; m < Cm; ++m)
    for (int64_t x = 1; x <= w; ++x) act[m * ld + x] = normal(rng);
  std::vector<float> W2(A * Cm * 9);
  for (float& v : W2) v = normal(rng);
  const float slope = 0.2f;

  const float sentinel = 12345.0f;
  const int64_t guard = 16;
  std::vector<float> g(Cm * w + 2 * guard, sentinel);
  conv3x3_bwd_input_avx2<A>(d[0].data(), d[1].data(), d[2].data(), act.data(), W2.data(), slope, Cm, w,
                            g.data() + guard);

  const double unit = std::ldexp(1.0, -24);
  const std::vector<float>* by_dy[3] = {&d[2], &d[1], &d[0]};  // tap row dy reads dz2 row y + 1 - dy
  double worst = 0;
  for (int64_t m = 0; m < Cm; ++m)
    for (int64_t x = 0; x < w; ++x) {
      double want = 0, magnitude = 0;
      for (int a = 0; a < A; ++a)
        for (int dy = 0; dy < 3; ++dy)
          for (int dx = 0; dx < 3; ++dx) {
            // padded column of dz2 pixel x + 1 - dx is x + 2 - dx
            const double t = static_cast<double>(W2[(a * Cm + m) * 9 + dy * 3 + dx]) * (*by_dy[dy])[a * ld + x + 2 - dx];
            want += t;
            magnitude += std::fabs(t);
          }
      const double scale = act[m * ld + 1 + x] > 0 ? 1.0 : slope;
      const double bound = (9 * A + 2) * unit * magnitude * scale + 1e-30;
      worst = std::max(worst, std::fabs(g[guard + m * w + x] - want * scale) / bound);
    }
  report("bwd", A, Cm, w, worst, g, guard, Cm * w, sentinel);
}

}  // namespace

int main() {
  if (!avx2_kernels_supported()) {
    std::printf("skipped: this CPU has no AVX2 + FMA, the kernel cannot run (avx2_kernels_supported() is false)\n");
    return 77;
  }
  std::mt19937 rng(0);
  for (int64_t Cm : {1, 3, 5, 32})
    for (int64_t w : {1, 7, 8, 9, 31, 32, 33, 40, 71, 256}) {
      check<1>(Cm, w, rng);
      check<3>(Cm, w, rng);
      check_bwd<1>(Cm, w, rng);
      check_bwd<3>(Cm, w, rng);
    }
  return failures == 0 ? 0 : 1;
}
