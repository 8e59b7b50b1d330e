// http_server.hpp: torouter-server's HTTP/1.1 listener, on Boost.Beast and
// Boost.Asio. A few I/O threads serve any number of connections: accepting,
// reading requests and writing answers are asynchronous, so an idle or
// slow connection holds no thread. Handlers run on a pool of worker
// threads, each request once it has fully arrived.
//
//   HttpServer http(options, handler, refusal_writer, observer);
//   int port = http.bind("127.0.0.1", 0, error);
//   http.run();                       // until http.stop() from another thread
//
// The handler answers whole (`HttpResponse::set_content`) or streams a
// chunked body (`start_stream`, `write`), on its worker; or it hands the
// answer over (`defer`) to finish it later from any thread, and its worker
// is free at once: the answer's writes then queue and never block. Requests the server refuses
// before a handler sees them (malformed, or HTTP/1.1 without Host: 400; body too large 413; head
// too large 431; too slow to arrive 408; past the connection or queue caps 503 with Retry-After)
// get the refusal writer's body, and the connection is closed after them.
//
// Each request has one deadline from its first byte (`read_timeout`), which
// a trickle of bytes cannot extend; a kept-alive connection waits at most
// `idle_timeout` for the next request's first byte.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "torouter/cancel.hpp"
#include "torouter/openai/upstream.hpp"

namespace torouter::server {

class HttpServer;
class HttpSession;

/// One request as a handler sees it.
struct HttpRequest {
  std::string method;
  std::string target;  // "/v1/models?x=1"
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  /// True when the body was left unread (`HttpServerOptions::wants_body`
  /// said no): `body` is empty whatever the head announced.
  bool body_skipped = false;

  /// The target without its query string, nor its scheme and authority
  /// in the absolute form ("http://host/v1/models" is "/v1/models"), which
  /// a server must accept (RFC 9112, section 3.2.2).
  std::string_view path() const;
  /// The first header field named `name` (any case), or empty.
  std::string_view header(std::string_view name) const;
};

/// The answer to one request, sent whole after the handler returns, or
/// streamed while it runs; or, once deferred, finished later. Used by one
/// thread at a time.
class HttpResponse {
 public:
  int status = 200;

  void set_header(std::string_view name, std::string_view value);
  void set_content(std::string body, std::string_view content_type);

  /// Sends the status and headers now, for a chunked body of the given type
  /// to follow; false when the client has gone. (Deferred: queued.)
  bool start_stream(std::string_view content_type);
  /// Sends one piece of a started stream; false when the client has gone.
  /// (Deferred: queued; false once the client is known to be gone.)
  bool write(std::string_view data);

  /// Hands the answer over, to be finished later from any thread: the
  /// returned response holds this one's status and headers, and the
  /// handler returns at once. Its writes queue on the connection and never
  /// block (a client that reads too slowly is cut off); `finish` ends it,
  /// or its destruction does (a 500, or a cut stream, when nothing was
  /// sent). Call at most once, before anything is sent.
  std::shared_ptr<HttpResponse> defer();
  /// Ends a deferred answer: sends the whole answer, or the end of the
  /// stream.
  void finish();
  /// Cancelled when the client goes away while a deferred answer is
  /// pending, or cannot take its bytes.
  std::shared_ptr<CancelSignal> client_gone() const { return gone_; }
  ~HttpResponse();
  bool streaming() const { return streaming_; }
  /// Whether the connection stays open after this answer.
  bool keeps_alive() const { return keep_alive_; }
  /// Ends the exchange unfinished: nothing more is sent and the connection
  /// closes (what a stand-in does to play an upstream that drops it).
  void abort();

 private:
  friend class HttpSession;
  HttpResponse(std::shared_ptr<HttpSession> session, bool keep_alive, bool head_only)
      : session_(std::move(session)), keep_alive_(keep_alive), head_only_(head_only) {}

