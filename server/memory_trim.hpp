// memory_trim.hpp: gives the allocator's free memory back to the system
// after a burst.
//
// glibc's malloc keeps what a burst freed (1 MB request bodies, the answers
// queued for slow readers) for the next allocations, so a server's resident
// memory stays at its peak long after the burst. A `MemoryTrimmer` looks
// every interval, on a thread of its own, and returns those pages
// (`malloc_trim`) when the process's resident memory has grown by
// `min_bytes` since its last trim and the allocator holds at least that
// much free. torouter-server runs one (server/main.cpp); a service that
// embeds the server decides for its own process. Where the C library is
// not glibc it does nothing.
//
//   MemoryTrimmer trimmer(std::chrono::seconds(10), 32 << 20,
//                         [&] { return server.requests_in_flight() == 0; });
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>

namespace torouter::server {

/// Bytes the allocator holds free for reuse (glibc's `mallinfo2().fordblks`);
/// 0 where the C library cannot say. Pages it gave back still count.
std::size_t allocator_free_bytes();

/// This process's resident memory in bytes (/proc/self/statm); 0 where
/// unknown.
std::size_t resident_bytes();

/// Returns the allocator's free pages to the system when it holds at least
/// `min_free_bytes` free; true when it did.
bool trim_allocator_if_holding(std::size_t min_free_bytes);

/// Every `interval` until stopped: trims when resident memory is at least
/// `min_bytes` above what it was after the last trim (0 before the first),
/// the allocator holds `min_bytes` free, and `quiet` (when given) says now
/// suits. A trim holds each arena's lock while it walks it (a second or
/// more for a few hundred fragmented MiB on a slow machine), so the server
/// trims only while no request is in flight; and the resident test keeps it
/// from walking the same freed, already returned memory at every tick.
class MemoryTrimmer {
 public:
  MemoryTrimmer(std::chrono::milliseconds interval, std::size_t min_bytes,
                std::function<bool()> quiet = {});
  ~MemoryTrimmer();
  MemoryTrimmer(const MemoryTrimmer&) = delete;
  MemoryTrimmer& operator=(const MemoryTrimmer&) = delete;

  /// Ends the thread; safe more than once, from one thread.
  void stop();
  /// The trims done so far.
  std::size_t trims() const { return trims_.load(); }

 private:
  void run(std::chrono::milliseconds interval);
  void tick();

  const std::size_t min_bytes_;
  const std::function<bool()> quiet_;
  std::size_t floor_ = 0;  // resident bytes after the last trim; the thread's own
  std::atomic<std::size_t> trims_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace torouter::server
