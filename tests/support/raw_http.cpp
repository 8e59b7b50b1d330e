// raw_http.cpp: see raw_http.hpp. Each step is an asynchronous Beast
// operation run on the connection's own io_context for at most the
// timeout, then cancelled: Asio's blocking calls cannot be given a deadline.
#include "raw_http.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <sstream>
#include <stdexcept>

namespace torouter::test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using boost::system::error_code;
using tcp = asio::ip::tcp;

// Beast 1.74 takes Boost's string_view.
beast::string_view boost_view(std::string_view text) { return {text.data(), text.size()}; }

std::string HttpReply::header(std::string_view name) const {
  for (const auto& [field, value] : headers) {
    if (beast::iequals(field, boost_view(name))) return value;
  }
  return {};
}

bool HttpReply::has_header(std::string_view name) const {
  for (const auto& field : headers) {
    if (beast::iequals(field.first, boost_view(name))) return true;
  }
  return false;
}

struct RawHttpConnection::Impl {
  explicit Impl(std::chrono::milliseconds t) : timeout(t) {}

  // Starts one operation (given its completion handler) and runs it for at
  // most the timeout; timed_out when it did not finish.
  template <class Start>
  error_code run(Start start) {
    error_code result;
    bool done = false;
    start([&](error_code ec, std::size_t) {
      result = ec;
      done = true;
    });
    io.restart();
    io.run_for(timeout);
    if (done) return result;
    error_code ignored;
    socket.cancel(ignored);
    io.restart();
    io.run();
    return asio::error::timed_out;
  }

  std::chrono::milliseconds timeout;
  asio::io_context io;
  tcp::socket socket{io};
  beast::flat_buffer buffer;
};

RawHttpConnection::RawHttpConnection(int port, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>(timeout)) {
  const tcp::endpoint server(asio::ip::make_address("127.0.0.1"),
                             static_cast<unsigned short>(port));
  const error_code ec = impl_->run([&](auto done) {
    impl_->socket.async_connect(server, [done](error_code e) mutable { done(e, 0); });
  });
  if (ec)
    throw std::runtime_error("cannot connect to port " + std::to_string(port) + ": " +
                             ec.message());
}

RawHttpConnection::RawHttpConnection(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RawHttpConnection::RawHttpConnection(RawHttpConnection&&) noexcept = default;
RawHttpConnection& RawHttpConnection::operator=(RawHttpConnection&&) noexcept = default;
RawHttpConnection::~RawHttpConnection() = default;

bool RawHttpConnection::send(std::string_view bytes) {
  return !impl_->run([&](auto done) {
    asio::async_write(impl_->socket, asio::buffer(bytes.data(), bytes.size()), done);
  });
}

bool RawHttpConnection::send_from_another_thread(std::string_view bytes) {
  const int fd = impl_->socket.native_handle();
  const auto deadline = std::chrono::steady_clock::now() + impl_->timeout;
  while (!bytes.empty()) {
    const ssize_t sent = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (sent > 0) {
      bytes.remove_prefix(static_cast<std::size_t>(sent));
      continue;
    }
    if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
    if (std::chrono::steady_clock::now() > deadline) return false;
    pollfd wait{fd, POLLOUT, 0};
    ::poll(&wait, 1, 10);
  }
  return true;
}

HttpReply RawHttpConnection::receive(bool to_head) {
  bhttp::response_parser<bhttp::string_body> parser;
  parser.header_limit(1 << 16);
  parser.body_limit(1 << 24);
  parser.skip(to_head);
  const error_code ec =
      impl_->run([&](auto done) { bhttp::async_read(impl_->socket, impl_->buffer, parser, done); });
  HttpReply reply;
  if (!parser.is_header_done()) return reply;
  const auto& message = parser.get();
  for (const auto& field : message) {
    reply.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
  }
  reply.keep_alive = message.keep_alive();
  reply.body = message.body();
  reply.status = ec ? -1 : static_cast<int>(message.result_int());
  return reply;
}

bool RawHttpConnection::receive_request() {
  bhttp::request_parser<bhttp::string_body> parser;
  parser.body_limit(1 << 24);
  return !impl_->run(
      [&](auto done) { bhttp::async_read(impl_->socket, impl_->buffer, parser, done); });
}

bool RawHttpConnection::closed_by_server() {
  if (impl_->buffer.size() > 0) return false;
  char byte = 0;
  const error_code ec =
      impl_->run([&](auto done) { impl_->socket.async_read_some(asio::buffer(&byte, 1), done); });
  return ec == asio::error::eof || ec == asio::error::connection_reset;
}

std::string RawHttpConnection::read_until(std::string_view needle) {
  std::string seen = beast::buffers_to_string(impl_->buffer.data());
  impl_->buffer.consume(impl_->buffer.size());
  char piece[4096];
  while (seen.find(needle) == std::string::npos) {
    std::size_t got = 0;
    const error_code ec = impl_->run([&](auto done) {
      impl_->socket.async_read_some(asio::buffer(piece),
                                    [&got, done](error_code e, std::size_t n) mutable {
                                      got = n;
                                      done(e, n);
                                    });
    });
    if (ec) return {};
    seen.append(piece, got);
  }
  return seen;
}

void RawHttpConnection::close() {
  error_code ignored;
  impl_->socket.close(ignored);
}

struct RawHttpListener::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
};

RawHttpListener::RawHttpListener() : impl_(std::make_unique<Impl>()) {}
RawHttpListener::~RawHttpListener() = default;

int RawHttpListener::port() const { return impl_->acceptor.local_endpoint().port(); }

RawHttpConnection RawHttpListener::accept(std::chrono::milliseconds timeout) {
  auto connection = std::make_unique<RawHttpConnection::Impl>(timeout);
  impl_->acceptor.accept(connection->socket);
  return RawHttpConnection(std::move(connection));
}

std::optional<HttpReply> http_call(int port, std::string_view method, std::string_view target,
                                   const HttpHeaders& headers, std::string_view body,
                                   std::string_view content_type,
                                   std::chrono::milliseconds timeout) {
  try {
    RawHttpConnection connection(port, timeout);
    bhttp::request<bhttp::string_body> request(bhttp::string_to_verb(boost_view(method)),
                                               boost_view(target), 11);
    request.set(bhttp::field::host, "127.0.0.1:" + std::to_string(port));
    request.set(bhttp::field::connection, "close");
    for (const auto& [name, value] : headers) request.insert(boost_view(name), value);
    if (!body.empty() || method == "POST") {
      request.set(bhttp::field::content_type, boost_view(content_type));
      request.body() = std::string(body);
    }
    request.prepare_payload();
    std::ostringstream text;
    text << request;
    if (!connection.send(text.str())) return std::nullopt;
    HttpReply reply = connection.receive(method == "HEAD");
    if (reply.status <= 0) return std::nullopt;
    return reply;
  } catch (const std::runtime_error&) {
    return std::nullopt;
  }
}

}  // namespace torouter::test
