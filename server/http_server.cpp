// http_server.cpp: accept loop, worker pool and the request/answer cycle of
// one connection (see http_server.hpp).
#include "http_server.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <exception>

namespace torouter::server {

namespace http = openai::http;

namespace {

using Clock = std::chrono::steady_clock;

// Before closing a connection the server chose to close (a refusal whose
// body may still be arriving, pipelined requests after a Connection: close
// answer), the unread bytes are drained for a moment: closing with unread
// data resets the connection, and the client can then lose the answer.
constexpr std::chrono::milliseconds kDrainTime{200};
constexpr std::size_t kMaxDrainBytes = 8 << 20;

void drain_before_close(int fd) {
  ::shutdown(fd, SHUT_WR);
  http::configure_socket(fd, kDrainTime, kDrainTime);
  const auto give_up = Clock::now() + kDrainTime;
  char scratch[16 * 1024];
  std::size_t drained = 0;
  while (drained < kMaxDrainBytes && Clock::now() < give_up) {
    const ssize_t n = ::recv(fd, scratch, sizeof scratch, 0);
    if (n <= 0) break;
    drained += static_cast<std::size_t>(n);
  }
}

}  // namespace

void HttpResponse::set_header(std::string_view name, std::string_view value) {
  http::append_header(headers_, name, value);
}

void HttpResponse::set_content(std::string body, std::string_view content_type) {
  body_ = std::move(body);
  content_type_ = std::string(content_type);
}

bool HttpResponse::send(std::string_view data) {
  if (broken_) return false;
  // The socket's send timeout bounds each wait; one timeout ends the answer.
  if (http::send_all(fd_, data, Clock::time_point::min()) != http::IoStatus::Ok) broken_ = true;
  return !broken_;
}

void HttpResponse::end_head(std::string& out) {
  keep_alive_ = keep_alive_ && server_->may_keep_alive();
  if (!keep_alive_) out += "Connection: close\r\n";
  out += "\r\n";
}

std::string HttpResponse::whole_message() {
  std::string out;
  out.reserve(128 + headers_.size() + body_.size());
  http::append_status_line(out, status);
  out += headers_;
  if (!content_type_.empty()) http::append_header(out, "Content-Type", content_type_);
  http::append_header(out, "Content-Length", std::to_string(body_.size()));
  end_head(out);
  if (!head_only_) out += body_;
  return out;
}

bool HttpResponse::start_stream(std::string_view content_type) {
  std::string out;
  http::append_status_line(out, status);
  out += headers_;
  http::append_header(out, "Content-Type", content_type);
  out += "Transfer-Encoding: chunked\r\n";
  end_head(out);
  streaming_ = true;
  return send(out);
}

bool HttpResponse::write(std::string_view data) {
  if (data.empty() || head_only_) return !broken_;
  std::string chunk;
  chunk.reserve(data.size() + 16);
  http::append_chunk(chunk, data);
  return send(chunk);
}

bool HttpResponse::end_stream() { return head_only_ ? !broken_ : send("0\r\n\r\n"); }

HttpServer::HttpServer(HttpServerOptions options, HttpHandler handler, HttpRefusalWriter refusal,
                       HttpObserver observer)
    : options_(options),
      handler_(std::move(handler)),
      refusal_(std::move(refusal)),
      observer_(std::move(observer)) {}

HttpServer::~HttpServer() { stop(); }

int HttpServer::bind(const std::string& host, int port, std::string& error) {
  listener_ = http::listen_on(host, std::to_string(port), error);
  if (!listener_.is_open()) return -1;
  const int bound = http::local_port(listener_.fd());
  if (bound < 0) error = "cannot read the bound port";
  return bound;
}

void HttpServer::run() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || !listener_.is_open()) return;
    in_run_ = true;
  }
  for (std::size_t i = 0; i < options_.threads; ++i) workers_.emplace_back([this] { work(); });
  running_ = true;
  for (;;) {
    const int fd = ::accept4(listener_.fd(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (stopping_) break;
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors or memory: wait for connections to close.
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      break;  // the listener itself failed
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
      ::close(fd);
      break;
    }
    waiting_.push_back(fd);
    waiting_count_ = waiting_.size();
    wake_.notify_one();
  }
  running_ = false;
  {
    // A listener that failed stops the workers too.
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    for (int fd : open_) ::shutdown(fd, SHUT_RD);
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
  workers_.clear();
  std::lock_guard<std::mutex> lock(mutex_);
  for (int fd : waiting_) ::close(fd);
  waiting_.clear();
  listener_.close();
  in_run_ = false;
  run_ended_.notify_all();
}

void HttpServer::stop() {
  std::unique_lock<std::mutex> lock(mutex_);
  stopping_ = true;
  // Wakes accept(); a read-side shutdown wakes a connection waiting for its
  // next request, while an answer being written still goes out.
  if (listener_.is_open()) ::shutdown(listener_.fd(), SHUT_RDWR);
  for (int fd : open_) ::shutdown(fd, SHUT_RD);
  wake_.notify_all();
  run_ended_.wait(lock, [this] { return !in_run_; });
}

void HttpServer::work() {
  for (;;) {
    int fd = -1;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !waiting_.empty(); });
      if (stopping_) return;
      fd = waiting_.front();
      waiting_.pop_front();
      waiting_count_ = waiting_.size();
      open_.insert(fd);
      busy_workers_ = open_.size();
    }
    serve(fd);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      open_.erase(fd);
      busy_workers_ = open_.size();
    }
    ::close(fd);
  }
}

