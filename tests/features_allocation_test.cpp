// A warm featurize / token_ids allocates nothing: global operator new is
// replaced by a counting one, so this test is a binary of its own.
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "torouter/features.hpp"

namespace {

std::atomic<long> g_allocations{0};

void* counted_alloc(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}

void* counted_aligned_alloc(std::size_t size, std::align_val_t align) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  const std::size_t alignment = static_cast<std::size_t>(align);
  // aligned_alloc wants a size that is a multiple of the alignment.
  const std::size_t rounded = (size + alignment - 1) / alignment * alignment;
  if (void* p = std::aligned_alloc(alignment, rounded == 0 ? alignment : rounded)) return p;
  throw std::bad_alloc();
}

}  // namespace

void* operator new(std::size_t size) { return counted_alloc(size); }
void* operator new[](std::size_t size) { return counted_alloc(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(size);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return counted_alloc(size);
  } catch (...) {
    return nullptr;
  }
}
void* operator new(std::size_t size, std::align_val_t align) {
  return counted_aligned_alloc(size, align);
}
void* operator new[](std::size_t size, std::align_val_t align) {
  return counted_aligned_alloc(size, align);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

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
