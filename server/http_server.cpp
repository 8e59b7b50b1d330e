// http_server.cpp: the listener on Beast (see http_server.hpp). Each
// connection is an `HttpSession` whose reads, writes and deadlines run on
// its I/O thread; a request that has arrived whole goes to the worker pool,
// whose handler writes its answer through the session and waits for each
// write, so a slow client slows its own handler only.
#include "http_server.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <ctime>
#include <deque>
#include <exception>
#include <future>
#include <iterator>
#include <optional>
#include <unordered_set>

#include "openai/any_stream.hpp"
#include "openai/head_text.hpp"
#include "openai/io_threads.hpp"

namespace torouter::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;

namespace {

// Before closing a connection the server chose to close (a refusal whose
// body may still be arriving, pipelined requests after a Connection: close
// answer), what the client still sends is read and dropped, as nginx's
// lingering close does: closing with unread data resets the connection, and
// a reset can destroy the answer before the client has read it. The drain
// ends when the client has been quiet for kDrainQuiet, after kDrainTime in
// all, or after kMaxDrainBytes; a slow client keeps its slot no longer.
constexpr milliseconds kDrainTime{2000};
constexpr milliseconds kDrainQuiet{500};
constexpr std::size_t kMaxDrainBytes = 8 << 20;

// Room in a connection's request buffer past a head at its limit: for a
// chunked body's size line with its extensions, a trailer field, or the
// start of a pipelined request read while an answer is made.
constexpr std::size_t kRequestBufferSlack = 16 * 1024;
// Bytes each read of the client's while its answer is made takes.
constexpr std::size_t kWatchReadBytes = 1024;

// The most bytes a connection's request buffer holds. Beast bounds a head
// (header_limit) and a body's content (body_limit), but a chunked body's
// size and extension line, and each trailer field, wait whole in the
// buffer: with no bound one endless line grows it without end.
std::size_t request_buffer_limit(const HttpServerOptions& options) {
  return std::max<std::size_t>(options.max_head_bytes, 4096) + kRequestBufferSlack;
}

std::string text_of(beast::string_view text) { return std::string(text.data(), text.size()); }

// The Date header's value (RFC 9110, section 6.6.1: an origin server with
// a clock sends it), in the IMF-fixdate form; formatted at most once a
// second on each thread. Names spelled out, not strftime's: those follow
// the locale.
beast::string_view http_date() {
  static constexpr std::array<const char*, 7> kDays{"Sun", "Mon", "Tue", "Wed",
                                                    "Thu", "Fri", "Sat"};
  static constexpr std::array<const char*, 12> kMonths{"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  thread_local std::time_t formatted_at = -1;
  thread_local std::array<char, 40> text{};
  thread_local std::size_t length = 0;
  const std::time_t now = std::time(nullptr);
  if (now != formatted_at) {
    std::tm utc{};
    gmtime_r(&now, &utc);
    length = fmt::format_to_n(text.data(), text.size(), "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
                              kDays[static_cast<std::size_t>(utc.tm_wday)], utc.tm_mday,
                              kMonths[static_cast<std::size_t>(utc.tm_mon)], utc.tm_year + 1900,
                              utc.tm_hour, utc.tm_min, utc.tm_sec)
                 .size;
    formatted_at = now;
  }
  return {text.data(), length};
}

// The request as handlers see it, without Beast's types.
void copy_head(const bhttp::request<bhttp::string_body>& message, HttpRequest& request) {
  request.method = text_of(message.method_string());
  request.target = text_of(message.target());
  request.headers.reserve(static_cast<std::size_t>(std::distance(message.begin(), message.end())));
  for (const auto& field : message) {
    request.headers.emplace_back(text_of(field.name_string()), text_of(field.value()));
  }
}

// An answer's head and body, kept together until both are written.
struct HeadAndBody {
  std::string head;
  std::string body;
};

// Why a request's head cannot be served as it is framed (RFC 9112), as
// a status and a reason; status 0 when it can. Beast reads a body chunked
// only when chunked is its last transfer coding, and otherwise reads no
// body at all, so the body would be read as the next request: the request
// smuggling a proxy in front that reads it otherwise makes possible.
std::pair<int, std::string> unservable_framing(
    const bhttp::request_parser<bhttp::string_body>::value_type& message) {
  if (message.version() >= 11) {
    // Section 3.2: no Host, or more than one.
    const auto hosts = message.count(bhttp::field::host);
    if (hosts == 0) return {400, "HTTP/1.1 request without a Host header"};
    if (hosts > 1) return {400, "request with more than one Host header"};
  }
  if (message.find(bhttp::field::transfer_encoding) == message.end()) return {0, {}};
  // Section 6.1: HTTP/1.0 has no transfer codings; a peer that sends one
  // frames the body in a way a proxy in front may read otherwise.
  if (message.version() < 11) return {400, "HTTP/1.0 request with Transfer-Encoding"};
  // Section 6.3: a final coding other than chunked leaves the length unknown.
  if (!message.chunked()) return {400, "Transfer-Encoding whose last coding is not chunked"};
  // Section 6.1: a coding the server does not decode.
  const auto [first, last] = message.equal_range(bhttp::field::transfer_encoding);
  for (auto field = first; field != last; ++field) {
    for (const auto& coding : bhttp::token_list(field->value())) {
      if (!beast::iequals(coding, "chunked")) {
        return {501, "Transfer-Encoding " + text_of(coding) + " is not implemented"};
      }
    }
  }
  return {0, {}};
}

}  // namespace

std::string_view HttpRequest::path() const {
  std::string_view path = std::string_view(target).substr(0, target.find('?'));
  for (beast::string_view scheme : {"http://", "https://"}) {
    if (path.size() >= scheme.size() &&
        beast::iequals(beast::string_view(path.data(), scheme.size()), scheme)) {
      const auto slash = path.find('/', scheme.size());
      return slash == std::string_view::npos ? std::string_view("/") : path.substr(slash);
    }
  }
  return path;
}

std::string_view HttpRequest::header(std::string_view name) const {
  for (const auto& [field, value] : headers) {
    if (beast::iequals(field, beast::string_view(name.data(), name.size()))) return value;
  }
  return {};
}

struct HttpServer::State {
  State(HttpServerOptions o, HttpHandler h, HttpRefusalWriter r, HttpObserver obs)
      : options(o),
        handler(std::move(h)),
        refusal(std::move(r)),
        observer(std::move(obs)),
        io(o.io ? o.io
                : std::make_shared<openai::IoThreads>(
                      o.io_threads > 0 ? o.io_threads : openai::IoThreads::usable_cores())),
        acceptor(io->impl().next_context()) {}