void HttpServer::refuse(int fd, int status, std::string_view message) {
  HttpResponse response(fd, this, false, false);
  response.status = status;
  refusal_(status, message, response);
  response.send(response.whole_message());
  observer_(status);
  drain_before_close(fd);
}

void HttpServer::serve(int fd) {
  if (!http::configure_socket(fd, options_.idle_timeout, options_.write_timeout)) return;
  http::Reader reader(fd, http::OnReceiveTimeout::WaitToDeadline);
  HttpRequest request;
  for (;;) {
    const auto deadline = Clock::now() + options_.read_timeout;
    http::IoStatus status = reader.read_head(true, request.head, options_.max_head_bytes, deadline);
    if (status == http::IoStatus::TooLarge) {
      return refuse(
          fd, 431,
          "request head larger than " + std::to_string(options_.max_head_bytes) + " bytes");
    }
    if (status == http::IoStatus::Malformed) return refuse(fd, 400, "malformed HTTP request");
    if (status == http::IoStatus::Timeout && reader.buffered() > 0) {
      return refuse(fd, 408, "the request did not arrive in time");
    }
    if (status != http::IoStatus::Ok) return;  // closed, or idle too long
    if (request.head.minor_version >= 1 && !request.head.has_header("host")) {
      // RFC 9112, section 3.2: an HTTP/1.1 request without Host is refused.
      return refuse(fd, 400, "HTTP/1.1 request without a Host header");
    }

    http::BodyFraming framing;
    if (!http::request_framing(request.head, framing)) {
      return refuse(fd, 400, "malformed request framing (Content-Length, Transfer-Encoding)");
    }
    const std::string too_large =
        "request body larger than " + std::to_string(options_.max_body_bytes) + " bytes";
    if (framing.kind == http::BodyFraming::Kind::Length &&
        framing.length > options_.max_body_bytes) {
      return refuse(fd, 413, too_large);
    }
    if (framing.kind != http::BodyFraming::Kind::None &&
        http::equal_ignoring_case(request.head.header("expect"), "100-continue") &&
        http::send_all(fd, "HTTP/1.1 100 Continue\r\n\r\n", Clock::time_point::min()) !=
            http::IoStatus::Ok) {
      return;
    }
    request.body.clear();
    status =
        reader.read_body(framing, options_.max_body_bytes, deadline, [&](std::string_view piece) {
          request.body.append(piece);
          return true;
        });
    if (status == http::IoStatus::TooLarge) return refuse(fd, 413, too_large);
    if (status == http::IoStatus::Malformed) return refuse(fd, 400, "malformed chunked body");
    if (status == http::IoStatus::Timeout)
      return refuse(fd, 408, "the request did not arrive in time");
    if (status != http::IoStatus::Ok) return;

    const bool head_only = request.head.method == "HEAD";
    HttpResponse response(fd, this, request.head.keeps_alive(), head_only);
    std::string failure;
    try {
      handler_(request, response);
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "unknown exception";
    }
    bool sent = false;
    bool kept_alive = false;
    if (!failure.empty() && response.streaming()) {
      return;  // half an answer is out: closing is all that is left
    }
    if (!failure.empty()) {
      HttpResponse error(fd, this, request.head.keeps_alive(), head_only);
      error.status = 500;
      refusal_(500, "internal error: " + failure, error);
      sent = error.send(error.whole_message());
      kept_alive = error.keeps_alive();
      observer_(500);
    } else {
      sent = response.streaming() ? response.end_stream() : response.send(response.whole_message());
      kept_alive = response.keeps_alive();
      observer_(response.status);
    }
    if (!sent) return;
    if (!kept_alive) {
      // Pipelined requests the client sent meanwhile are unread: drain them,
      // so closing does not reset the connection under the answer.
      drain_before_close(fd);
      return;
    }
  }
}

}  // namespace torouter::server
