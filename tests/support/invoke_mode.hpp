// Runs the invoke tests against both invokes: `invoke(router, ...)` is
// Router::invoke, or, when the program runs with TOROUTER_TEST_INVOKE=async
// (ctest registers each invoke test case both ways), Router::invoke_async on
// a RunLoop of two threads, waiting for its result. One state machine serves
// both; these tests hold each to the same behaviour.
#pragma once

#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "torouter/router.hpp"

namespace torouter::testing {

inline bool async_invoke() {
  static const bool async = [] {
    const char* mode = std::getenv("TOROUTER_TEST_INVOKE");
    return mode != nullptr && std::string(mode) == "async";
  }();
  return async;
}

// The loop the non-blocking invokes run on, for the whole program: two
// threads, so a transport that blocks one (and calls invoke inside, as
// some tests do) leaves the other to run the rest.
class SharedLoop {
 public:
  SharedLoop() : loop_(std::make_shared<RunLoop>()) {
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { loop_->run(); });
  }
  ~SharedLoop() {
    loop_->stop();
    for (auto& t : threads_) t.join();
  }
  const std::shared_ptr<RunLoop>& loop() const { return loop_; }

 private:
  std::shared_ptr<RunLoop> loop_;
  std::vector<std::thread> threads_;
};

inline InvokeResult invoke(Router& router, std::string_view prompt,
                           const InvokeOptions& options = {}) {
  if (!async_invoke()) return router.invoke(prompt, options);
  static SharedLoop shared;
  std::promise<InvokeResult> result;
  router.invoke_async(prompt, options, shared.loop(),
                      [&result](InvokeResult r) { result.set_value(std::move(r)); });
  return result.get_future().get();
}

}  // namespace torouter::testing