  // Queues a handler's run; false when the queue is full.
  bool submit(std::function<void()> job) {
    std::lock_guard<std::mutex> lock(mutex);
    if (jobs.size() >= options.max_queued_requests) return false;
    jobs.push_back(std::move(job));
    wake_worker.notify_one();
    return true;
  }

  void work() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex);
        wake_worker.wait(lock, [this] { return workers_stop || !jobs.empty(); });
        if (jobs.empty()) return;
        job = std::move(jobs.front());
        jobs.pop_front();
      }
      job();
    }
  }

  const HttpServerOptions options;
  const HttpHandler handler;
  const HttpRefusalWriter refusal;
  const HttpObserver observer;
  std::shared_ptr<openai::IoThreads> io;
  tcp::acceptor acceptor;
  std::unique_ptr<asio::ssl::context> tls;  // set by bind when the options name a certificate

  std::mutex mutex;
  std::condition_variable wake_worker;
  std::condition_variable changed;  // sessions ended, or stop
  std::deque<std::function<void()>> jobs;
  std::vector<std::thread> workers;
  bool workers_stop = false;
  std::unordered_set<HttpSession*> sessions;
  // Of `sessions`, those refused at the connection cap (kMostRefusalsAtOnce).
  std::size_t refusing = 0;
  // Bytes of deferred answers queued for slow clients, on every connection.
  std::atomic<std::size_t> queued_answer_bytes{0};
  std::atomic<bool> stopping{false};
  bool in_run = false;
  // An accept (or its retry timer) is pending. `stop` waits for it to end:
  // a pending handler holds this state, which holds the I/O threads, so
  // one left queued when the threads stop would keep both alive for good.
  bool accepting = false;

  void accept_ended() {
    std::lock_guard<std::mutex> lock(mutex);
    accepting = false;
    changed.notify_all();
  }
};

