// io_threads.hpp: what an `IoThreads` holds (its public face is in
// torouter/openai/upstream.hpp): an Asio io_context and the threads that run
// it until the object goes.
#pragma once

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
  // Shared with the threads, so a thread that drops the last `IoThreads`
  // from inside a handler still returns from `run` on a live context.
  std::shared_ptr<boost::asio::io_context> context = std::make_shared<boost::asio::io_context>();
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work =
      boost::asio::make_work_guard(*context);
  std::vector<std::thread> threads;
};

}  // namespace openai
TOROUTER_END_NAMESPACE
