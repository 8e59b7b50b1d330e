// torouter/cancel.hpp: a cancel handle shared by the caller of an invoke and
// everything working on it.
//
//   auto cancel = std::make_shared<torouter::CancelSignal>();
//   torouter::InvokeOptions options;
//   options.cancel = cancel;
//   router.invoke_async(prompt, options, loop, on_done);
//   ...
//   cancel->cancel();   // the client went away: on_done gets InvokeError::Cancelled
//
// A transport sees the same signal as `Request::cancel` and may stop its call
// early (`cancelled()`, or `on_cancel` to be told).
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

class CancelSignal {
 public:
  /// Cancels: the first call runs every registered callback, on this thread
  /// and outside any lock of the signal; later calls do nothing. Safe from
  /// any thread.
  void cancel();
  bool cancelled() const;
  /// Runs `callback` once when cancelled: at once, on this thread, if it
  /// already is. Returns an id for `forget`. Callbacks must be quick and
  /// must not block (the router's only post to its loop).
  std::uint64_t on_cancel(std::function<void()> callback);
  /// Drops callback `id` unrun, if it has not run yet.
  void forget(std::uint64_t id);

 private:
  mutable std::mutex mutex_;
  bool cancelled_ = false;
  std::uint64_t next_id_ = 1;
  std::vector<std::pair<std::uint64_t, std::function<void()>>> callbacks_;
};

TOROUTER_END_NAMESPACE
