// raw_http.hpp: the server tests' HTTP client side, on Boost.Beast. A
// connection on loopback that sends bytes exactly as a test writes them
// (malformed, pipelined, one at a time) and reads answers with Beast's
// parser, each step bounded by a timeout; and one whole request for tests
// that only need the answer. Compiled once (raw_http.cpp) so the tests do
// not each compile Beast.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace torouter::test {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

/// One answer as read from the wire.
struct HttpReply {
  /// 0 when the connection closed (or nothing came in time) before an
  /// answer's head; -1 when the head came but the body broke off.
  int status = 0;
  HttpHeaders headers;
  std::string body;  // de-chunked
  bool keep_alive = false;

  /// The first field named `name` (any case), or empty.
  std::string header(std::string_view name) const;
  bool has_header(std::string_view name) const;
  bool keeps_alive() const { return keep_alive; }
};

class RawHttpConnection {
 public:
  /// Connects to 127.0.0.1:`port`; throws std::runtime_error when it cannot.
  /// Every later step gives up after `timeout`.
  explicit RawHttpConnection(int port, std::chrono::milliseconds timeout = std::chrono::seconds(5));
  RawHttpConnection(RawHttpConnection&&) noexcept;
  RawHttpConnection& operator=(RawHttpConnection&&) noexcept;
  ~RawHttpConnection();

  /// Writes `bytes` whole; false when the connection is gone.
  bool send(std::string_view bytes);
  /// The same, safe while another thread is in `receive`: it writes on the
  /// socket itself, beside Asio (Asio's objects take one thread at a time).
  bool send_from_another_thread(std::string_view bytes);
  /// Reads the next answer; `to_head` for the answer to a HEAD request,
  /// which has no body whatever its fields say.
  HttpReply receive(bool to_head = false);
  /// Reads one whole request (the server side of a test); false when the
  /// connection ended or broke first.
  bool receive_request();
  /// Whether the server closed the connection (within the timeout) with
  /// nothing more to read.
  bool closed_by_server();
  /// The raw bytes read until `needle` has arrived; empty when the
  /// connection closed or the time ran out first.
  std::string read_until(std::string_view needle);
  /// Closes at once.
  void close();

 private:
  friend class RawHttpListener;
  struct Impl;
  explicit RawHttpConnection(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// A listening socket on 127.0.0.1 for a test that plays the server, byte
/// for byte.
class RawHttpListener {
 public:
  RawHttpListener();
  ~RawHttpListener();
  int port() const;
  /// Waits for the next connection; its steps time out after `timeout`.
  RawHttpConnection accept(std::chrono::milliseconds timeout = std::chrono::seconds(5));

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// One request on a new connection to 127.0.0.1:`port`, the body (if any)
/// sent with `content_type`; nullopt when no whole answer came within
/// `timeout`.
std::optional<HttpReply> http_call(int port, std::string_view method, std::string_view target,
                                   const HttpHeaders& headers = {}, std::string_view body = {},
                                   std::string_view content_type = "application/json",
                                   std::chrono::milliseconds timeout = std::chrono::seconds(60));

}  // namespace torouter::test