  std::shared_ptr<HttpSession> session_;
  bool keep_alive_;
  bool head_only_;
  // The headers set, names and values back to back in one string: an
  // answer's dozen headers cost one allocation, not two each.
  struct HeaderAt {
    std::size_t at;
    std::size_t name_size;
    std::size_t value_size;
  };
  template <class Visit>
  void for_each_header(Visit&& visit) const {
    for (const HeaderAt& h : header_at_) {
      visit(std::string_view(header_text_).substr(h.at, h.name_size),
            std::string_view(header_text_).substr(h.at + h.name_size, h.value_size));
    }
  }
  void clear_headers() {
    header_text_.clear();
    header_at_.clear();
  }
  std::string header_text_;
  std::vector<HeaderAt> header_at_;
  std::string content_type_;
  std::string body_;
  bool streaming_ = false;
  bool broken_ = false;
  bool deferred_ = false;     // this one finishes later, without blocking
  bool handed_over_ = false;  // `defer` was called: another finishes it
  bool finished_ = false;
  std::shared_ptr<CancelSignal> gone_ = std::make_shared<CancelSignal>();
};

/// Connections past `HttpServerOptions::max_connections` being refused at
/// once: each keeps its descriptor while its TLS handshake (up to 2 s), its
/// 503 and the drain of its client (up to 2 s) go on, so a flood of them
/// could take the descriptors that the connections within the cap need for
/// their upstream calls. Beyond these, a connection over the cap is closed
/// unanswered.
inline constexpr std::size_t kMostRefusalsAtOnce = 64;

struct HttpServerOptions {
  /// Worker threads that run handlers, one request each at a time.
  std::size_t threads = 64;
  /// Threads that do the connections' I/O (0: one per core the process
  /// may run on, `IoThreads::usable_cores`), unless `io` gives them.
  std::size_t io_threads = 0;
  std::shared_ptr<openai::IoThreads> io;
  /// The most bytes a deferred answer may have queued for a slow client;
  /// past it the client is cut off.
  std::size_t max_queued_answer_bytes = 8 << 20;
  /// The most all connections' deferred answers may have queued at once;
  /// past it the client whose write would pass it is cut off, so slow
  /// readers cannot take the server's memory between them.
  std::size_t max_queued_answer_bytes_total = 256 << 20;
  /// For a handler that never blocks (it answers at once, or defers): run
  /// it on the connection's I/O thread, its answer deferred from the start,
  /// and spare the hand-over to a worker. No workers are started then.
  bool handlers_never_block = false;
  /// Requests that have arrived and wait for a worker; past it, 503.
  std::size_t max_queued_requests = 4096;
  /// Open connections; past it a new one gets 503 and is closed, or, while
  /// kMostRefusalsAtOnce such refusals are still going out, closed
  /// unanswered.
  std::size_t max_connections = 10000;
  std::size_t max_body_bytes = 1 << 20;
  std::size_t max_head_bytes = 64 * 1024;
  /// How long a kept-alive connection may wait for its next request.
  std::chrono::milliseconds idle_timeout{5000};
  /// How long a request may take to arrive once it has begun.
  std::chrono::milliseconds read_timeout{30000};
  /// Longest wait for the client to take each piece of an answer.
  std::chrono::milliseconds write_timeout{30000};
  /// HTTPS: the certificate chain and its private key (PEM files); both
  /// empty for plain HTTP.
  std::string tls_cert_file;
  std::string tls_key_file;
  /// Asked, for a request that waits for `100 Continue` before it sends
  /// its body, whether the server wants that body: false answers at once
  /// without reading it (the handler sees the head, `body_skipped` set)
  /// and closes the connection after. Unset: every body is read. The
  /// router server says no to a request without a valid key, so a client
  /// that waits for 100 Continue gets its 401 without sending its body (one
  /// that sends it at once has it read, up to `max_body_bytes`).
  std::function<bool(const HttpRequest& head)> wants_body;
};

using HttpHandler = std::function<void(const HttpRequest&, HttpResponse&)>;
/// The JSON body of the answer to a request refused with `status` (its
/// cause in `message`); also used for a handler that threw (500).
using HttpRefusalWriter = std::function<std::string(int status, std::string_view message)>;
/// Told each answer's status once it is sent (or the stream ended).
using HttpObserver = std::function<void(int status)>;

class HttpServer {
 public:
  HttpServer(HttpServerOptions options, HttpHandler handler, HttpRefusalWriter refusal,
             HttpObserver observer);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  /// Listens on host:port (0: a free port); returns the port, or -1 with
  /// `error` saying why.
  int bind(const std::string& host, int port, std::string& error);
  /// Accepts and serves until `stop`; returns at once if `stop` came first.
  void run();
  /// Stops accepting, ends idle connections, lets answers in progress
  /// finish, and waits for them. Safe from any thread but a handler's, and
  /// more than once.
  void stop();
  /// Whether `run` is accepting connections.
  bool is_running() const { return running_; }

  struct State;  // http_server.cpp

 private:
  std::shared_ptr<State> state_;
  std::atomic<bool> running_{false};
};

}  // namespace torouter::server
