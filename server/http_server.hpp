// http_server.hpp: torouter-server's HTTP/1.1 listener. A pool of worker
// threads, each serving one kept-alive connection at a time with blocking
// sockets: a request costs one recv and one send when it fits in one packet
// each way (http_wire.hpp), where cpp-httplib's server spends a poll before
// every read and write and a send per header block and body.
//
//   HttpServer http(options, handler, refusal_writer, observer);
//   int port = http.bind("127.0.0.1", 0);
//   http.run();                       // until http.stop() from another thread
//
// The handler answers whole (`HttpResponse::set_content`) or streams a
// chunked body (`start_stream`, `write`). Requests the server refuses before
// a handler sees them (malformed or more than 128 header fields 400, body
// too large 413, head too large 431, too slow to arrive 408) get the
// refusal writer's body, and the connection is closed after them.
//
// A kept-alive connection holds its worker between requests, so while
// connections wait and every worker is busy, each answer closes its
// connection: a waiting connection waits at most one answer, or one idle
// timeout.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "http_wire.hpp"

namespace torouter::server {

class HttpServer;

/// One request as a handler sees it.
struct HttpRequest {
  openai::http::MessageHead head;
  std::string body;

  const std::string& method() const { return head.method; }
  std::string_view path() const { return head.path(); }
  /// The first header field named `name` (any case), or empty.
  std::string_view header(std::string_view name) const { return head.header(name); }
};

/// The answer to one request, sent whole after the handler returns, or
/// streamed while it runs.
class HttpResponse {
 public:
  int status = 200;

  void set_header(std::string_view name, std::string_view value);
  void set_content(std::string body, std::string_view content_type);

  /// Sends the status and headers now, for a chunked body of the given type
  /// to follow; false when the client has gone.
  bool start_stream(std::string_view content_type);
  /// Sends one piece of a started stream; false when the client has gone.
  bool write(std::string_view data);
  bool streaming() const { return streaming_; }
  /// Whether the connection stays open after this answer (known once its
  /// head is written).
  bool keeps_alive() const { return keep_alive_; }
  /// Ends the exchange unfinished: nothing more is sent and the connection
  /// closes (what a stand-in does to play an upstream that drops it).
  void abort() { broken_ = true; }

 private:
  friend class HttpServer;
  // Sends on `fd`, whose send timeout bounds each wait; the answer to a
  // HEAD request (`head_only`) has its headers and no body. The connection
  // stays open after it if the client asked (`keep_alive`) and `server`
  // agrees when the head is written.
  HttpResponse(int fd, const HttpServer* server, bool keep_alive, bool head_only)
      : fd_(fd), server_(server), keep_alive_(keep_alive), head_only_(head_only) {}
  // The end of the head: Connection: close unless the connection stays.
  void end_head(std::string& out);
  bool send(std::string_view data);
  // The status line, the headers, and the framing of a whole body.
  std::string whole_message();
  // Ends a started stream; false when the client has gone.
  bool end_stream();

  int fd_;
  const HttpServer* server_;
  bool keep_alive_;
  bool head_only_;
  std::string headers_;  // "Name: value\r\n" lines
  std::string content_type_;
  std::string body_;
  bool streaming_ = false;
  bool broken_ = false;
};

struct HttpServerOptions {
  /// Worker threads; each open connection holds one while it lasts.
  std::size_t threads = 64;
  std::size_t max_body_bytes = 1 << 20;
  std::size_t max_head_bytes = 64 * 1024;
  /// How long a kept-alive connection may wait for its next request.
  std::chrono::milliseconds idle_timeout{5000};
  /// How long a request may take to arrive once it has begun.
  std::chrono::milliseconds read_timeout{30000};
  /// Longest wait for the client to take each piece of an answer.
  std::chrono::milliseconds write_timeout{30000};
};

using HttpHandler = std::function<void(const HttpRequest&, HttpResponse&)>;
/// Fills the answer to a request refused with `status` (its cause in
/// `message`); also used for a handler that threw (500).
using HttpRefusalWriter = std::function<void(int status, std::string_view message, HttpResponse&)>;
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

 private:
  friend class HttpResponse;
  // Whether an answer may leave its connection open: not while stopping,
  // nor while other connections wait and every worker is busy. (Closing
  // whenever one waits, even for a moment while a free worker wakes, makes
  // clients reconnect, which makes more wait: the connections churn.)
  bool may_keep_alive() const {
    return !stopping_ && (waiting_count_.load() == 0 || busy_workers_.load() < options_.threads);
  }
  void work();
  void serve(int fd);
  // Answers a request refused before any handler saw it.
  void refuse(int fd, int status, std::string_view message);

  HttpServerOptions options_;
  HttpHandler handler_;
  HttpRefusalWriter refusal_;
  HttpObserver observer_;
  openai::http::Socket listener_;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable run_ended_;
  bool in_run_ = false;
  std::deque<int> waiting_;                    // accepted connections no worker has taken yet
  std::atomic<std::size_t> waiting_count_{0};  // waiting_.size(), read without the lock
  std::atomic<std::size_t> busy_workers_{0};   // open_.size(), read without the lock
  std::set<int> open_;                         // connections a worker is serving
  std::vector<std::thread> workers_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> running_{false};
};

}  // namespace torouter::server
