// The kernels compiled per CPU level (src/kernels/): every level this
// machine runs computes what the x86-64 baseline computes, up to the order
// of float additions; and TOROUTER_CPU_LEVEL caps the level chosen.
// tests/CMakeLists.txt runs these cases again with TOROUTER_CPU_LEVEL set.
#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/kernel_table.hpp"
#include "nn/parameters.hpp"
#include "tlite_model.hpp"
#include "tlite_packed.hpp"
#include "torouter/cpu_level.hpp"
#include "torouter/error.hpp"

namespace nn = torouter::nn;
using torouter::detail::CpuLevel;
using torouter::detail::KernelTable;

namespace {

constexpr CpuLevel kHigherLevels[] = {CpuLevel::x86_64_v3, CpuLevel::x86_64_v4};

const KernelTable& baseline() {
  const KernelTable* table = torouter::detail::kernels_for(CpuLevel::baseline);
  REQUIRE(table != nullptr);
  return *table;
}

// The higher levels this build compiled and this CPU runs; a level it
// cannot run is reported, not failed.
std::vector<const KernelTable*> runnable_levels() {
  std::vector<const KernelTable*> tables;
  for (const CpuLevel level : kHigherLevels) {
    if (const KernelTable* table = torouter::detail::kernels_for(level)) {
      tables.push_back(table);
    } else {
      WARN("level " << torouter::detail::cpu_level_name(level)
                    << " not compared: not built, or this CPU does not run it");
    }
  }
  return tables;
}

nn::Matrix<float> random_matrix(nn::Index rows, nn::Index cols, nn::Rng& rng) {
  nn::Matrix<float> m(rows, cols);
  nn::fill_uniform(m, 1.0, rng);
  return m;
}

float max_difference(const nn::Matrix<float>& a, const nn::Matrix<float>& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  return (a - b).cwiseAbs().maxCoeff();
}

}  // namespace

TEST_CASE("every level shares the baseline's object layout", "[cpu_levels]") {
  for (const KernelTable* table : runnable_levels()) {
    INFO(table->name);
    CHECK(table->layout == baseline().layout);
  }
  CHECK(std::string(baseline().name) == "x86-64");
}

TEST_CASE("every level's matrix products agree with the baseline's", "[cpu_levels]") {
  nn::Rng rng(7);
  // Shapes off every vector width, and one past Eigen's blocking sizes.
  for (const auto& [m, n, k] :
       {std::array<nn::Index, 3>{1, 1, 1}, {3, 17, 5}, {70, 130, 45}, {300, 260, 513}}) {
    const nn::Matrix<float> a = random_matrix(m, k, rng), b = random_matrix(k, n, rng);
    nn::Matrix<float> expected(m, n), got(m, n);
    baseline().multiply(a.data(), b.data(), expected.data(), m, n, k);
    CHECK(max_difference(expected, a * b) < 1e-4f * static_cast<float>(k));
    for (const KernelTable* table : runnable_levels()) {
      INFO(table->name << ", " << m << " x " << k << " times " << k << " x " << n);
      got.setConstant(1e30f);
      table->multiply(a.data(), b.data(), got.data(), m, n, k);
      CHECK(max_difference(expected, got) < 1e-5f * static_cast<float>(k));
    }
  }
}

TEST_CASE("every level's matrix-vector product agrees with the baseline's", "[cpu_levels]") {
  nn::Rng rng(8);
  for (const auto& [rows, cols] : {std::array<nn::Index, 2>{1, 1}, {37, 32}, {4099, 33}}) {
    const Eigen::MatrixXf a = random_matrix(rows, cols, rng);  // column-major, as the kNN keeps it
    const nn::Matrix<float> x = random_matrix(cols, 1, rng);
    nn::Matrix<float> expected(rows, 1), got(rows, 1);
    baseline().multiply_vector(a.data(), rows, cols, x.data(), expected.data());
    CHECK(max_difference(expected, a * x) < 1e-4f);
    for (const KernelTable* table : runnable_levels()) {
      INFO(table->name << ", " << rows << " x " << cols);
      got.setConstant(1e30f);
      table->multiply_vector(a.data(), rows, cols, x.data(), got.data());
      CHECK(max_difference(expected, got) < 1e-5f * static_cast<float>(cols));
    }
  }
}