// One connection: reads its requests, hands each to a worker, writes the
// answers, and closes when either side is done.
class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(std::shared_ptr<HttpServer::State> state, openai::AnyStream::Socket socket)
      : state_(std::move(state)),
        stream_(std::move(socket), state_->tls.get()),
        request_timer_(stream_.get_executor()),
        write_watch_(stream_.get_executor()) {
    buffer_.max_size(request_buffer_limit(state_->options));
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->sessions.insert(this);
  }
  ~HttpSession() {
    set_queued_bytes(0);
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->sessions.erase(this);
    if (refused_at_cap_) --state_->refusing;
    // Only `run` and `stop` wait on `changed`, and only for the last
    // session once stopping (set under this lock, then notified). Waking
    // them on every close cost each connection two context switches and a
    // contended lock.
    if (state_->stopping && state_->sessions.empty()) state_->changed.notify_all();
  }

  void start() {
    auto self = shared_from_this();
    after_handshake([self] { self->wait_for_request(); }, state_->options.read_timeout);
  }

  // What becomes of a new connection: served when the others (refusals
  // aside) are under the cap; else refused, while fewer than
  // kMostRefusalsAtOnce refusals are going out (counted here, under the
  // lock, so that the session's end uncounts it whatever happens next);
  // else dropped unanswered.
  enum class Entry { serve, refuse, drop };
  Entry entry() {
    std::lock_guard<std::mutex> lock(state_->mutex);
    const std::size_t others = state_->sessions.size() - 1 - state_->refusing;
    if (others < state_->options.max_connections) return Entry::serve;
    if (state_->refusing >= kMostRefusalsAtOnce) return Entry::drop;
    ++state_->refusing;
    refused_at_cap_ = true;
    return Entry::refuse;
  }

  // Refuses the connection at once (past the connection cap). A TLS
  // client has kDrainTime for its handshake, not read_timeout: a refusal
  // holds one of the few slots for refusals.
  void refuse_now(int status, std::string message, std::string retry_after) {
    auto self = shared_from_this();
    asio::dispatch(stream_.get_executor(), [self, status, message, retry_after] {
      self->after_handshake(
          [self, status, message, retry_after] { self->refuse(status, message, retry_after); },
          kDrainTime);
    });
  }

  // While stopping: a connection waiting for its next request closes now.
  void stop_if_idle() {
    auto self = shared_from_this();
    asio::post(stream_.get_executor(), [self] {
      if (self->idle_) self->stream_.tcp().cancel();
    });
  }

  // ------------------------------------------------------------- writes

  using Done = std::function<void(beast::error_code, std::size_t)>;
  // One write on the connection's I/O thread; it calls its `Done` once.
  using WriteOp = std::function<void(Done)>;
  // A deferred answer's write: one of its own (`op`), or a chunk of a
  // streamed answer (`chunk`), of `bytes` bytes.
  struct QueuedWrite {
    WriteOp op;
    std::string chunk;
    std::size_t bytes;
  };

  bool http10() const { return http10_; }

  // An answer's head, its fields in an arena where it is written.
  using AnswerHead = bhttp::response<bhttp::empty_body, openai::ArenaFields>;

  // Sets on `head` the status and headers set on `r`.
  void fill_head(AnswerHead& head, const HttpResponse& r, std::string_view content_type) {
    head.result(static_cast<unsigned>(r.status));
    head.version(11);
    head.set(bhttp::field::date, http_date());
    r.for_each_header([&](std::string_view name, std::string_view value) {
      head.insert(beast::string_view(name.data(), name.size()),
                  beast::string_view(value.data(), value.size()));
    });
    if (!content_type.empty()) {
      head.set(bhttp::field::content_type,
               beast::string_view(content_type.data(), content_type.size()));
    }
  }

  // The answer as one message. Its body moves out of `r`: an answer is
  // sent once.
  WriteOp whole(HttpResponse& r) {
    openai::HeadArena arena;
    AnswerHead message(std::piecewise_construct, std::make_tuple(),
                       std::make_tuple(arena.allocator()));
    fill_head(message, r, r.content_type_);
    message.keep_alive(r.keep_alive_);
    message.content_length(r.body_.size());
    auto text = std::make_shared<HeadAndBody>();
    text->head = openai::head_text(message);
    if (!r.head_only_) text->body = std::move(r.body_);  // HEAD: the length, no body
    return [this, text](Done done) {
      const std::array<asio::const_buffer, 2> both{asio::buffer(text->head),
                                                   asio::buffer(text->body)};
      asio::async_write(stream_, both,
                        [text, done](beast::error_code ec, std::size_t n) { done(ec, n); });
    };
  }

  WriteOp stream_head(const HttpResponse& r, std::string_view content_type) {
    openai::HeadArena arena;
    AnswerHead message(std::piecewise_construct, std::make_tuple(),
                       std::make_tuple(arena.allocator()));
    fill_head(message, r, content_type);
    message.keep_alive(r.keep_alive_);
    // HTTP/1.0 has no chunked coding (RFC 9112, section 6.1): the body ends
    // where the connection does (`start_stream` cleared keep-alive).
    message.chunked(!http10_);
    auto head = std::make_shared<const std::string>(openai::head_text(message));
    return [this, head](Done done) {
      asio::async_write(stream_, asio::buffer(*head),
                        [head, done](beast::error_code ec, std::size_t n) { done(ec, n); });
    };
  }

  WriteOp chunk(std::shared_ptr<const std::string> data) {
    return [this, data](Done done) {
      write_chunk(*data, [data, done](beast::error_code ec, std::size_t n) { done(ec, n); });
    };
  }

  // A streamed answer's piece: a chunk, or its bytes as they are to an
  // HTTP/1.0 client.
  template <class Handler>
  void write_chunk(const std::string& data, Handler&& handler) {
    if (http10_) {
      asio::async_write(stream_, asio::buffer(data), std::forward<Handler>(handler));
    } else {
      asio::async_write(stream_, bhttp::make_chunk(asio::buffer(data)),
                        std::forward<Handler>(handler));
    }
  }

  WriteOp last_chunk() {
    return [this](Done done) {
      if (!http10_) return asio::async_write(stream_, bhttp::make_chunk_last(), done);
      // HTTP/1.0: nothing marks the end but the close that follows.
      asio::post(stream_.get_executor(), [done] { done({}, 0); });
    };
  }

  // Runs `op` on the I/O thread and waits for it (a worker's write); false when
  // the write failed or timed out (the client is gone).
  bool write_and_wait(const WriteOp& op) {
    if (broken_) return false;
    std::promise<bool> written;
    auto future = written.get_future();
    auto self = shared_from_this();
    asio::post(stream_.get_executor(), [&written, &op, self] {
      self->stream_.tcp().expires_after(self->state_->options.write_timeout);
      op([&written, self](beast::error_code ec, std::size_t) {
        self->stream_.tcp().expires_never();
        written.set_value(!ec);
      });
    });
    if (!future.get()) broken_ = true;
    return !broken_;
  }

  // ------------------------------------------- a deferred answer's writes

  // Queues `op` (from any thread); a deferred answer's writes run one at a
  // time, in order. Past the cap of queued bytes the client is cut off.
  void queue(WriteOp op, std::size_t bytes, const std::shared_ptr<CancelSignal>& gone) {
    in_order([self = shared_from_this(), op = std::move(op), bytes, gone]() mutable {
      self->enqueue(QueuedWrite{std::move(op), {}, bytes}, gone);
    });
  }

  // Queues one chunk of a streamed answer (from any thread), as `queue`.
  void queue_chunk(std::string_view data, const std::shared_ptr<CancelSignal>& gone) {
    in_order([self = shared_from_this(), data = std::string(data), gone]() mutable {
      const std::size_t bytes = data.size();
      self->enqueue(QueuedWrite{{}, std::move(data), bytes}, gone);
    });
  }

  // Ends a deferred answer once its queued writes are done (or failed).
  void queue_end(int status, bool keep_alive, const std::shared_ptr<CancelSignal>& gone) {
    in_order([self = shared_from_this(), status, keep_alive, gone] {
      self->end_pending_ = true;
      self->end_status_ = status;
      self->end_keep_alive_ = keep_alive;
      self->pump(gone);
    });
  }

  // Watches a connection whose answer is deferred: a client that closes it
  // is gone. (Bytes of a next request end the watch: they wait their turn.)
  void watch_client(std::shared_ptr<CancelSignal> gone) {
    in_order([self = shared_from_this(), gone] { self->watch(gone); });
  }

  std::string refusal_body(int status, std::string_view message) const {
    return state_->refusal(status, message);
  }

 private:
  // ------------------------------------------------------------- reading

  // Runs `next` once the connection can carry HTTP: at once over plain TCP,
  // after the TLS handshake otherwise. The handshake has `deadline` (a
  // served connection's is the request deadline, so a client that stalls
  // in it is cut like one that trickles; a refusal's is kDrainTime).
  void after_handshake(std::function<void()> next, std::chrono::steady_clock::duration deadline) {
    if (!stream_.secure()) return next();
    stream_.tcp().expires_after(deadline);
    idle_ = true;  // a stop ends a handshake as it ends an idle wait
    auto self = shared_from_this();
    stream_.tls().async_handshake(
        asio::ssl::stream_base::server, [self, next = std::move(next)](beast::error_code ec) {
          self->idle_ = false;
          beast::error_code ignored;
          if (ec) {
            self->stream_.tcp().socket().close(ignored);  // nothing HTTP was said: no answer
            return;
          }
          self->stream_.tcp().expires_never();
          next();
        });
  }

  // Waits for the first byte of the next request (the idle timeout), unless
  // bytes of it are already here.
  void wait_for_request() {
    if (skip_empty_lines()) {
      read_head();
      return;
    }
    if (state_->stopping || empty_line_bytes_ > kMostEmptyLineBytes) return close();
    idle_ = true;
    stream_.tcp().expires_after(state_->options.idle_timeout);
    auto self = shared_from_this();
    stream_.async_read_some(buffer_.prepare(4096), [self](beast::error_code ec, std::size_t n) {
      self->idle_ = false;
      if (ec) return self->close();  // closed, idle too long, or stopping
      self->buffer_.commit(n);
      self->wait_for_request();
    });
  }

  // Drops the empty lines before a request line, which a server should
  // ignore (RFC 9112, section 2.2: a client may send one after a POST's
  // body); true when bytes of a request are left. A few only: a client
  // must not keep a connection open on line ends alone.
  bool skip_empty_lines() {
    const char* bytes = static_cast<const char*>(buffer_.data().data());
    std::size_t n = 0;
    while (n < buffer_.size() && (bytes[n] == '\r' || bytes[n] == '\n')) ++n;
    buffer_.consume(n);
    empty_line_bytes_ += n;
    return buffer_.size() > 0 && empty_line_bytes_ <= kMostEmptyLineBytes;
  }

  // The request's deadline starts with its first byte; reading its head
  // and body does not move it. Its own timer, not the stream's, keeps the
  // socket open for the 408 (the stream's timeout closes it).
  void read_head() {
    empty_line_bytes_ = 0;
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(state_->options.max_head_bytes));
    parser_->body_limit(state_->options.max_body_bytes);
    stream_.tcp().expires_never();
    request_timed_out_ = false;
    reading_request_ = true;
    request_timer_.expires_after(state_->options.read_timeout);
    auto self = shared_from_this();
    request_timer_.async_wait([self](beast::error_code ec) {
      // Not once the request arrived or failed: a cancel may come too late
      // to stop a wait that has already fired.
      if (ec || !self->reading_request_) return;
      self->request_timed_out_ = true;
      beast::error_code ignored;
      // Ends the read in flight. With the receiving side shut too, a read
      // begun after this (its predecessor's completion was already queued
      // when the timer fired) fails at once: a trickle cannot outlive the
      // deadline. The 408 still goes out on the sending side.
      self->stream_.tcp().socket().cancel(ignored);
      self->stream_.tcp().socket().shutdown(tcp::socket::shutdown_receive, ignored);
    });
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             [self](beast::error_code ec, std::size_t) { self->head_read(ec); });
  }

  void head_read(beast::error_code ec) {
    if (ec) return read_failed(ec);
    const auto& message = parser_->get();
    if (auto [status, why] = unservable_framing(message); status != 0) {
      reading_request_ = false;
      request_timer_.cancel();
      return refuse(status, why);
    }
    if (parser_->is_done()) return dispatch();
    auto self = shared_from_this();
    // An HTTP/1.0 request's expectation is ignored (RFC 9110, section
    // 10.1.1): such a client would not understand a 1xx answer.
    if (message.version() >= 11 && beast::iequals(message[bhttp::field::expect], "100-continue")) {
      if (!body_wanted()) return dispatch(/*body_read=*/false);
      auto go_on =
          std::make_shared<bhttp::response<bhttp::empty_body>>(bhttp::status::continue_, 11);
      bhttp::async_write(stream_, *go_on, [self, go_on](beast::error_code e, std::size_t) {
        if (e) return self->close();
        self->read_body();
      });
      return;
    }
    read_body();
  }

  void read_body() {
    auto self = shared_from_this();
    bhttp::async_read(stream_, buffer_, *parser_, [self](beast::error_code ec, std::size_t) {
      if (ec) return self->read_failed(ec);
      self->dispatch();
    });
  }

  void read_failed(const beast::error_code& ec) {
    reading_request_ = false;
    request_timer_.cancel();
    if (request_timed_out_) return refuse(408, "the request did not arrive in time");
    if (ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::operation_aborted) {
      return close();
    }
    if (ec == bhttp::error::header_limit && !request_line_ended()) {
      return refuse(414, "request line longer than the head's limit of " +
                             std::to_string(state_->options.max_head_bytes) + " bytes");
    }
    if (ec == bhttp::error::header_limit) {
      return refuse(431, "request head larger than " +
                             std::to_string(state_->options.max_head_bytes) + " bytes");
    }
    if (ec == bhttp::error::body_limit) {
      return refuse(413, "request body larger than " +
                             std::to_string(state_->options.max_body_bytes) + " bytes");
    }
    if (ec == bhttp::error::buffer_overflow) {
      return refuse(400, "a chunk size line or trailer field longer than " +
                             std::to_string(buffer_.max_size()) + " bytes");
    }
    if (ec == asio::error::connection_reset || ec == asio::error::broken_pipe) return close();
    refuse(400, "malformed HTTP request: " + ec.message());
  }

  // Whether the request line ended within the head's limit: a head over
  // the limit whose line did not has a target too long (414, RFC 9110
  // section 15.5.15), not header fields too large (431). Beast takes the
  // line in when its first read of the head holds all of it; otherwise it
  // waits for the whole head and consumes nothing, so the line is still
  // at the buffer's start.
  bool request_line_ended() const {
    if (!parser_->get().target().empty()) return true;
    const auto data = buffer_.data();
    const std::string_view head(static_cast<const char*>(data.data()),
                                std::min(data.size(), state_->options.max_head_bytes));
    return head.find('\n') != std::string_view::npos;
  }

  // ------------------------------------------------------------ answering

  // Whether the options' `wants_body` asks for the body of the request
  // whose head was just read.
  bool body_wanted() const {
    if (!state_->options.wants_body) return true;
    HttpRequest head;
    copy_head(parser_->get(), head);
    return state_->options.wants_body(head);
  }

  // Hands the request to the handler. Without its body (`body_read`
  // false) the connection closes after the answer: the body may still come.
  void dispatch(bool body_read = true) {
    reading_request_ = false;
    request_timer_.cancel();
    auto request = std::make_shared<HttpRequest>();
    auto& message = parser_->get();
    copy_head(message, *request);
    if (body_read) request->body = std::move(message.body());
    request->body_skipped = !body_read;
    // HTTP/1.0 closes after its answer, `Connection: keep-alive` or not: the
    // answer is HTTP/1.1, where keeping alive goes without saying, so a 1.0
    // client asking for it would not be told, and would read to the close.
    const bool keep_alive = body_read && message.keep_alive() && message.version() >= 11;
    http10_ = message.version() < 11;
    parser_.reset();
    if (state_->options.handlers_never_block) return serve_here(*request, keep_alive);
    auto self = shared_from_this();
    if (!state_->submit([self, request, keep_alive] { self->serve(*request, keep_alive); })) {
      refuse(503, "the server is busy: too many requests wait for a worker", "1");
    }
  }

  // On the I/O thread, for handlers that never block: the answer is deferred
  // from the start, so its writes queue, and it ends when the handler
  // returns unless the handler handed it over.
  void serve_here(const HttpRequest& request, bool keep_alive) {
    const bool head_only = request.method == "HEAD";
    std::shared_ptr<HttpResponse> response(
        new HttpResponse(shared_from_this(), keep_alive && !state_->stopping, head_only));
    response->deferred_ = true;
    try {
      state_->handler(request, *response);
    } catch (const std::exception& e) {
      fail_here(*response, e.what());
    } catch (...) {
      fail_here(*response, "unknown exception");
    }
    if (!response->handed_over_) response->finish();
  }

  void fail_here(HttpResponse& response, const std::string& failure) {
    if (response.handed_over_) return;  // its holder answers
    if (response.streaming_) {
      response.broken_ = true;  // half an answer is out: closing is all that is left
      return;
    }
    response.status = 500;
    response.clear_headers();
    response.set_content(state_->refusal(500, "internal error: " + failure), "application/json");
  }

  // On a worker: the handler, then what it left to send.
  void serve(const HttpRequest& request, bool keep_alive) {
    const bool head_only = request.method == "HEAD";
    HttpResponse response(shared_from_this(), keep_alive && !state_->stopping, head_only);
    std::string failure;
    try {
      state_->handler(request, response);
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "unknown exception";
    }
    // A deferred answer is finished by whoever holds it (a handler that
    // threw after handing it over included: its destruction answers).
    if (response.handed_over_) return;
    bool sent = false;
    if (!failure.empty() && !response.streaming_) {
      HttpResponse error(shared_from_this(), response.keep_alive_, head_only);
      error.status = 500;
      error.set_content(state_->refusal(500, "internal error: " + failure), "application/json");
      sent = write_and_wait(whole(error));
      state_->observer(500);
    } else if (failure.empty() && !response.broken_) {
      sent = response.streaming_ ? head_only || write_and_wait(last_chunk())
                                 : write_and_wait(whole(response));
      state_->observer(response.status);
    }
    const bool next = sent && response.keep_alive_;
    auto self = shared_from_this();
    asio::post(stream_.get_executor(), [self, next] {
      if (next) {
        self->wait_for_request();
      } else {
        self->close();
      }
    });
  }

  // Runs `step` on the I/O thread after every step handed over before it,
  // from whichever thread: at once when called there with none waiting (a
  // streamed answer's chunks come from the invoke on this thread), else
  // queued here, in order, for one posted handler that runs the queue (the
  // order of Asio's posts from different threads is not guaranteed).
  template <typename Step>
  void in_order(Step step) {
    std::unique_lock<std::mutex> lock(steps_mutex_);
    if (steps_.empty() && stream_.get_executor().running_in_this_thread()) {
      lock.unlock();
      return step();
    }
    steps_.emplace_back(std::move(step));
    if (steps_posted_) return;
    steps_posted_ = true;
    asio::post(stream_.get_executor(), [self = shared_from_this()] { self->run_steps(); });
  }

  // On the I/O thread: the queued steps, oldest first.
  void run_steps() {
    for (;;) {
      std::function<void()> step;
      {
        std::lock_guard<std::mutex> lock(steps_mutex_);
        if (steps_.empty()) {
          steps_posted_ = false;
          return;
        }
        step = std::move(steps_.front());
        steps_.pop_front();
      }
      step();
    }
  }

  // On the I/O thread: adds a write to the deferred answer's queue. A
  // client with a backlog that would pass its cap, or all connections'
  // queues theirs, is cut off: slow readers must not hold the server's
  // memory. A write to a client that has taken everything so far always
  // goes: an answer larger than the cap is no sign of a slow reader.
  void enqueue(QueuedWrite write, const std::shared_ptr<CancelSignal>& gone) {
    const HttpServerOptions& options = state_->options;
    if (queued_bytes_ > 0 && (queued_bytes_ + write.bytes > options.max_queued_answer_bytes ||
                              state_->queued_answer_bytes.load() + write.bytes >
                                  options.max_queued_answer_bytes_total)) {
      cut_off(gone);
    }
    if (broken_) return;
    set_queued_bytes(queued_bytes_ + write.bytes);
    ops_.push_back(std::move(write));
    pump(gone);
  }

  // Gives up on the client: what it has not taken is dropped at once, so
  // its bytes count no more toward the server's total.
  void cut_off(const std::shared_ptr<CancelSignal>& gone) {
    broken_ = true;
    gone->cancel();
    std::size_t dropped = 0;
    for (const QueuedWrite& op : ops_) dropped += op.bytes;
    ops_.clear();
    set_queued_bytes(queued_bytes_ - dropped);
  }

  // This connection's queued bytes, kept in the server's total too.
  void set_queued_bytes(std::size_t bytes) {
    if (bytes >= queued_bytes_) {
      state_->queued_answer_bytes.fetch_add(bytes - queued_bytes_);
    } else {
      state_->queued_answer_bytes.fetch_sub(queued_bytes_ - bytes);
    }
    queued_bytes_ = bytes;
  }

  // Runs the next queued write of a deferred answer, or its end.
  void pump(const std::shared_ptr<CancelSignal>& gone) {
    if (writing_) return;
    if (!ops_.empty() && !broken_) {
      QueuedWrite next = std::move(ops_.front());
      ops_.pop_front();
      writing_ = true;
      watch_write();
      auto written = [self = shared_from_this(), gone, bytes = next.bytes](beast::error_code ec,
                                                                           std::size_t) {
        self->writing_ = false;
        self->set_queued_bytes(self->queued_bytes_ - bytes);
        if (ec) self->cut_off(gone);
        self->pump(gone);
      };
      if (next.op) return next.op(std::move(written));
      // A chunk: its bytes stay in `writing_chunk_` until written.
      writing_chunk_ = std::move(next.chunk);
      write_chunk(writing_chunk_, std::move(written));
      return;
    }
    if (!end_pending_) return;
    end_pending_ = false;
    ops_.clear();
    set_queued_bytes(0);
    answer_done_ = true;
    state_->observer(end_status_);
    next_after_answer_ = !broken_ && end_keep_alive_;
    if (watching_) {
      // The watch's read must end before the next one starts on the buffer;
      // its handler goes on.
      beast::error_code ignored;
      stream_.tcp().socket().cancel(ignored);
      return;
    }
    after_answer();
  }

  // A deferred answer's writes share one timer, re-armed only when it
  // fires, instead of a deadline set and cleared around each write: a
  // stream's many small writes made that two timer changes per piece, and
  // often two system calls (the write's deadline was the earliest timer).
  void watch_write() {
    write_started_ = std::chrono::steady_clock::now();
    if (!write_watch_armed_) arm_write_watch(write_started_ + state_->options.write_timeout);
  }

  void arm_write_watch(std::chrono::steady_clock::time_point due) {
    write_watch_armed_ = true;
    write_watch_.expires_at(due);
    // Weak: a connection that is done is not kept for the timer's sake.
    write_watch_.async_wait(
        [weak = weak_from_this()](beast::error_code ec) {
          if (auto self = weak.lock()) self->write_watch_fired(ec);
        });
  }

  // A write still in flight a whole write_timeout after it began: the
  // client takes no bytes, so it is cut off (the write ends in an error,
  // whose handler ends the answer).
  void write_watch_fired(beast::error_code ec) {
    write_watch_armed_ = false;
    if (ec || !writing_) return;
    const auto due = write_started_ + state_->options.write_timeout;
    if (std::chrono::steady_clock::now() < due) return arm_write_watch(due);
    beast::error_code ignored;
    stream_.tcp().socket().close(ignored);
  }

  void after_answer() {
    answer_done_ = false;
    if (next_after_answer_) {
      wait_for_request();
    } else {
      close();
    }
  }

  // A read into the request buffer: it ends when the client closes (gone),
  // or when the answer is done and cancels it. Bytes the client sends (a
  // pipelined request, or the line end a client may send after a POST's
  // body) are kept for the next request, and the watch goes on while the
  // buffer has room: a client that sends a byte and then leaves is still
  // seen leaving.
  void watch(std::shared_ptr<CancelSignal> gone) {
    if (answer_done_ || broken_) return;
    if (buffer_.max_size() - buffer_.size() < kWatchReadBytes) return;
    watching_ = true;
    auto self = shared_from_this();
    auto seen = [self, gone](beast::error_code ec, std::size_t n) {
      self->watching_ = false;
      if (n > 0) self->buffer_.commit(n);
      if (ec && ec != asio::error::operation_aborted) gone->cancel();  // closed or reset
      if (self->answer_done_) return self->after_answer();
      if (!ec) self->watch(gone);
    };
    if (!stream_.secure()) {
      // On the socket itself: the stream's write timeouts would end it. (A
      // wait for bytes first would spare the read's first, failed try, but
      // Asio re-arms epoll for a wait: one system call for another.)
      stream_.tcp().socket().async_read_some(buffer_.prepare(kWatchReadBytes), seen);
      return;
    }
    // Under TLS the bytes must be decrypted: wait until some arrive, then
    // read them through TLS (a close_notify or a closed connection: gone).
    stream_.tcp().socket().async_wait(
        tcp::socket::wait_read, [self, seen](beast::error_code ec) mutable {
          if (ec || self->answer_done_) return seen(ec, 0);
          self->stream_.async_read_some(self->buffer_.prepare(kWatchReadBytes), seen);
        });
  }

  // Answers a request refused before any handler saw it, then closes.
  void refuse(int status, const std::string& message, const std::string& retry_after = {}) {
    auto answer = std::make_shared<bhttp::response<bhttp::string_body>>();  // refusal
    answer->result(static_cast<unsigned>(status));
    answer->version(11);
    answer->set(bhttp::field::date, http_date());
    answer->set(bhttp::field::content_type, "application/json");
    if (!retry_after.empty()) answer->set(bhttp::field::retry_after, retry_after);
    answer->keep_alive(false);
    answer->body() = state_->refusal(status, message);
    answer->prepare_payload();
    stream_.tcp().expires_after(state_->options.write_timeout);
    auto self = shared_from_this();
    bhttp::async_write(stream_, *answer, [self, answer, status](beast::error_code, std::size_t) {
      self->state_->observer(status);
      self->close();
    });
  }

  // Closes after draining what the client still sends for a moment. Over
  // TLS a close_notify goes first: without it a client cannot tell the
  // end of an answer that ends at the close (HTTP/1.0's) from a cut one.
  void close() {
    reading_request_ = false;
    request_timer_.cancel();
    drain_deadline_ = std::chrono::steady_clock::now() + kDrainTime;
    if (!stream_.secure()) return close_tcp();
    // One way: marked as if the client's alert had come, OpenSSL's
    // shutdown only sends ours, where Asio's would wait for the client's
    // (which many clients never send). The drain takes what follows. The
    // alert is a write like any other, given write_timeout.
    SSL_set_shutdown(stream_.tls().native_handle(), SSL_RECEIVED_SHUTDOWN);
    stream_.tcp().expires_after(state_->options.write_timeout);
    stream_.tls().async_shutdown(
        [self = shared_from_this()](beast::error_code) { self->close_tcp(); });
  }

  void close_tcp() {
    beast::error_code ignored;
    stream_.tcp().socket().shutdown(tcp::socket::shutdown_send, ignored);
    drain();
  }

  // Reads the socket itself, under TLS too: what comes after the close is
  // dropped unread, encrypted or not.
  void drain() {
    if (!stream_.tcp().socket().is_open() || drained_ >= kMaxDrainBytes ||
        std::chrono::steady_clock::now() >= drain_deadline_) {
      beast::error_code ignored;
      stream_.tcp().socket().close(ignored);
      return;
    }
    stream_.tcp().expires_at(
        std::min(drain_deadline_, std::chrono::steady_clock::now() + kDrainQuiet));
    auto self = shared_from_this();
    stream_.tcp().async_read_some(asio::buffer(scratch_),
                                  [self](beast::error_code ec, std::size_t n) {
                                    self->drained_ += n;
                                    if (ec) {
                                      beast::error_code ignored;
                                      self->stream_.tcp().socket().close(ignored);
                                      return;
                                    }
                                    self->drain();
                                  });
  }

  std::shared_ptr<HttpServer::State> state_;
  openai::AnyStream stream_;  // plain or TLS, chosen at accept
  beast::flat_buffer buffer_;
  // Line ends skipped before the next request line (skip_empty_lines).
  static constexpr std::size_t kMostEmptyLineBytes = 8;
  std::size_t empty_line_bytes_ = 0;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  openai::AnyStream::Timer request_timer_;
  bool request_timed_out_ = false;
  bool reading_request_ = false;  // between a request's first byte and its dispatch
  bool idle_ = false;
  // A deferred answer's queued writes and end.
  std::deque<QueuedWrite> ops_;
  std::string writing_chunk_;  // the chunk being written
  // The deadline of the write in flight (see watch_write).
  openai::AnyStream::Timer write_watch_;
  std::chrono::steady_clock::time_point write_started_;
  bool write_watch_armed_ = false;
  // The steps `in_order` queued for the I/O thread.
  std::mutex steps_mutex_;
  std::deque<std::function<void()>> steps_;
  bool steps_posted_ = false;
  std::size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool http10_ = false;  // the request being answered is HTTP/1.0
  bool end_pending_ = false;
  int end_status_ = 0;
  bool end_keep_alive_ = false;
  bool answer_done_ = false;
  bool next_after_answer_ = false;
  bool watching_ = false;
  std::atomic<bool> broken_{false};
  std::chrono::steady_clock::time_point drain_deadline_;
  std::size_t drained_ = 0;
  bool refused_at_cap_ = false;  // counted in State::refusing
  char scratch_[16 * 1024];
};

