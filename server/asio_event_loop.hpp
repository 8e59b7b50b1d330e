// asio_event_loop.hpp: the router's event loop (torouter/event_loop.hpp) on
// the server's Asio threads, so `Router::invoke_async` runs its waits,
// retries and deadlines there as timers, holding no thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "torouter/event_loop.hpp"
#include "torouter/openai/upstream.hpp"

namespace torouter::server {

class AsioEventLoop final : public EventLoop {
 public:
  explicit AsioEventLoop(std::shared_ptr<openai::IoThreads> io) : io_(std::move(io)) {}
  void post(std::function<void()> task) override;
  void post_after(std::chrono::milliseconds delay, std::function<void()> task) override;
  WithdrawTask post_after_withdrawable(std::chrono::milliseconds delay,
                                       std::function<void()> task) override;
  bool runs_here() const override;

 private:
  std::shared_ptr<openai::IoThreads> io_;
};

}  // namespace torouter::server
