// A warm featurize / token_ids allocates nothing: global operator new is
// replaced by a counting one, so this test is a binary of its own.
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "torouter/features.hpp"

#include "support/counting_new.hpp"

namespace {

// About 500 characters of mixed prose, code, digits and non-ASCII text.
std::string prompt_of_500_chars() {
  std::string text =
      "Écris une fonction Python qui trie une liste de 1000 nombres, puis explique "
      "sa complexité. For example: def sort_items(xs): return sorted(xs, key=lambda x: -x) "
      "# descending. Then compare it with quicksort and merge sort on lists of size 10, "
      "100 and 10^6; which is fastest and why? Объясни также разницу между ними. "
      "最后用中文总结一下。 Include a table with columns [n, time_ms, memory_kb] and a "
      "short proof that comparison sorts need Ω(n log n) comparisons in the worst case.";
  return text;
}

}  // namespace

TEST_CASE("warm featurize and token_ids allocate nothing", "[features][allocation]") {
  const torouter::Featurizer featurizer;
  const std::string text = prompt_of_500_chars();
  REQUIRE(text.size() >= 500);

  torouter::SparseFeatures features;
  std::vector<std::uint32_t> ids;
  featurizer.featurize(text, features);  // warms the vectors
  featurizer.token_ids(text, 256, ids);
  REQUIRE(!features.indices.empty());
  REQUIRE(!ids.empty());

  const long before = g_allocations.load();
  for (int i = 0; i < 10; ++i) {
    featurizer.featurize(text, features);
    featurizer.token_ids(text, 256, ids);
  }
  // A shorter prompt fits in the same capacity.
  featurizer.featurize(std::string_view(text).substr(0, 100), features);
  featurizer.token_ids(std::string_view(text).substr(0, 100), 256, ids);
  const long after = g_allocations.load();
  REQUIRE(after - before == 0);

  // The counter does count: a fresh object allocates.
  torouter::SparseFeatures cold;
  featurizer.featurize(text, cold);
  REQUIRE(g_allocations.load() > after);
}
