// The server's memory trimmer (server/memory_trim.hpp): after a burst of
// small allocations is freed, the allocator's free pages go back to the
// system, which the process's resident memory shows.
#include "memory_trim.hpp"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <memory>
#include <thread>
#include <vector>

#include "support/sanitizers.hpp"

#if !defined(TOROUTER_TEST_ASAN) && !defined(TOROUTER_TEST_TSAN)
namespace {

using torouter::server::allocator_free_bytes;
using torouter::server::MemoryTrimmer;
using torouter::server::resident_bytes;
using torouter::server::trim_allocator_if_holding;

// Allocates about 128 MB in small blocks, writes them, then frees all but
// a block allocated after them, which keeps the heap from shrinking at its
// top: what a burst leaves behind.
std::unique_ptr<char[]> burst() {
  std::vector<std::unique_ptr<char[]>> blocks(512 * 1024);
  for (auto& block : blocks) {
    block = std::make_unique<char[]>(256);
    block[0] = 1;
    block[255] = 1;
  }
  auto pin = std::make_unique<char[]>(256);
  pin[0] = 1;
  return pin;
}

// Waits up to 10 s for `done`.
template <typename Done>
bool within_ten_seconds(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

constexpr std::size_t kMiB = 1024 * 1024;

}  // namespace
#endif

TEST_CASE("the memory trimmer gives what a burst freed back to the system, once, when quiet") {
#if defined(TOROUTER_TEST_ASAN) || defined(TOROUTER_TEST_TSAN)
  // A sanitizer's allocator is not glibc's: nothing of it to trim here.
  SUCCEED("skipped: built with a sanitizer, whose allocator glibc's trim does not reach");
#else
  const auto pin = burst();
  if (allocator_free_bytes() == 0) {
    SUCCEED("skipped: this C library does not say what its allocator holds free");
    return;
  }
  REQUIRE(allocator_free_bytes() > 64 * kMiB);
  CHECK_FALSE(trim_allocator_if_holding(allocator_free_bytes() + 1024 * kMiB));

  const std::size_t before = resident_bytes();
  std::atomic<bool> quiet{false};
  std::atomic<int> asked{0};
  MemoryTrimmer trimmer(std::chrono::milliseconds(10), 32 * kMiB, [&] {
    ++asked;
    return quiet.load();
  });
  // Not while the server is busy.
  CHECK(within_ten_seconds([&] { return asked.load() >= 5; }));
  CHECK(trimmer.trims() == 0);
  CHECK(resident_bytes() + 64 * kMiB > before);
  // Once it is quiet.
  quiet = true;
  // Waits for the count, not for resident memory: the memory drops while
  // malloc_trim walks the heap, before the trimmer counts the trim.
  CHECK(within_ten_seconds([&] { return trimmer.trims() >= 1; }));
  INFO("resident before " << before / kMiB << " MiB, after " << resident_bytes() / kMiB << " MiB");
  CHECK(resident_bytes() + 64 * kMiB <= before);
  CHECK(trimmer.trims() == 1);
  // The free memory it gave back still counts as free, but is not walked
  // again at every tick: resident memory has not grown since.
  const int asked_then = asked.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(trimmer.trims() == 1);
  CHECK(asked.load() == asked_then);
  trimmer.stop();
  trimmer.stop();
#endif
}
