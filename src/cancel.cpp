// CancelSignal; see torouter/cancel.hpp.
#include "torouter/cancel.hpp"

#include <algorithm>
#include <utility>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

void CancelSignal::cancel() {
  std::vector<std::pair<std::uint64_t, std::function<void()>>> to_run;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cancelled_) return;
    cancelled_ = true;
    to_run.swap(callbacks_);
  }
  for (auto& entry : to_run) entry.second();
}

bool CancelSignal::cancelled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cancelled_;
}

std::uint64_t CancelSignal::on_cancel(std::function<void()> callback) {
  std::unique_lock<std::mutex> lock(mutex_);
  const std::uint64_t id = next_id_++;
  if (!cancelled_) {
    callbacks_.emplace_back(id, std::move(callback));
    return id;
  }
  lock.unlock();
  callback();
  return id;
}

void CancelSignal::forget(std::uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  callbacks_.erase(std::remove_if(callbacks_.begin(), callbacks_.end(),
                                  [id](const auto& entry) { return entry.first == id; }),
                   callbacks_.end());
}

TOROUTER_END_NAMESPACE
