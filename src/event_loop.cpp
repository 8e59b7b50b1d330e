// RunLoop; see torouter/event_loop.hpp.
#include "torouter/event_loop.hpp"

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

void RunLoop::post_after(std::chrono::milliseconds delay, std::function<void()> task) {
  if (!task) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    timers_.push(Timer{Clock::now() + delay, sequence_++, std::move(task)});
  }
  // Every runner, since the new timer may fall due before the one each
  // sleeps for.
  wake_.notify_all();
}

std::function<void()> RunLoop::next_task() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    if (stopped_) return {};
    const Clock::time_point now = Clock::now();
    // Due timers join the ready queue in due order, so a timer never
    // overtakes a task posted before it fell due.
    while (!timers_.empty() && timers_.top().due <= now) {
      ready_.push_back(std::move(const_cast<Timer&>(timers_.top()).task));
      timers_.pop();
    }
    if (!ready_.empty()) {
      std::function<void()> task = std::move(ready_.front());
      ready_.pop_front();
      return task;
    }
    if (timers_.empty()) {
      wake_.wait(lock);
    } else {
      // A copy: while this thread waits, a post_after on another may grow
      // the queue and move the timer the reference would point into.
      const Clock::time_point due = timers_.top().due;
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