// ------------------------------------------------------------ HttpResponse

void HttpResponse::set_header(std::string_view name, std::string_view value) {
  // Room for a routed answer's headers at once, not several regrowths.
  if (header_at_.empty()) {
    header_at_.reserve(16);
    header_text_.reserve(512);
  }
  header_at_.push_back({header_text_.size(), name.size(), value.size()});
  header_text_.append(name).append(value);
}

void HttpResponse::set_content(std::string body, std::string_view content_type) {
  body_ = std::move(body);
  content_type_ = std::string(content_type);
}

bool HttpResponse::start_stream(std::string_view content_type) {
  streaming_ = true;
  if (session_->http10()) keep_alive_ = false;  // its end is the connection's
  if (deferred_) {
    session_->queue(session_->stream_head(*this, content_type), 0, gone_);
    return !gone_->cancelled();
  }
  if (broken_) return false;
  if (!session_->write_and_wait(session_->stream_head(*this, content_type))) broken_ = true;
  return !broken_;
}

bool HttpResponse::write(std::string_view data) {
  if (deferred_) {
    if (!data.empty() && !head_only_) {
      session_->queue_chunk(data, gone_);
    }
    return !gone_->cancelled();
  }
  if (broken_) return false;
  if (data.empty() || head_only_) return true;
  if (!session_->write_and_wait(session_->chunk(std::make_shared<const std::string>(data)))) {
    broken_ = true;
  }
  return !broken_;
}

