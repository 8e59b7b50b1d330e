// AsioEventLoop: tasks posted to the io_context, delayed ones on a timer
// each (see asio_event_loop.hpp).
#include "asio_event_loop.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "openai/io_threads.hpp"

namespace torouter::server {

void AsioEventLoop::post(std::function<void()> task) {
  boost::asio::post(io_->impl().context(), std::move(task));
}

void AsioEventLoop::post_after(std::chrono::milliseconds delay, std::function<void()> task) {
  auto timer = std::make_shared<boost::asio::steady_timer>(io_->impl().context(), delay);
  timer->async_wait([timer, task = std::move(task)](const boost::system::error_code&) { task(); });
}

bool AsioEventLoop::runs_here() const { return io_->impl().runs_here(); }

}  // namespace torouter::server
