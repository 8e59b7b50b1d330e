// torouter/event_loop.hpp: where the non-blocking invoke does its work.
//
// `Router::invoke_async` never blocks or sleeps a thread: its backoffs,
// deadlines and waits for a free slot are tasks posted to an event loop the
// caller supplies through this small interface, so the core depends on no
// I/O library. torouter-server gives it its Asio loop; `RunLoop` is a
// plain one for programs that have none (and the loop the blocking `invoke`
// runs on its caller's thread).
//
//   auto loop = std::make_shared<torouter::RunLoop>();
//   std::thread worker([&] { loop->run(); });      // as many as you like
//   router.invoke_async("Prove that ...", {}, loop, [](torouter::InvokeResult r) { ... });
//   ...
//   loop->stop();
//   worker.join();
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <utility>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

/// Withdraws a task posted with `EventLoop::post_after_withdrawable`.
using WithdrawTask = std::function<void()>;

/// Runs tasks for the router. Implementations must be safe to call from
/// any thread, and must never run a task inside `post`, `post_after` or
/// a withdrawal itself (the router may hold a lock while posting).
class EventLoop {
 public:
  virtual ~EventLoop() = default;
  /// Runs `task` soon, on a thread of the loop.
  virtual void post(std::function<void()> task) = 0;
  /// Runs `task` on a thread of the loop once `delay` has passed.
  virtual void post_after(std::chrono::milliseconds delay, std::function<void()> task) = 0;
  /// As `post_after`, and returns a function that withdraws the task:
  /// called before the task falls due, the task never runs; called later,
  /// it may still run. Call it from any thread while the loop exists, one
  /// call at a time. The router withdraws each call's deadline when the
  /// call ends before it, so a busy loop does not keep a timer for every
  /// finished call until its timeout. A loop that can drop a timer should
  /// override this and let go of the task at once (RunLoop and
  /// torouter-server's loop do); the default keeps it until it falls due
  /// and then skips it.
  virtual WithdrawTask post_after_withdrawable(std::chrono::milliseconds delay,
                                               std::function<void()> task);
  /// Whether the calling thread is one of the loop's, so that work the
  /// router would post can run at once (a streamed piece that arrives on
  /// the loop's own thread is handed on without a post). The default,
  /// false, always posts.
  virtual bool runs_here() const { return false; }
};

/// An event loop run by the threads that call `run`: ready tasks in the
/// order posted, then timers as they fall due (equal times in the order
/// posted). Tasks still queued when it is destroyed are dropped unrun.
class RunLoop final : public EventLoop {
 public:
  void post(std::function<void()> task) override;
  void post_after(std::chrono::milliseconds delay, std::function<void()> task) override;
  /// A withdrawn timer is dropped from the queue at once, with its task.
  WithdrawTask post_after_withdrawable(std::chrono::milliseconds delay,
                                       std::function<void()> task) override;
  /// Timers posted and neither run nor withdrawn.
  std::size_t pending_timers() const;

  /// Runs tasks on this thread as they become due, until `stop`. Several
  /// threads may run one loop. A task that throws ends `run` on its thread
  /// with that exception.
  void run();
  /// Makes every `run` return once its current task is done; tasks posted
  /// afterwards stay queued until `run` is called again after `restart`.
  void stop();
  /// Undoes `stop`, so `run` runs tasks again.
  void restart();

 private:
  using Clock = std::chrono::steady_clock;
  // Timers in due order, equal times in the order posted; a key also
  // names its timer for a withdrawal.
  using TimerKey = std::pair<Clock::time_point, std::uint64_t>;

  TimerKey add_timer(std::chrono::milliseconds delay, std::function<void()> task);
  // The next task to run, or an empty function once stopped.
  std::function<void()> next_task();

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> ready_;
  std::map<TimerKey, std::function<void()>> timers_;
  std::uint64_t sequence_ = 0;
  bool stopped_ = false;
};

TOROUTER_END_NAMESPACE
