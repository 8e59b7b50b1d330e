// client_connection.hpp: one keep-alive connection that POSTs JSON to an
// upstream endpoint. http:// goes over plain sockets (http_wire.hpp): one
// send per call and one recv per arrival, which is most of what a routed
// request costs a server in front of local models. https:// goes through
// cpp-httplib's client with OpenSSL.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "openai/http_wire.hpp"

namespace httplib {
class Client;
}

namespace torouter::openai::http {

/// Where an upstream's base URL points; throws `torouter::Error` for a URL
/// that is not http(s)://host[:port][/path].
struct Endpoint {
  explicit Endpoint(const std::string& base_url);

  std::string base_url;
  bool tls = false;
  std::string host;              // without brackets for IPv6
  std::string port;              // "80" or "443" when the URL names none
  std::string scheme_host_port;  // "http://127.0.0.1:8000"
  std::string host_header;       // "127.0.0.1:8000"
  std::string path_prefix;       // "/v1", no trailing slash
};

/// One POST's request side.
struct PostRequest {
  std::string_view path;
  std::string_view body;
  std::string_view accept;
  std::string_view authorization;  // the whole header value, or empty
  std::chrono::milliseconds connect_timeout{5000};
  /// Longest wait for each arrival, and for each send.
  std::chrono::milliseconds read_timeout{60000};
  /// When the whole exchange must be over (plain connections; the TLS path
  /// relies on the body receiver checking it).
  Clock::time_point deadline = Clock::time_point::max();
};

/// How a POST ended, short of its answer's meaning.
struct PostOutcome {
  enum class Error {
    None,
    CannotConnect,
    ConnectTimeout,
    Stopped,      // the body receiver returned false
    ReadTimeout,  // nothing arrived within the read timeout
    Dropped,      // the connection closed or broke mid-exchange
    Other,        // a malformed answer or another client error
  };
  Error error = Error::None;
  int status = 0;
  std::string retry_after;
  std::string retry_after_ms;
  std::string detail;  // what went wrong, for Other and CannotConnect
};

/// Takes the answer's status (known before the first piece) and each piece
/// of its body; false stops the exchange.
using BodyReceiver = std::function<bool(int status, std::string_view piece)>;

/// One connection, kept open between calls when the upstream allows it.
/// Not for concurrent use: the pool hands each to one call at a time.
class ClientConnection {
 public:
  explicit ClientConnection(const Endpoint& endpoint);
  ~ClientConnection();
  ClientConnection(const ClientConnection&) = delete;
  ClientConnection& operator=(const ClientConnection&) = delete;

  PostOutcome post(const PostRequest& request, const BodyReceiver& on_body);
  /// Whether the last exchange left the connection fit for another.
  bool reusable() const { return reusable_; }

 private:
  PostOutcome post_plain(const PostRequest& request, const BodyReceiver& on_body);
  PostOutcome post_tls(const PostRequest& request, const BodyReceiver& on_body);
  bool open_plain(const PostRequest& request, PostOutcome& outcome);

  const Endpoint& endpoint_;
  bool reusable_ = true;
  // http://
  Socket socket_;
  Reader reader_;
  std::chrono::milliseconds socket_timeout_{-1};
  std::string wire_request_;
  MessageHead head_;
  // https://
  std::unique_ptr<httplib::Client> tls_client_;
};

}  // namespace torouter::openai::http
