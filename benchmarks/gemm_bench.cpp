// gemm_bench: the float GEMM rate of torouter's kernels on one core, the
// ceiling the transformer-lite's batch scoring is measured against.
//
//   gemm_bench [SIZE] [REPS]      prints JSON: GFLOP/s (median, min, max)
//
// The kernels run at the CPU level the library picks (src/kernels/);
// TOROUTER_CPU_LEVEL=x86-64 (or x86-64-v3) measures a lower one.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/kernel_table.hpp"
#include "nn/parameters.hpp"

int main(int argc, char** argv) {
  namespace nn = torouter::nn;
  const nn::Index n = argc > 1 ? std::atol(argv[1]) : 1024;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 7;
  if (n <= 0 || reps <= 0) {
    std::fprintf(stderr, "usage: gemm_bench [SIZE > 0] [REPS > 0]\n");
    return 2;
  }
  nn::Rng rng(1);
  nn::Matrix<float> a(n, n), b(n, n), c(n, n);
  nn::fill_uniform(a, 1.0, rng);
  nn::fill_uniform(b, 1.0, rng);
  const torouter::detail::KernelTable& kernels = torouter::detail::kernels();
  kernels.multiply(a.data(), b.data(), c.data(), n, n, n);  // warm: pages and packing buffers
  std::vector<double> rates;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    kernels.multiply(a.data(), b.data(), c.data(), n, n, n);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    rates.push_back(2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) /
                    s / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  std::printf(
      "{\"size\": %ld, \"reps\": %d, \"simd\": \"%s\", \"gflop_per_second\": {\"median\": %.4g, "
      "\"min\": %.4g, \"max\": %.4g}, \"checksum\": %.6g}\n",
      static_cast<long>(n), reps, kernels.name, rates[rates.size() / 2], rates.front(),
      rates.back(), static_cast<double>(c.sum()));
  return 0;
}