TEST_CASE("every level's embedding bags agree with the baseline's", "[cpu_levels]") {
  nn::Rng rng(10);
  const nn::Index buckets = 3000;
  for (const nn::Index width : {1, 13, 32, 64}) {
    const nn::Matrix<float> table = random_matrix(buckets, width, rng);
    std::vector<std::int8_t> quantized(static_cast<std::size_t>(table.size()));
    for (std::size_t i = 0; i < quantized.size(); ++i) {
      quantized[i] = static_cast<std::int8_t>(static_cast<int>(rng() % 255) - 127);
    }
    std::vector<float> scales(static_cast<std::size_t>(buckets));
    for (float& scale : scales) scale = static_cast<float>(nn::uniform(rng, 0.02));
    // 0, 1 and many entries, with a repeated bucket.
    for (const std::size_t count : {0u, 1u, 700u}) {
      std::vector<std::uint32_t> indices(count);
      std::vector<float> values(count);
      for (std::size_t e = 0; e < count; ++e) {
        indices[e] = e == 1 ? indices[0] : static_cast<std::uint32_t>(rng() % buckets);
        values[e] = static_cast<float>(nn::uniform(rng, 1.0));
      }
      nn::Matrix<float> expected = nn::Matrix<float>::Constant(2, width, 0.5f);
      baseline().embedding_bag(table.data(), width, indices.data(), values.data(), count,
                               expected.row(0).data());
      baseline().int8_embedding_bag(quantized.data(), scales.data(), width, indices.data(),
                                    values.data(), count, expected.row(1).data());
      // The baseline against the sums written out plainly.
      nn::Matrix<float> plain = nn::Matrix<float>::Constant(2, width, 0.5f);
      for (std::size_t e = 0; e < count; ++e) {
        const nn::Index r = indices[e];
        for (nn::Index c = 0; c < width; ++c) {
          plain(0, c) += values[e] * table(r, c);
          plain(1, c) += values[e] * scales[indices[e]] *
                         static_cast<float>(quantized[static_cast<std::size_t>(r * width + c)]);
        }
      }
      CHECK(max_difference(plain, expected) < 1e-4f);
      for (const KernelTable* table_of : runnable_levels()) {
        INFO(table_of->name << ", width " << width << ", " << count << " entries");
        nn::Matrix<float> got = nn::Matrix<float>::Constant(2, width, 0.5f);
        table_of->embedding_bag(table.data(), width, indices.data(), values.data(), count,
                                got.row(0).data());
        table_of->int8_embedding_bag(quantized.data(), scales.data(), width, indices.data(),
                                     values.data(), count, got.row(1).data());
        CHECK(max_difference(expected, got) < 1e-4f);
      }
    }
  }
}

TEST_CASE("every level encodes packed prompts as the baseline does", "[cpu_levels]") {
  torouter::detail::TliteShape shape;
  shape.d_model = 48;  // 12 per head: no vector width divides the heads evenly
  shape.heads = 4;
  shape.ff = 96;
  shape.layers = 2;
  shape.max_tokens = 40;
  shape.buckets = 500;
  torouter::detail::TliteModel<float> model(shape, 5, true);
  nn::Rng rng(9);
  model.init(rng);
  // Prompts of 1 to 40 tokens, packed; row 0 of pooled stays untouched.
  std::vector<std::uint32_t> ids;
  std::vector<nn::Index> starts{0};
  for (const nn::Index length : {1, 7, 40, 16, 3, 33}) {
    for (nn::Index t = 0; t < length; ++t) ids.push_back(static_cast<std::uint32_t>(rng() % 501));
    starts.push_back(static_cast<nn::Index>(ids.size()));
  }
  const auto prompts = static_cast<nn::Index>(starts.size() - 1);
  torouter::detail::TlitePackedBuffers buffers;
  buffers.reserve(shape, starts.back());
  nn::Matrix<float> expected = nn::Matrix<float>::Zero(prompts + 1, shape.d_model);
  baseline().encode_packed(model, ids.data(), starts, buffers, expected, 1);
  CHECK(expected.row(0).isZero());
  CHECK(expected.bottomRows(prompts).cwiseAbs().maxCoeff() > 0.1f);
  for (const KernelTable* table : runnable_levels()) {
    INFO(table->name);
    nn::Matrix<float> got = nn::Matrix<float>::Zero(prompts + 1, shape.d_model);
    table->encode_packed(model, ids.data(), starts, buffers, got, 1);
    CHECK(max_difference(expected, got) < 1e-5f);
  }
}

TEST_CASE("the level chosen is the best this CPU runs, at most TOROUTER_CPU_LEVEL's",
          "[cpu_levels]") {
  const char* requested = std::getenv("TOROUTER_CPU_LEVEL");
  const std::string wanted = requested == nullptr ? "" : requested;
  if (!wanted.empty() && wanted != "x86-64" && wanted != "x86-64-v3" && wanted != "x86-64-v4") {
    // Run by ctest with a level that does not exist: refused by name.
    CHECK_THROWS_AS(torouter::kernel_level(), torouter::Error);
    REQUIRE_THROWS_WITH(torouter::detail::kernels(), Catch::Contains("TOROUTER_CPU_LEVEL") &&
                                                         Catch::Contains(wanted) &&
                                                         Catch::Contains("x86-64-v3"));
    return;
  }
  CpuLevel ceiling = torouter::detail::cpu_level();
  for (const CpuLevel level : {CpuLevel::baseline, CpuLevel::x86_64_v3, CpuLevel::x86_64_v4}) {
    if (torouter::detail::cpu_level_name(level) == wanted) ceiling = std::min(ceiling, level);
  }
  CpuLevel best = CpuLevel::baseline;
  for (const CpuLevel level : {CpuLevel::x86_64_v3, CpuLevel::x86_64_v4}) {
    if (level <= ceiling && torouter::detail::kernels_for(level) != nullptr) best = level;
  }
  const KernelTable& chosen = torouter::detail::kernels();
  CHECK(torouter::kernel_level() == chosen.name);
  INFO("TOROUTER_CPU_LEVEL=\"" << wanted << "\", CPU "
                               << torouter::detail::cpu_level_name(torouter::detail::cpu_level()));
  CHECK(chosen.level == best);
  CHECK(chosen.name == torouter::detail::cpu_level_name(best));
}
