// gemm_bench: this machine's single-core float GEMM rate with Eigen, the
// ceiling the transformer-lite's batch scoring is measured against.
//
//   gemm_bench [SIZE] [REPS]      prints JSON: GFLOP/s (median, min, max)
//
// benchmarks/CMakeLists.txt builds it twice: `gemm_bench` with the library's
// own flags (what torouter's kernels can reach as built) and, where the
// compiler takes it, `gemm_bench_native` with -march=native (what the CPU
// can reach).
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  const Eigen::Index n = argc > 1 ? std::atol(argv[1]) : 1024;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 7;
  if (n <= 0 || reps <= 0) {
    std::fprintf(stderr, "usage: gemm_bench [SIZE > 0] [REPS > 0]\n");
    return 2;
  }
  Eigen::setNbThreads(1);
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(n, n);
  Eigen::MatrixXf b = Eigen::MatrixXf::Random(n, n);
  Eigen::MatrixXf c(n, n);
  c.noalias() = a * b;  // warm: pages and packing buffers
  std::vector<double> rates;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    c.noalias() = a * b;
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    rates.push_back(2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) /
                    s / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  std::printf(
      "{\"size\": %ld, \"reps\": %d, \"simd\": \"%s\", \"gflop_per_second\": {\"median\": %.4g, "
      "\"min\": %.4g, \"max\": %.4g}, \"checksum\": %.6g}\n",
      static_cast<long>(n), reps, Eigen::SimdInstructionSetsInUse(),
      rates[rates.size() / 2], rates.front(), rates.back(), static_cast<double>(c.sum()));
  return 0;
}