std::shared_ptr<HttpResponse> HttpResponse::defer() {
  std::shared_ptr<HttpResponse> later(new HttpResponse(session_, keep_alive_, head_only_));
  later->status = status;
  // This one is handed over: nothing of it is sent but through `later`.
  later->header_text_ = std::move(header_text_);
  later->header_at_ = std::move(header_at_);
  later->content_type_ = std::move(content_type_);
  later->body_ = std::move(body_);
  later->deferred_ = true;
  later->gone_ = gone_;
  handed_over_ = true;
  session_->watch_client(gone_);
  return later;
}

void HttpResponse::abort() {
  broken_ = true;
  if (deferred_) finish();
}

void HttpResponse::finish() {
  if (!deferred_ || finished_) return;
  finished_ = true;
  if (broken_) {
    session_->queue_end(status, false, gone_);
    return;
  }
  if (!streaming_) {
    const std::size_t bytes = body_.size();  // before `whole` takes the body
    session_->queue(session_->whole(*this), bytes, gone_);
  } else if (!head_only_) {
    session_->queue(session_->last_chunk(), 0, gone_);
  }
  session_->queue_end(status, keep_alive_, gone_);
}

HttpResponse::~HttpResponse() {
  if (!deferred_ || finished_ || handed_over_) return;
  // Dropped unfinished: a cut stream, or a 500 in place of the answer.
  if (streaming_) {
    broken_ = true;
  } else {
    status = 500;
    set_content(session_->refusal_body(500, "internal error: the answer was dropped"),
                "application/json");
  }
  finish();
}

