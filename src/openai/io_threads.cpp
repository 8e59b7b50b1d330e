// IoThreads: the io_contexts and threads upstream calls and the server do
// their I/O on (torouter/openai/upstream.hpp, src/openai/io_threads.hpp).
#include "openai/io_threads.hpp"

#if defined(__linux__)
#include <sched.h>
#endif

#include <algorithm>
#include <mutex>
#include <thread>

#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace openai {

namespace {
// The context of the `IoThreads` thread running here, and whose it is.
thread_local const IoThreads::Impl* running_owner = nullptr;
thread_local boost::asio::io_context* running_context = nullptr;
}  // namespace

IoThreads::Impl::Impl(std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    // Concurrency hint 1: each context is run by one thread.
    contexts.push_back(std::make_shared<boost::asio::io_context>(1));
    work.push_back(boost::asio::make_work_guard(*contexts.back()));
  }
  for (std::size_t i = 0; i < count; ++i) {
    threads.emplace_back([this, context = contexts[i]] {
      running_owner = this;
      running_context = context.get();
      context->run();
      running_owner = nullptr;
      running_context = nullptr;
    });
  }
}

bool IoThreads::Impl::runs_here() const { return running_owner == this; }

boost::asio::io_context& IoThreads::Impl::context() {
  if (running_owner == this) return *running_context;
  return next_context();
}

boost::asio::io_context& IoThreads::Impl::next_context() {
  return *contexts[next.fetch_add(1, std::memory_order_relaxed) % contexts.size()];
}

IoThreads::IoThreads(std::size_t threads) {
  if (threads == 0) throw Error("IoThreads: needs at least one thread");
  impl_ = std::make_unique<Impl>(threads);
}

IoThreads::~IoThreads() { stop(); }

void IoThreads::stop() {
  impl_->work.clear();
  for (auto& context : impl_->contexts) context->stop();
  for (auto& thread : impl_->threads) {
    if (!thread.joinable()) continue;  // stopped before
    // The last holder may let go from a handler, on one of these threads.
    if (thread.get_id() == std::this_thread::get_id()) {
      thread.detach();
    } else {
      thread.join();
    }
  }
}

std::size_t IoThreads::usable_cores() {
#if defined(__linux__)
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (::sched_getaffinity(0, sizeof(allowed), &allowed) == 0) {
    return std::max(1, CPU_COUNT(&allowed));
  }
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

std::shared_ptr<IoThreads> IoThreads::shared_default() {
  static std::mutex mutex;
  static std::weak_ptr<IoThreads> current;
  std::lock_guard<std::mutex> lock(mutex);
  auto io = current.lock();
  if (!io) {
    io = std::make_shared<IoThreads>(1);
    current = io;
  }
  return io;
}

}  // namespace openai
TOROUTER_END_NAMESPACE
