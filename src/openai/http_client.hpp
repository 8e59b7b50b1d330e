// http_client.hpp: POSTs to one upstream endpoint over Boost.Beast, plain
// or TLS (OpenSSL) through the same code, on the threads of an `IoThreads`.
// No call holds a thread while it waits: connecting, sending and each read
// are asynchronous operations with their own deadline.
//
//   HttpClient client(Endpoint("https://api.openai.com/v1"), io, options);
//   client.post(std::move(request), on_body, on_done, cancel);
//
// Connections are kept alive and reused, one per concurrent call.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "torouter/abi.hpp"
#include "torouter/cancel.hpp"
#include "torouter/openai/upstream.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace openai::http {

using Clock = std::chrono::steady_clock;

/// Where an upstream's base URL points; throws `torouter::Error` for a URL
/// that is not http(s)://host[:port][/path].
struct Endpoint {
  explicit Endpoint(const std::string& base_url);

  std::string base_url;
  bool tls = false;
  std::string host;         // without brackets for IPv6
  std::string port;         // "80" or "443" when the URL names none
  std::string host_header;  // "127.0.0.1:8000"
  std::string path_prefix;  // "/v1", no trailing slash
};

/// One POST's request side.
struct PostRequest {
  std::string path;
  std::string body;
  std::string accept;
  std::string authorization;  // the whole header value, or empty
  std::chrono::milliseconds connect_timeout{5000};
  /// Longest wait for each arrival, and for the request to be sent.
  std::chrono::milliseconds read_timeout{60000};
  /// When the whole exchange must be over.
  Clock::time_point deadline = Clock::time_point::max();
  /// The largest answer body taken; a larger one fails the call.
  std::size_t max_body_bytes = 16 << 20;
};

/// How a POST ended, short of its answer's meaning.
struct PostOutcome {
  enum class Error {
    None,
    CannotConnect,
    ConnectTimeout,
    Stopped,      // the body receiver returned false, or the call was cancelled
    ReadTimeout,  // nothing arrived within the read timeout, or the deadline passed
    Dropped,      // the connection closed or broke mid-exchange
    Other,        // a malformed or oversized answer
  };
  Error error = Error::None;
  bool cancelled = false;  // stopped by the cancel signal
  int status = 0;
  std::string retry_after;
  std::string retry_after_ms;
  std::string detail;  // what went wrong, for Other and CannotConnect
};

/// Takes the answer's status (known before the first piece) and each piece
/// of its body; false stops the exchange.
using BodyReceiver = std::function<bool(int status, std::string_view piece)>;
using PostDone = std::function<void(PostOutcome)>;

struct ClientOptions {
  /// Idle keep-alive connections kept for reuse.
  std::size_t max_idle_connections = 64;
  /// A PEM file of the certificate authorities a TLS upstream's certificate
  /// must chain to; empty for the system's.
  std::string ca_file;
};

class HttpClient {
 public:
  /// Throws `torouter::Error` when the CA file cannot be read.
  HttpClient(Endpoint endpoint, std::shared_ptr<IoThreads> io, ClientOptions options);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  const Endpoint& endpoint() const;

  /// Starts one POST and returns. `on_body` and then `on_done` (exactly
  /// once) run on a thread of `io`, one at a time. A `cancel` (may be null)
  /// stops the exchange at once; it then ends `Stopped` and `cancelled`.
  void post(PostRequest request, BodyReceiver on_body, PostDone on_done,
            std::shared_ptr<CancelSignal> cancel);

  /// The endpoint, the TLS context and the idle connections, shared with
  /// the calls in flight (http_client.cpp).
  struct Shared;

 private:
  std::shared_ptr<Shared> shared_;
};

}  // namespace openai::http
TOROUTER_END_NAMESPACE
