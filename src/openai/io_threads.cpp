// IoThreads: the io_context and threads upstream calls do their I/O on
// (torouter/openai/upstream.hpp, src/openai/io_threads.hpp).
#include "openai/io_threads.hpp"

#include <mutex>

#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace openai {

IoThreads::IoThreads(std::size_t threads) : impl_(std::make_unique<Impl>()) {
  if (threads == 0) throw Error("IoThreads: needs at least one thread");
  for (std::size_t i = 0; i < threads; ++i) {
    impl_->threads.emplace_back([context = impl_->context] { context->run(); });
  }
}

IoThreads::~IoThreads() { stop(); }

void IoThreads::stop() {
  impl_->work.reset();
  impl_->context->stop();
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
