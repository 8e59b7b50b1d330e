// See memory_trim.hpp.
#include "memory_trim.hpp"

#include <unistd.h>

#include <fstream>
#include <utility>

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

std::size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return 0;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
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

MemoryTrimmer::MemoryTrimmer(std::chrono::milliseconds interval, std::size_t min_bytes,
                             std::function<bool()> quiet)
    : min_bytes_(min_bytes),
      quiet_(std::move(quiet)),
      thread_([this, interval] { run(interval); }) {}

MemoryTrimmer::~MemoryTrimmer() { stop(); }

void MemoryTrimmer::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void MemoryTrimmer::run(std::chrono::milliseconds interval) {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!wake_.wait_for(lock, interval, [this] { return stopping_; })) {
    lock.unlock();
    tick();
    lock.lock();
  }
}

void MemoryTrimmer::tick() {
  if (resident_bytes() < floor_ + min_bytes_) return;
  if (quiet_ && !quiet_()) return;
  if (!trim_allocator_if_holding(min_bytes_)) return;
  floor_ = resident_bytes();
  ++trims_;
}

}  // namespace torouter::server
