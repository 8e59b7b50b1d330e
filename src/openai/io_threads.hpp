// io_threads.hpp: what an `IoThreads` holds (its public face is in
// torouter/openai/upstream.hpp): one Asio io_context per thread, each run by
// its thread until the object goes.
//
// One context per thread, not one context shared by all: work started on
// one of these threads (a connection's next read, the upstream call its
// request makes, the router's timers for it) stays on that thread, so no
// completion is handed to another thread and no thread wakes another.
// Handing over between the threads of a shared context cost torouter-server
// a third of its CPU per streamed answer (docs/BENCHMARKS.md).
#pragma once

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <memory>
#include <thread>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/openai/upstream.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace openai {

struct IoThreads::Impl {
  using WorkGuard = boost::asio::executor_work_guard<boost::asio::io_context::executor_type>;

  explicit Impl(std::size_t threads);

  /// Where to start new work: the calling thread's own context when it is
  /// one of these threads, else each context in turn.
  boost::asio::io_context& context();
  /// Each context in turn (where a new connection goes, say).
  boost::asio::io_context& next_context();
  /// Whether the calling thread is one of these threads.
  bool runs_here() const;

  // Shared with the threads, so a thread that drops the last `IoThreads`
  // from inside a handler still returns from `run` on a live context.
  std::vector<std::shared_ptr<boost::asio::io_context>> contexts;
  std::vector<WorkGuard> work;
  std::vector<std::thread> threads;
  std::atomic<std::size_t> next{0};
};

}  // namespace openai
TOROUTER_END_NAMESPACE
