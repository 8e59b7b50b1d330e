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

void AsioEventLoop::post_after(std::chrono::milliseconds delay, std::function<void()> task) {
  // On the context's own executor type, as the connections' timers are
  // (openai/any_stream.hpp): no type-erased executor per wait.
  using Timer =
      boost::asio::basic_waitable_timer<std::chrono::steady_clock,
                                        boost::asio::wait_traits<std::chrono::steady_clock>,
                                        boost::asio::io_context::executor_type>;
  auto timer = std::make_shared<Timer>(io_->impl().context().get_executor(), delay);
  timer->async_wait([timer, task = std::move(task)](const boost::system::error_code&) { task(); });
}

bool AsioEventLoop::runs_here() const { return io_->impl().runs_here(); }

}  // namespace torouter::server
