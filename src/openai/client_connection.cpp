// client_connection.cpp: a POST over one kept-alive connection, plain or TLS
// (see client_connection.hpp).
#include "openai/client_connection.hpp"

#include <fmt/format.h>
#include <httplib.h>
#include <sys/socket.h>

#include <cerrno>
#include <limits>

#include "torouter/error.hpp"

namespace torouter::openai::http {

namespace {

using std::chrono::milliseconds;

// An answer's head may not be larger than this.
constexpr std::size_t kMaxResponseHead = 64 * 1024;

// Whether an idle kept-alive connection is still fit to send on: a peek
// that does not wait finds nothing. An end of stream or an error means the
// upstream closed it; bytes nobody asked for would be read as the next
// call's answer.
bool idle_and_open(int fd) {
  char byte = 0;
  const ssize_t n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

// The outcome of a read of the answer that ended with `status` (not Ok);
// `malformed` says what was wrong when it was not HTTP.
void set_read_failure(IoStatus status, const char* malformed, PostOutcome& outcome) {
  switch (status) {
    case IoStatus::Stopped:
      outcome.error = PostOutcome::Error::Stopped;
      break;
    case IoStatus::Timeout:
      outcome.error = PostOutcome::Error::ReadTimeout;
      break;
    case IoStatus::Closed:
    case IoStatus::Failed:
      outcome.error = PostOutcome::Error::Dropped;
      break;
    default:
      outcome.error = PostOutcome::Error::Other;
      outcome.detail = malformed;
      break;
  }
}

}  // namespace

Endpoint::Endpoint(const std::string& url) : base_url(url) {
  const auto scheme_end = url.find("://");
  const std::string scheme = scheme_end == std::string::npos ? "" : url.substr(0, scheme_end);
  if (scheme != "http" && scheme != "https") {
    throw Error(fmt::format("base_url \"{}\": must start with http:// or https://", url));
  }
  tls = scheme == "https";
  const auto host_start = scheme_end + 3;
  const auto path_start = url.find('/', host_start);
  scheme_host_port = url.substr(0, path_start);
  host_header = scheme_host_port.substr(host_start);
  if (host_header.empty()) throw Error(fmt::format("base_url \"{}\": has no host", url));
  if (path_start != std::string::npos) path_prefix = url.substr(path_start);
  while (!path_prefix.empty() && path_prefix.back() == '/') path_prefix.pop_back();

  // host[:port], or [v6 address][:port]
  std::string_view authority = host_header;
  std::string_view port_text;
  if (authority.front() == '[') {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) {
      throw Error(fmt::format("base_url \"{}\": an IPv6 address needs its closing ]", url));
    }
    host = std::string(authority.substr(1, close - 1));
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty() && after.front() != ':') {
      throw Error(fmt::format("base_url \"{}\": unexpected text after the host", url));
    }
    if (!after.empty()) port_text = after.substr(1);
  } else {
    const auto colon = authority.find(':');
    host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (host.empty()) throw Error(fmt::format("base_url \"{}\": has no host", url));
  if (port_text.empty()) {
    port = tls ? "443" : "80";
  } else {
    unsigned long value = 0;
    for (char c : port_text) {
      if (c < '0' || c > '9' || value > 65535) {
        throw Error(fmt::format("base_url \"{}\": port \"{}\" is not a number", url, port_text));
      }
      value = value * 10 + static_cast<unsigned long>(c - '0');
    }
    if (value == 0 || value > 65535) {
      throw Error(fmt::format("base_url \"{}\": port {} is out of range", url, port_text));
    }
    port = std::string(port_text);
  }
}

ClientConnection::ClientConnection(const Endpoint& endpoint) : endpoint_(endpoint) {}

ClientConnection::~ClientConnection() = default;

PostOutcome ClientConnection::post(const PostRequest& request, const BodyReceiver& on_body) {
  return endpoint_.tls ? post_tls(request, on_body) : post_plain(request, on_body);
}

bool ClientConnection::open_plain(const PostRequest& request, PostOutcome& outcome) {
  std::string error;
  bool timed_out = false;
  socket_ = connect_to(endpoint_.host, endpoint_.port, request.connect_timeout, error, timed_out);
  if (!socket_.is_open()) {
    outcome.error =
        timed_out ? PostOutcome::Error::ConnectTimeout : PostOutcome::Error::CannotConnect;
    outcome.detail = error;
    return false;
  }
  reader_.reset(socket_.fd());
  socket_timeout_ = milliseconds(-1);
  return true;
}

PostOutcome ClientConnection::post_plain(const PostRequest& request, const BodyReceiver& on_body) {
  PostOutcome outcome;
  reusable_ = false;
  // One write carries the whole request.
  wire_request_.clear();
  wire_request_ += "POST ";
  wire_request_ += request.path;
  wire_request_ += " HTTP/1.1\r\n";
  append_header(wire_request_, "Host", endpoint_.host_header);
  append_header(wire_request_, "Content-Type", "application/json");
  append_header(wire_request_, "Accept", request.accept);
  if (!request.authorization.empty()) {
    append_header(wire_request_, "Authorization", request.authorization);
  }
  append_header(wire_request_, "Content-Length", std::to_string(request.body.size()));
  wire_request_ += "\r\n";
  wire_request_ += request.body;

  // A kept-alive connection the upstream has closed is found by the peek
  // and replaced. A reused connection that still fails with nothing of an
  // answer back (it closed just after the peek, or the upstream read the
  // request and dropped it without a byte) sends the request once more on a
  // new connection, as HTTP clients do with a stale connection: an upstream
  // that drops requests without a word may see one twice. A new connection
  // that fails is not retried.
  for (int round = 0; round < 2; ++round) {
    bool reused = socket_.is_open();
    if (reused && !idle_and_open(socket_.fd())) {
      socket_.close();
      reused = false;
    }
    if (!socket_.is_open() && !open_plain(request, outcome)) return outcome;
    if (socket_timeout_ != request.read_timeout) {
      if (!configure_socket(socket_.fd(), request.read_timeout, request.read_timeout)) {
        outcome.error = PostOutcome::Error::Other;
        outcome.detail = "cannot set the socket's timeouts";
        socket_.close();
        return outcome;
      }
      socket_timeout_ = request.read_timeout;
    }
    const auto give_up_now = Clock::time_point::min();
    IoStatus status = send_all(socket_.fd(), wire_request_, give_up_now);
    if (status == IoStatus::Ok) {
      // Interim 1xx answers come before the real one.
      do {
        status = reader_.read_head(false, head_, kMaxResponseHead, request.deadline);
      } while (status == IoStatus::Ok && head_.status < 200);
    }
    if (status == IoStatus::Ok) break;
    const bool nothing_came =
        (status == IoStatus::Closed || status == IoStatus::Failed) && reader_.buffered() == 0;
    socket_.close();
    if (reused && round == 0 && nothing_came && Clock::now() < request.deadline) continue;
    set_read_failure(status, "malformed answer head", outcome);
    return outcome;
  }

  outcome.status = head_.status;
  outcome.retry_after = std::string(head_.header("retry-after"));
  outcome.retry_after_ms = std::string(head_.header("retry-after-ms"));
  BodyFraming framing;
  if (!response_framing(head_, framing)) {
    socket_.close();
    outcome.error = PostOutcome::Error::Other;
    outcome.detail = "answer with a malformed Content-Length";
    return outcome;
  }
  const int answer_status = head_.status;
  const IoStatus status =
      reader_.read_body(framing, std::numeric_limits<std::uint64_t>::max(), request.deadline,
                        [&](std::string_view piece) { return on_body(answer_status, piece); });
  if (status == IoStatus::Ok) {
    // Bytes past the answer would be read as the next call's answer.
    reusable_ = head_.keeps_alive() && framing.kind != BodyFraming::Kind::UntilClose &&
                reader_.buffered() == 0;
  } else {
    set_read_failure(status, "malformed answer body", outcome);
  }
  if (!reusable_) socket_.close();
  return outcome;
}

PostOutcome ClientConnection::post_tls(const PostRequest& request, const BodyReceiver& on_body) {
  PostOutcome outcome;
  reusable_ = false;
  if (!tls_client_) {
    tls_client_ = std::make_unique<httplib::Client>(endpoint_.scheme_host_port);
    tls_client_->set_keep_alive(true);
    tls_client_->set_tcp_nodelay(true);
  }
  tls_client_->set_connection_timeout(request.connect_timeout);
  tls_client_->set_read_timeout(request.read_timeout);
  tls_client_->set_write_timeout(request.read_timeout);

  httplib::Request req;
  req.method = "POST";
  req.path = std::string(request.path);
  req.body = std::string(request.body);
  req.set_header("Content-Type", "application/json");
  req.set_header("Accept", std::string(request.accept));
  if (!request.authorization.empty()) {
    req.set_header("Authorization", std::string(request.authorization));
  }
  int status = 0;
  req.response_handler = [&](const httplib::Response& response) {
    status = response.status;
    return true;
  };
  req.content_receiver = [&](const char* data, std::size_t size, std::uint64_t, std::uint64_t) {
    return on_body(status, std::string_view(data, size));
  };
  const auto start = Clock::now();
  httplib::Result result = tls_client_->send(req);
  if (!result) {
    switch (result.error()) {
      case httplib::Error::Connection:
        outcome.error = PostOutcome::Error::CannotConnect;
        outcome.detail = "connection refused or unreachable";
        break;
      case httplib::Error::ConnectionTimeout:
        outcome.error = PostOutcome::Error::ConnectTimeout;
        break;
      case httplib::Error::Canceled:
        outcome.error = PostOutcome::Error::Stopped;
        break;
      case httplib::Error::Read:
        // httplib tells a read that waited out its timeout from a dropped
        // connection only by the time it took.
        outcome.error = Clock::now() - start + milliseconds(50) >= request.read_timeout
                            ? PostOutcome::Error::ReadTimeout
                            : PostOutcome::Error::Dropped;
        break;
      default:
        outcome.error = PostOutcome::Error::Other;
        outcome.detail = httplib::to_string(result.error());
        break;
    }
    tls_client_.reset();  // in an unknown state: not reused
    return outcome;
  }
  outcome.status = result->status;
  outcome.retry_after = result->get_header_value("Retry-After");
  outcome.retry_after_ms = result->get_header_value("retry-after-ms");
  reusable_ = true;
  return outcome;
}

}  // namespace torouter::openai::http
