// http_client.cpp: one POST as a chain of asynchronous Beast operations
// (resolve, connect, TLS handshake, write, read the head, read the body
// piece by piece), all on the I/O thread of the connection it uses; see
// http_client.hpp.
#include "openai/http_client.hpp"

#include <fmt/format.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cerrno>
#include <mutex>
#include <optional>
#include <vector>

#include "openai/any_stream.hpp"
#include "openai/head_text.hpp"
#include "openai/io_threads.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace openai::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;

namespace {

// An answer's head may not be larger than this.
constexpr std::size_t kMaxResponseHead = 64 * 1024;
// The most of a body one read hands on.
constexpr std::size_t kPieceBytes = 16 * 1024;

// Whether an idle kept-alive connection is still fit to send on: a peek
// that does not wait finds nothing. An end of stream or an error means the
// upstream closed it; bytes nobody asked for would be read as the next
// call's answer.
bool idle_and_open(int fd) {
  char byte = 0;
  const ssize_t n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

// The errors that mean the peer closed or broke the connection.
bool is_dropped(const beast::error_code& ec) {
  return ec == asio::error::eof || ec == bhttp::error::end_of_stream ||
         ec == bhttp::error::partial_message || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe || ec == asio::ssl::error::stream_truncated ||
         ec == asio::error::connection_aborted;
}

std::string header_value(const bhttp::response_header<>& head, std::string_view name) {
  const auto it = head.find(beast::string_view(name.data(), name.size()));
  if (it == head.end()) return {};
  return std::string(it->value().data(), it->value().size());
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
  host_header = url.substr(
      host_start, path_start == std::string::npos ? std::string::npos : path_start - host_start);
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

// One connection: a TCP stream, in TLS for https://, with the executor every
// operation on it runs on, the bytes read past its last answer and the
// buffer its answers' bodies are read into. That buffer lives here, made
// once per connection, not in each exchange: 16 KB made and freed per call
// kept glibc growing and trimming its heap (mprotect, page faults) under
// load, about a tenth of the server's samples (docs/BENCHMARKS.md). The
// executor is its io_context's own, not a strand: each context of
// `IoThreads` has one thread, which already runs its handlers one at a time.
struct Connection {
  Connection(asio::io_context& io, asio::ssl::context* tls_context)
      : home(io),
        executor(io.get_executor()),
        buffer(kMaxBufferedBytes),
        tls_context_(tls_context) {
    open_stream();
  }

  // The most bytes of an answer read and not yet parsed: a head at its
  // limit and a line past it. Beast bounds the head and the body's
  // content, but a chunked body's size and extension line, and each
  // trailer field, wait whole in the buffer: with no bound an upstream's
  // endless line would grow it past max_body_bytes, without end.
  static constexpr std::size_t kMaxBufferedBytes = kMaxResponseHead + 16 * 1024;

  // A new, unconnected stream on the same executor.
  void open_stream() {
    buffer.clear();
    stream.reset();
    stream.emplace(executor, tls_context_);
  }

  AnyStream::TcpStream& lowest() { return stream->tcp(); }
  bool is_open() { return lowest().socket().is_open(); }

  asio::io_context& home;  // whose thread runs its I/O
  asio::io_context::executor_type executor;  // home's: one thread, so handlers never overlap
  std::optional<AnyStream> stream;
  beast::flat_buffer buffer;
  std::array<char, kPieceBytes> piece;

 private:
  asio::ssl::context* tls_context_;
};

struct HttpClient::Shared {
  Shared(Endpoint e, std::shared_ptr<IoThreads> threads, ClientOptions o)
      : endpoint(std::move(e)), io(std::move(threads)), options(std::move(o)) {}

  // An idle connection still open, or a new one.
  std::unique_ptr<Connection> acquire(bool& reused) {
    asio::io_context& here = io->impl().context();
    {
      std::lock_guard<std::mutex> lock(mutex);
      while (auto connection = take_idle(here)) {
        if (idle_and_open(connection->lowest().socket().native_handle())) {
          reused = true;
          return connection;
        }
      }
    }
    reused = false;
    return std::make_unique<Connection>(here, tls_context.get());
  }

  // The most recent idle connection, one whose I/O runs on `here` first
  // (the call's I/O then stays on the calling thread); null when none is
  // idle. Under `mutex`.
  std::unique_ptr<Connection> take_idle(asio::io_context& here) {
    if (idle.empty()) return nullptr;
    auto local =
        std::find_if(idle.rbegin(), idle.rend(), [&](const auto& c) { return &c->home == &here; });
    auto chosen = local == idle.rend() ? std::prev(idle.end()) : std::prev(local.base());
    auto connection = std::move(*chosen);
    idle.erase(chosen);
    return connection;
  }

  void release(std::unique_ptr<Connection> connection) {
    std::lock_guard<std::mutex> lock(mutex);
    if (idle.size() < options.max_idle_connections) idle.push_back(std::move(connection));
  }

  const Endpoint endpoint;
  const std::shared_ptr<IoThreads> io;
  const ClientOptions options;
  std::unique_ptr<asio::ssl::context> tls_context;
  std::mutex mutex;
  std::vector<std::unique_ptr<Connection>> idle;
};

namespace {

// One POST from its connection to its answer's last piece.
class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(std::shared_ptr<HttpClient::Shared> shared, PostRequest request, BodyReceiver on_body,
           PostDone on_done, std::shared_ptr<CancelSignal> cancel)
      : shared_(std::move(shared)),
        request_(std::move(request)),
        on_body_(std::move(on_body)),
        on_done_(std::move(on_done)),
        cancel_(std::move(cancel)) {
    connection_ = shared_->acquire(reused_);
  }

  void start() {
    auto self = shared_from_this();
    if (cancel_) {
      std::weak_ptr<Exchange> weak = self;
      auto executor = connection_->executor;
      cancel_id_ = cancel_->on_cancel([weak, executor] {
        asio::post(executor, [weak] {
          if (auto exchange = weak.lock()) exchange->stop_for_cancel();
        });
      });
    }
    asio::post(connection_->executor, [self] { self->begin(); });
  }

 private:
  template <typename Handler>
  auto on_home_thread(Handler&& handler) {
    return asio::bind_executor(connection_->executor, std::forward<Handler>(handler));
  }

  // The completion of a write or read in flight: a cancel or an error ends
  // the exchange, else `next` runs.
  auto then(void (Exchange::*next)()) {
    auto self = shared_from_this();
    busy_ = true;
    return on_home_thread([self, next](beast::error_code ec, std::size_t) {
      self->busy_ = false;
      if (self->stop_if_cancelled()) return;
      if (ec) return self->io_failed(ec);
      (self.get()->*next)();
    });
  }

  void begin() {
    if (done_) return;  // cancelled before it began
    if (connection_->is_open()) {
      send();
    } else {
      resolve();
    }
  }

  void stop_for_cancel() {
    if (done_) return;
    cancelled_ = true;
    if (resolver_) resolver_->cancel();
    if (connect_timer_) connect_timer_->cancel();
    beast::error_code ignored;
    connection_->lowest().socket().cancel(ignored);
    connection_->lowest().expires_never();
    // An operation that was not started yet sees the flag when it would.
    if (!busy_) fail(PostOutcome::Error::Stopped, "cancelled");
  }

  // ------------------------------------------------------------ connecting

  void resolve() {
    // A numeric host needs no look-up (the resolver would run getaddrinfo
    // on a thread of its own for every new connection).
    if (const auto endpoint = numeric_endpoint()) {
      return connect(std::array<tcp::endpoint, 1>{*endpoint});
    }
    auto self = shared_from_this();
    resolver_.emplace(connection_->executor);
    connect_timer_.emplace(connection_->executor);
    connect_timer_->expires_after(request_.connect_timeout);
    connect_timer_->async_wait(on_home_thread([self](beast::error_code ec) {
      if (!ec && self->resolver_) {
        self->resolve_timed_out_ = true;
        self->resolver_->cancel();
      }
    }));
    busy_ = true;
    resolver_->async_resolve(
        shared_->endpoint.host, shared_->endpoint.port,
        on_home_thread([self](beast::error_code ec, tcp::resolver::results_type results) {
          self->busy_ = false;
          self->connect_timer_->cancel();
          if (self->stop_if_cancelled()) return;
          if (self->resolve_timed_out_) {
            self->fail(PostOutcome::Error::ConnectTimeout, "no address in time");
          } else if (ec) {
            self->fail(PostOutcome::Error::CannotConnect, ec.message());
          } else {
            self->connect(results);
          }
        }));
  }

  // The upstream's address when its host is an IP address and its port a
  // number; nullopt when a look-up is needed.
  std::optional<tcp::endpoint> numeric_endpoint() const {
    beast::error_code ec;
    const auto address = asio::ip::make_address(shared_->endpoint.host, ec);
    const std::string& port = shared_->endpoint.port;
    const bool digits = !port.empty() && port.size() <= 5 &&
                        std::all_of(port.begin(), port.end(),
                                    [](char c) { return c >= '0' && c <= '9'; });
    if (ec || !digits || std::stoul(port) > 65535) return std::nullopt;
    return tcp::endpoint(address, static_cast<unsigned short>(std::stoul(port)));
  }

  template <class Endpoints>
  void connect(const Endpoints& results) {
    auto self = shared_from_this();
    connection_->lowest().expires_after(request_.connect_timeout);
    busy_ = true;
    connection_->lowest().async_connect(
        results, on_home_thread([self](beast::error_code ec, const tcp::endpoint&) {
          self->busy_ = false;
          if (self->stop_if_cancelled()) return;
          if (ec == beast::error::timeout) {
            self->fail(PostOutcome::Error::ConnectTimeout, "no connection in time");
          } else if (ec) {
            self->fail(PostOutcome::Error::CannotConnect, ec.message());
          } else {
            self->connected();
          }
        }));
  }

  // A request's writes go out at once: with Nagle's algorithm a write
  // after the first (a large body's next piece) waits for the upstream to
  // acknowledge the first, which it may delay for 40 ms.
  void connected() {
    beast::error_code ignored;
    connection_->lowest().socket().set_option(tcp::no_delay(true), ignored);
    if (connection_->stream->secure()) {
      handshake();
    } else {
      send();
    }
  }

  void handshake() {
    auto& tls = connection_->stream->tls();
    const std::string& host = shared_->endpoint.host;
    // SNI, so a server with many names sends this one's certificate.
    if (!SSL_set_tlsext_host_name(tls.native_handle(), host.c_str())) {
      fail(PostOutcome::Error::CannotConnect, "cannot set the TLS server name");
      return;
    }
    tls.set_verify_mode(asio::ssl::verify_peer);
    tls.set_verify_callback(asio::ssl::host_name_verification(host));
    auto self = shared_from_this();
    connection_->lowest().expires_after(request_.connect_timeout);
    busy_ = true;
    tls.async_handshake(
        asio::ssl::stream_base::client, on_home_thread([self](beast::error_code ec) {
          self->busy_ = false;
          if (self->stop_if_cancelled()) return;
          if (ec == beast::error::timeout) {
            self->fail(PostOutcome::Error::ConnectTimeout, "no TLS handshake in time");
          } else if (ec) {
            self->fail(PostOutcome::Error::CannotConnect, "TLS handshake: " + ec.message());
          } else {
            self->send();
          }
        }));
  }

  // ------------------------------------------------------------ the exchange

  void send() {
    HeadArena arena;
    bhttp::request<bhttp::empty_body, ArenaFields> head(std::piecewise_construct, std::make_tuple(),
                                                        std::make_tuple(arena.allocator()));
    head.method(bhttp::verb::post);
    head.target(request_.path);
    head.version(11);
    head.set(bhttp::field::host, shared_->endpoint.host_header);
    head.set(bhttp::field::content_type, "application/json");
    head.set(bhttp::field::accept, request_.accept);
    if (!request_.authorization.empty()) {
      head.set(bhttp::field::authorization, request_.authorization);
    }
    head.content_length(request_.body.size());
    // The head as one string beside the body, not copied (head_text.hpp).
    head_text_ = head_text(head);
    arm();
    const std::array<asio::const_buffer, 2> both{asio::buffer(head_text_),
                                                 asio::buffer(request_.body)};
    asio::async_write(*connection_->stream, both, then(&Exchange::read_head));
  }

  void read_head() {
    parser_.emplace();
    parser_->header_limit(kMaxResponseHead);
    parser_->body_limit(request_.max_body_bytes);
    arm();
    bhttp::async_read_header(*connection_->stream, connection_->buffer, *parser_,
                             then(&Exchange::head_arrived));
  }

  void head_arrived() {
    const auto& head = parser_->get();
    if (head.result_int() >= 100 && head.result_int() < 200) {
      read_head();  // an interim answer ("100 Continue"): the real one follows
      return;
    }
    outcome_.status = static_cast<int>(head.result_int());
    outcome_.retry_after = header_value(head, "Retry-After");
    outcome_.retry_after_ms = header_value(head, "retry-after-ms");
    if (parser_->is_done()) {
      succeed();
    } else {
      read_piece();
    }
  }

  void read_piece() {
    parser_->get().body().data = connection_->piece.data();
    parser_->get().body().size = connection_->piece.size();
    arm();
    auto self = shared_from_this();
    busy_ = true;
    bhttp::async_read_some(*connection_->stream, connection_->buffer, *parser_,
                           on_home_thread([self](beast::error_code ec, std::size_t) {
                             self->busy_ = false;
                             self->piece_read(ec);
                           }));
  }

  void piece_read(beast::error_code ec) {
    if (stop_if_cancelled()) return;
    if (ec == bhttp::error::need_buffer) ec = {};
    if (ec) {
      io_failed(ec);
      return;
    }
    const std::size_t size = connection_->piece.size() - parser_->get().body().size;
    if (size > 0 && !on_body_(outcome_.status, std::string_view(connection_->piece.data(), size))) {
      fail(PostOutcome::Error::Stopped, "stopped by the receiver");
      return;
    }
    if (parser_->is_done()) {
      succeed();
    } else {
      read_piece();
    }
  }

  // --------------------------------------------------------------- endings

  // Each wait for the peer ends at the read timeout or the call's deadline.
  void arm() {
    const auto timeout_at = Clock::now() + request_.read_timeout;
    connection_->lowest().expires_at(std::min(timeout_at, request_.deadline));
  }

  bool stop_if_cancelled() {
    if (!cancelled_ || done_) return done_;
    fail(PostOutcome::Error::Stopped, "cancelled");
    return true;
  }

  void io_failed(const beast::error_code& ec) {
    const bool nothing_read = !parser_ || !parser_->got_some();
    if (reused_ && nothing_read && is_dropped(ec)) {
      // The upstream closed the kept-alive connection as we reused it:
      // nothing was answered, so the request goes again on a new one.
      reused_ = false;
      connection_->open_stream();
      parser_.reset();
      resolve();
      return;
    }
    if (ec == beast::error::timeout) {
      fail(PostOutcome::Error::ReadTimeout, "no answer in time");
    } else if (is_dropped(ec)) {
      fail(PostOutcome::Error::Dropped, ec.message());
    } else if (ec == bhttp::error::body_limit) {
      fail(PostOutcome::Error::Other,
           fmt::format("answer larger than {} bytes", request_.max_body_bytes));
    } else if (ec == bhttp::error::header_limit) {
      fail(PostOutcome::Error::Other, "answer head larger than 64 KiB");
    } else if (ec == bhttp::error::buffer_overflow) {
      fail(PostOutcome::Error::Other,
           fmt::format("a chunk size line or trailer field of the answer longer than {} bytes",
                       Connection::kMaxBufferedBytes));
    } else {
      fail(PostOutcome::Error::Other, "malformed answer: " + ec.message());
    }
  }

  void fail(PostOutcome::Error error, std::string detail) {
    outcome_.error = error;
    outcome_.cancelled = cancelled_;
    outcome_.detail = std::move(detail);
    finish(false);
  }

  // Bytes after the answer that nobody asked for would be read as the next
  // call's answer: such a connection is not kept.
  void succeed() { finish(parser_->keep_alive() && connection_->buffer.size() == 0); }

  void finish(bool keep_connection) {
    if (done_) return;
    done_ = true;
    if (cancel_) cancel_->forget(cancel_id_);
    if (keep_connection) {
      connection_->lowest().expires_never();
      shared_->release(std::move(connection_));
    }
    PostDone on_done = std::move(on_done_);
    on_done(std::move(outcome_));
  }

  const std::shared_ptr<HttpClient::Shared> shared_;
  const PostRequest request_;
  BodyReceiver on_body_;
  PostDone on_done_;
  const std::shared_ptr<CancelSignal> cancel_;
  std::uint64_t cancel_id_ = 0;

  std::unique_ptr<Connection> connection_;
  bool reused_ = false;
  std::optional<tcp::resolver> resolver_;
  std::optional<AnyStream::Timer> connect_timer_;
  bool resolve_timed_out_ = false;
  std::string head_text_;  // the request's head, written before its body
  std::optional<bhttp::response_parser<bhttp::buffer_body>> parser_;
  PostOutcome outcome_;
  bool busy_ = false;  // an operation is in flight
  bool cancelled_ = false;
  bool done_ = false;
};

}  // namespace

HttpClient::HttpClient(Endpoint endpoint, std::shared_ptr<IoThreads> io, ClientOptions options)
    : shared_(std::make_shared<Shared>(std::move(endpoint), std::move(io), std::move(options))) {
  if (!shared_->endpoint.tls) return;
  auto context = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
  beast::error_code ec;
  if (shared_->options.ca_file.empty()) {
    context->set_default_verify_paths(ec);
  } else {
    context->load_verify_file(shared_->options.ca_file, ec);
  }
  if (ec) {
    throw Error(fmt::format("ca_file \"{}\": cannot be read as PEM certificates: {}",
                            shared_->options.ca_file, ec.message()));
  }
  shared_->tls_context = std::move(context);
}

HttpClient::~HttpClient() = default;

const Endpoint& HttpClient::endpoint() const { return shared_->endpoint; }

void HttpClient::post(PostRequest request, BodyReceiver on_body, PostDone on_done,
                      std::shared_ptr<CancelSignal> cancel) {
  std::make_shared<Exchange>(shared_, std::move(request), std::move(on_body), std::move(on_done),
                             std::move(cancel))
      ->start();
}

}  // namespace openai::http
TOROUTER_END_NAMESPACE