// -------------------------------------------------------------- HttpServer

namespace {

void accept_next(const std::shared_ptr<HttpServer::State>& state) {
  state->acceptor.async_accept(
      // Spread over the I/O threads. No strand: each context has one thread,
      // which runs a connection's handlers one at a time.
      state->io->impl().next_context(),
      [state](beast::error_code ec, openai::AnyStream::Socket socket) {
        if (state->stopping || !state->acceptor.is_open()) return state->accept_ended();
        if (ec) {
          // Out of descriptors or memory: wait for connections to close.
          auto timer = std::make_shared<asio::steady_timer>(state->acceptor.get_executor(),
                                                            milliseconds(10));
          timer->async_wait([state, timer](beast::error_code) { accept_next(state); });
          return;
        }
        // Without it, Nagle's algorithm holds an answer's second write
        // (its body after its head, a stream's next chunk) until the client
        // acknowledges the first, which a client delays for 40 ms: every
        // answer after the first on a kept-alive connection waited so long.
        beast::error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        auto session = std::make_shared<HttpSession>(state, std::move(socket));
        switch (session->entry()) {
          case HttpSession::Entry::serve:
            session->start();
            break;
          case HttpSession::Entry::refuse:
            session->refuse_now(503, "the server is busy: too many open connections", "1");
            break;
          case HttpSession::Entry::drop:
            break;  // closed as the session goes: its descriptor is worth more than its 503
        }
        accept_next(state);
      });
}

}  // namespace

