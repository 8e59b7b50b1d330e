// The server's memory trimmer (server/memory_trim.hpp): after a burst of
// small allocations is freed, the allocator's free pages go back to the
// system, which the process's resident memory shows.
#include "memory_trim.hpp"

#include <catch2/catch.hpp>
#include <chrono>
#include <cstddef>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TOROUTER_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TOROUTER_SANITIZED 1
#endif
#endif

#ifndef TOROUTER_SANITIZED
namespace {

using torouter::server::allocator_free_bytes;
using torouter::server::MemoryTrimmer;
using torouter::server::trim_allocator_if_holding;

// Resident memory (VmRSS), in bytes.
std::size_t resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

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

constexpr std::size_t kMiB = 1024 * 1024;

}  // namespace
#endif

TEST_CASE("the memory trimmer gives what a burst freed back to the system") {
#ifdef TOROUTER_SANITIZED
  // A sanitizer's allocator is not glibc's: nothing of it to trim here.
  SUCCEED("skipped: built with a sanitizer, whose allocator glibc's trim does not reach");
#else
  const auto pin = burst();
  REQUIRE(allocator_free_bytes() > 64 * kMiB);
  CHECK_FALSE(trim_allocator_if_holding(allocator_free_bytes() + 1024 * kMiB));

  const std::size_t before = resident_bytes();
  MemoryTrimmer trimmer(std::chrono::milliseconds(10), 32 * kMiB);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (resident_bytes() + 64 * kMiB > before && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  INFO("resident before " << before / kMiB << " MiB, after " << resident_bytes() / kMiB << " MiB");
  CHECK(resident_bytes() + 64 * kMiB <= before);
  trimmer.stop();
  trimmer.stop();
#endif
}
