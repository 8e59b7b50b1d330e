// libFuzzer target: the featurizer on arbitrary bytes, which must never
// fail, and whose output must keep its documented shape.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "torouter/features.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const torouter::Featurizer featurizer;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  torouter::SparseFeatures features;
  featurizer.featurize(text, features);
  double norm = 0;
  for (std::size_t i = 0; i < features.indices.size(); ++i) {
    if (features.indices[i] >= featurizer.options().num_buckets) std::abort();
    if (i > 0 && features.indices[i] <= features.indices[i - 1]) std::abort();
    if (!std::isfinite(features.values[i])) std::abort();
    norm += features.values[i] * features.values[i];
  }
  if (!features.indices.empty() && std::abs(norm - 1.0) > 1e-3) std::abort();
  for (float d : features.dense) {
    if (!std::isfinite(d)) std::abort();
  }
  std::vector<std::uint32_t> tokens;
  featurizer.token_ids(text, 64, tokens);
  if (tokens.size() > 64) std::abort();
  return 0;
}
