// RunLoop; see torouter/event_loop.hpp.
#include "torouter/event_loop.hpp"

#include <atomic>
#include <memory>
#include <utility>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

void RunLoop::post(std::function<void()> task) {
  if (!task) return;  // nothing to run; an empty task would end `run`
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ready_.push_back(std::move(task));
  }
  wake_.notify_one();
}

WithdrawTask EventLoop::post_after_withdrawable(std::chrono::milliseconds delay,
                                                std::function<void()> task) {
  auto withdrawn = std::make_shared<std::atomic<bool>>(false);
  post_after(delay, [withdrawn, task = std::move(task)] {
    if (!withdrawn->load()) task();
  });
  return [withdrawn] { withdrawn->store(true); };
}

void RunLoop::post_after(std::chrono::milliseconds delay, std::function<void()> task) {
  if (!task) return;
  add_timer(delay, std::move(task));
}

WithdrawTask RunLoop::post_after_withdrawable(std::chrono::milliseconds delay,
                                              std::function<void()> task) {
  if (!task) return [] {};
  const TimerKey key = add_timer(delay, std::move(task));
  return [this, key] {
    std::function<void()> dropped;  // its captures are let go outside the lock
    std::lock_guard<std::mutex> lock(mutex_);
    const auto found = timers_.find(key);
    if (found == timers_.end()) return;  // run (or running) already
    dropped = std::move(found->second);
    timers_.erase(found);
  };
}

std::size_t RunLoop::pending_timers() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return timers_.size();
}

RunLoop::TimerKey RunLoop::add_timer(std::chrono::milliseconds delay, std::function<void()> task) {
  TimerKey key;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    key = TimerKey(Clock::now() + delay, sequence_++);
    timers_.emplace(key, std::move(task));
  }
  // Every runner, since the new timer may fall due before the one each
  // sleeps for.
  wake_.notify_all();
  return key;
}

std::function<void()> RunLoop::next_task() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    if (stopped_) return {};
    const Clock::time_point now = Clock::now();
    // Due timers join the ready queue in due order, so a timer never
    // overtakes a task posted before it fell due.
    while (!timers_.empty() && timers_.begin()->first.first <= now) {
      ready_.push_back(std::move(timers_.begin()->second));
      timers_.erase(timers_.begin());
    }
    if (!ready_.empty()) {
      std::function<void()> task = std::move(ready_.front());
      ready_.pop_front();
      return task;
    }
    if (timers_.empty()) {
      wake_.wait(lock);
    } else {
      // A copy: while this thread waits, a withdrawal on another may
      // erase the timer a reference would point into.
      const Clock::time_point due = timers_.begin()->first.first;
      wake_.wait_until(lock, due);
    }
  }
}

void RunLoop::run() {
  while (std::function<void()> task = next_task()) task();
}

void RunLoop::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopped_ = true;
  }
  wake_.notify_all();
}

void RunLoop::restart() {
  std::lock_guard<std::mutex> lock(mutex_);
  stopped_ = false;
}

TOROUTER_END_NAMESPACE