HttpServer::HttpServer(HttpServerOptions options, HttpHandler handler, HttpRefusalWriter refusal,
                       HttpObserver observer)
    : state_(std::make_shared<State>(options, std::move(handler), std::move(refusal),
                                     std::move(observer))) {}

HttpServer::~HttpServer() { stop(); }

namespace {

// The TLS context of a listener: TLS 1.2 and later, the certificate chain
// and key from PEM files; null with `error` when they cannot be used.
std::unique_ptr<asio::ssl::context> tls_context(const HttpServerOptions& options,
                                                std::string& error) {
  auto context = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_server);
  context->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                       asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                       asio::ssl::context::no_tlsv1_1 | asio::ssl::context::single_dh_use);
  beast::error_code ec;
  context->use_certificate_chain_file(options.tls_cert_file, ec);
  if (ec) {
    error = "cannot use TLS certificate " + options.tls_cert_file + ": " + ec.message();
    return nullptr;
  }
  context->use_private_key_file(options.tls_key_file, asio::ssl::context::pem, ec);
  if (ec) {
    error = "cannot use TLS key " + options.tls_key_file + ": " + ec.message();
    return nullptr;
  }
  return context;
}

}  // namespace

int HttpServer::bind(const std::string& host, int port, std::string& error) {
  if (!state_->options.tls_cert_file.empty()) {
    state_->tls = tls_context(state_->options, error);
    if (!state_->tls) return -1;
  }
  beast::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) {
    error = "not an IP address: " + host;
    return -1;
  }
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
  auto& acceptor = state_->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    error = ec.message();
    acceptor.close(ec);
    return -1;
  }
  return acceptor.local_endpoint().port();
}

