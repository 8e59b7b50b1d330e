// memory_trim.hpp: gives the allocator's free memory back to the system
// after a burst.
//
// glibc's malloc keeps what a burst freed (1 MB request bodies, the answers
// queued for slow readers) for the next allocations, so a server's resident
// memory stays at its peak long after the burst. A `MemoryTrimmer` looks
// every interval, on a thread of its own, and when the allocator holds at
// least `min_free_bytes` free it returns those pages (`malloc_trim`). The
// server runs one (docs/ARCHITECTURE.md). Where the C library is not glibc
// it does nothing.
//
//   MemoryTrimmer trimmer(std::chrono::seconds(10), 32 << 20);
//   ...                     // serve
//   trimmer.stop();         // or let it go out of scope
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>

namespace torouter::server {

/// Bytes the allocator holds free for reuse (glibc's `mallinfo2().fordblks`);
/// 0 where the C library cannot say.
std::size_t allocator_free_bytes();

/// Returns the allocator's free pages to the system when it holds at least
/// `min_free_bytes` free; true when it did.
bool trim_allocator_if_holding(std::size_t min_free_bytes);

/// Calls `trim_allocator_if_holding(min_free_bytes)` every `interval` until
/// stopped.
class MemoryTrimmer {
 public:
  MemoryTrimmer(std::chrono::milliseconds interval, std::size_t min_free_bytes);
  ~MemoryTrimmer();
  MemoryTrimmer(const MemoryTrimmer&) = delete;
  MemoryTrimmer& operator=(const MemoryTrimmer&) = delete;

  /// Ends the thread; safe more than once.
  void stop();

 private:
  void run(std::chrono::milliseconds interval, std::size_t min_free_bytes);

  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace torouter::server
