// AsioEventLoop: tasks posted to the io_context, delayed ones on a timer
// each (see asio_event_loop.hpp).
#include "asio_event_loop.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "openai/io_threads.hpp"

namespace torouter::server {

void AsioEventLoop::post(std::function<void()> task) {
  boost::asio::post(io_->impl().context(), std::move(task));
}

namespace {

// On the context's own executor type, as the connections' timers are
// (openai/any_stream.hpp): no type-erased executor per wait.
using Timer = boost::asio::basic_waitable_timer<std::chrono::steady_clock,
                                                boost::asio::wait_traits<std::chrono::steady_clock>,
                                                boost::asio::io_context::executor_type>;

std::shared_ptr<Timer> start_timer(openai::IoThreads& io, std::chrono::milliseconds delay,
                                   std::function<void()> task) {
  auto timer = std::make_shared<Timer>(io.impl().context().get_executor(), delay);
  timer->async_wait([timer, task = std::move(task)](const boost::system::error_code& ec) {
    if (ec != boost::asio::error::operation_aborted) task();  // aborted: withdrawn
  });
  return timer;
}

}  // namespace

void AsioEventLoop::post_after(std::chrono::milliseconds delay, std::function<void()> task) {
  start_timer(*io_, delay, std::move(task));
}

WithdrawTask AsioEventLoop::post_after_withdrawable(std::chrono::milliseconds delay,
                                                    std::function<void()> task) {
  // Cancelling takes the wait out of the timer queue at once; its handler
  // then runs, aborted, and frees the timer and the task. Cancelling a
  // timer that already fired does nothing.
  std::weak_ptr<Timer> weak = start_timer(*io_, delay, std::move(task));
  return [weak] {
    if (auto timer = weak.lock()) timer->cancel();
  };
}

bool AsioEventLoop::runs_here() const { return io_->impl().runs_here(); }

}  // namespace torouter::server