void HttpServer::run() {
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (state_->stopping || !state_->acceptor.is_open() || state_->in_run) return;
    state_->in_run = true;
    const std::size_t workers = state_->options.handlers_never_block ? 0 : state_->options.threads;
    for (std::size_t i = 0; i < workers; ++i) {
      state_->workers.emplace_back([state = state_] { state->work(); });
    }
  }
  running_ = true;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->accepting = true;
  }
  asio::post(state_->acceptor.get_executor(), [state = state_] { accept_next(state); });
  std::unique_lock<std::mutex> lock(state_->mutex);
  state_->changed.wait(lock, [this] { return state_->stopping && state_->sessions.empty(); });
  running_ = false;
  state_->workers_stop = true;
  state_->wake_worker.notify_all();
  std::vector<std::thread> workers = std::move(state_->workers);
  lock.unlock();
  for (auto& worker : workers) worker.join();
  lock.lock();
  state_->in_run = false;
  state_->changed.notify_all();
}

void HttpServer::stop() {
  {
    // Under the lock run() reads the acceptor with: it either sees
    // `stopping` and leaves the acceptor alone, or has read it before the
    // close posted below.
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->stopping = true;
  }
  std::promise<void> closed;
  asio::post(state_->acceptor.get_executor(), [this, &closed] {
    beast::error_code ignored;
    state_->acceptor.close(ignored);
    closed.set_value();
  });
  closed.get_future().wait();
  // Ends connections that wait for a request; answers in progress finish.
  // The sessions are held outside the lock: dropping the last hold of one
  // runs its destructor, which takes the lock.
  std::vector<std::shared_ptr<HttpSession>> open;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    for (HttpSession* session : state_->sessions) {
      // One whose last holder let go waits on the lock to leave the set.
      if (auto alive = session->weak_from_this().lock()) open.push_back(std::move(alive));
    }
  }
  for (auto& session : open) session->stop_if_idle();
  open.clear();
  std::unique_lock<std::mutex> lock(state_->mutex);
  state_->changed.notify_all();
  state_->changed.wait(
      lock, [this] { return !state_->in_run && !state_->accepting && state_->sessions.empty(); });
}

}  // namespace torouter::server
