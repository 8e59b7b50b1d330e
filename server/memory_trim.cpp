// See memory_trim.hpp.
#include "memory_trim.hpp"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace torouter::server {

// mallinfo2 came with glibc 2.33 (Debian 12 has 2.36); its older mallinfo
// counts in int, which a server's heap can overflow.
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
#define TOROUTER_HAVE_MALLINFO2 1
#endif

std::size_t allocator_free_bytes() {
#ifdef TOROUTER_HAVE_MALLINFO2
  return mallinfo2().fordblks;
#else
  return 0;
#endif
}

bool trim_allocator_if_holding(std::size_t min_free_bytes) {
#ifdef TOROUTER_HAVE_MALLINFO2
  if (allocator_free_bytes() < min_free_bytes) return false;
  malloc_trim(0);
  return true;
#else
  (void)min_free_bytes;
  return false;
#endif
}

MemoryTrimmer::MemoryTrimmer(std::chrono::milliseconds interval, std::size_t min_free_bytes)
    : thread_([this, interval, min_free_bytes] { run(interval, min_free_bytes); }) {}

MemoryTrimmer::~MemoryTrimmer() { stop(); }

void MemoryTrimmer::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void MemoryTrimmer::run(std::chrono::milliseconds interval, std::size_t min_free_bytes) {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!wake_.wait_for(lock, interval, [this] { return stopping_; })) {
    lock.unlock();
    trim_allocator_if_holding(min_free_bytes);
    lock.lock();
  }
}

}  // namespace torouter::server
