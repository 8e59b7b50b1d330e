// http_wire.hpp: HTTP/1.1 over plain sockets, lean enough that a routed
// request costs a few system calls: one send per message, one recv per
// arrival, no poll before each read or write (blocking sockets with
// SO_RCVTIMEO / SO_SNDTIMEO carry the timeouts). Used by torouter-server's
// listener and the stand-in upstream; upstream calls go through Boost.Beast
// (http_client.hpp).
//
// Parsing is strict where laxness lets one message be read two ways
// (Content-Length with Transfer-Encoding, two different Content-Lengths,
// folded header lines): those are malformed.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace torouter::openai::http {

using Clock = std::chrono::steady_clock;

/// An owned socket descriptor, closed when destroyed.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() { close(); }
  Socket(Socket&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Socket& operator=(Socket&& other) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  int fd() const { return fd_; }
  bool is_open() const { return fd_ >= 0; }
  void close();

 private:
  int fd_ = -1;
};

/// Sets the socket's receive and send timeouts (below 1 ms: 1 ms, as the
/// system's 0 would mean waiting forever) and turns Nagle's algorithm off;
/// false when the system refuses.
bool configure_socket(int fd, std::chrono::milliseconds receive_timeout,
                      std::chrono::milliseconds send_timeout);

/// A connection to host:port opened within `timeout`, blocking, with
/// TCP_NODELAY; on failure an empty socket and `error` says why
/// (`timed_out` tells a timeout apart).
Socket connect_to(const std::string& host, const std::string& port,
                  std::chrono::milliseconds timeout, std::string& error, bool& timed_out);

/// A listening socket bound to host:port (port "0": a free one); on failure
/// an empty socket and `error` says why.
Socket listen_on(const std::string& host, const std::string& port, std::string& error);

/// The port a bound socket has, or -1.
int local_port(int fd);

/// How a read or write ended.
enum class IoStatus {
  Ok,
  Closed,     ///< the peer closed the connection
  Timeout,    ///< nothing arrived (or could be sent) in time, or the deadline passed
  Failed,     ///< a socket error (reset, broken pipe)
  TooLarge,   ///< over the caller's size limit
  Malformed,  ///< not HTTP/1.x as RFC 9112 writes it
  Stopped,    ///< the caller's piece handler asked to stop
};

/// Sends all of `data`. A send the socket's timeout interrupts is retried
/// until `deadline` (pass a past time to give up at the first timeout).
IoStatus send_all(int fd, std::string_view data, Clock::time_point deadline);

/// One header field, its value without the surrounding white space.
struct Header {
  std::string name;
  std::string value;
};

/// The start line and header fields of a request or a response.
struct MessageHead {
  std::string method;  // requests
  std::string target;  // requests: "/v1/models?x=1"
  int status = 0;      // responses
  int minor_version = 1;
  std::vector<Header> headers;

  /// The value of the first field named `name` (any case), or empty.
  std::string_view header(std::string_view name) const;
  bool has_header(std::string_view name) const;
  /// Whether the connection stays open after this message (HTTP/1.1 unless
  /// "Connection: close"; HTTP/1.0 only with "Connection: keep-alive").
  bool keeps_alive() const;
  /// The target without its query string.
  std::string_view path() const;
};

/// What `parse_head` made of its text: a whole head, the start of one, or
/// something that is not HTTP/1.x (or has more than 128 fields).
enum class ParseStatus { Done, Incomplete, Malformed };

/// Parses the head at the start of `text` (up to and including its empty
/// line): a request line when `is_request`, else a status line. On Done,
/// `used` is the head's length in bytes.
ParseStatus parse_head(std::string_view text, bool is_request, MessageHead& head,
                       std::size_t& used);

/// How a message's body is delimited.
struct BodyFraming {
  enum class Kind { None, Length, Chunked, UntilClose } kind = Kind::None;
  std::uint64_t length = 0;  // for Length
};

/// The framing of a request's body (RFC 9112 section 6.3); false when the
/// fields contradict each other, a length is not a number, or the last
/// transfer coding is not chunked.
bool request_framing(const MessageHead& head, BodyFraming& framing);
/// The framing of a response's body to a POST.
bool response_framing(const MessageHead& head, BodyFraming& framing);

/// Decodes a chunked body incrementally: `feed` hands each piece of data to
/// `on_piece` and says how much of `input` it used. Its lines must end in
/// CRLF (a bare LF is how a request gets read two ways behind a proxy), a
/// size line may not exceed 4 KiB nor the trailer 64 KiB.
class ChunkedDecoder {
 public:
  enum class Result { NeedMore, Done, Malformed, Stopped };
  /// Consumes a prefix of `input` (its length goes to `used`).
  Result feed(std::string_view input, std::size_t& used,
              const std::function<bool(std::string_view)>& on_piece);
  void reset() { *this = ChunkedDecoder(); }

 private:
  enum class State { Size, Data, DataEnd, Trailer } state_ = State::Size;
  std::uint64_t remaining_ = 0;
  std::size_t trailer_bytes_ = 0;
};

/// What a receive timeout (the socket's SO_RCVTIMEO) does to a read.
enum class OnReceiveTimeout {
  /// Ends it with `Timeout`: the timeout is the longest wait between two
  /// arrivals (a client waiting for its upstream).
  Fail,
  /// Waits again, until the read's deadline, once part of the message has
  /// arrived; before that the connection is idle, and it ends (a server
  /// whose receive timeout is its keep-alive timeout).
  WaitToDeadline,
};

/// Reads HTTP messages from a socket through one buffer that a connection
/// keeps, so bytes of the next pipelined message are not lost. Every read
/// ends by its deadline, however the bytes trickle in.
class Reader {
 public:
  explicit Reader(int fd = -1, OnReceiveTimeout on_timeout = OnReceiveTimeout::Fail)
      : fd_(fd), on_timeout_(on_timeout) {}
  /// A new connection: the buffer is emptied.
  void reset(int fd);
  /// Bytes received and not yet consumed.
  std::size_t buffered() const { return end_ - begin_; }

  /// Reads one head of at most `max_bytes`, by `deadline`.
  IoStatus read_head(bool is_request, MessageHead& head, std::size_t max_bytes,
                     Clock::time_point deadline);
  /// Reads a body of the given framing by `deadline`, handing its data to
  /// `on_piece` (false stops with `Stopped`); more than `max_bytes` of data
  /// is `TooLarge`.
  IoStatus read_body(const BodyFraming& framing, std::uint64_t max_bytes,
                     Clock::time_point deadline,
                     const std::function<bool(std::string_view)>& on_piece);

 private:
  bool waits_through_timeouts() const { return on_timeout_ == OnReceiveTimeout::WaitToDeadline; }
  // One receive into the buffer; `patient` waits through receive timeouts.
  IoStatus fill(Clock::time_point deadline, bool patient);

  int fd_;
  OnReceiveTimeout on_timeout_;
  std::vector<char> buffer_;
  std::size_t begin_ = 0;    // first unconsumed byte
  std::size_t end_ = 0;      // one past the last received byte
  std::size_t scanned_ = 0;  // head bytes already searched for the empty line
};

/// ASCII comparison that ignores case, as HTTP compares field names and tokens.
bool equal_ignoring_case(std::string_view a, std::string_view b);

/// The reason phrase of a status code ("Not Found"), "Unknown" if not known.
std::string_view reason_phrase(int status);

/// Appends "HTTP/1.1 <status> <reason>\r\n" to `out`.
void append_status_line(std::string& out, int status);
/// Appends "<name>: <value>\r\n"; CR and LF in either are dropped, so a
/// value cannot start a field of its own.
void append_header(std::string& out, std::string_view name, std::string_view value);
/// Appends one chunk of a chunked body ("<hex size>\r\n<data>\r\n").
void append_chunk(std::string& out, std::string_view data);

}  // namespace torouter::openai::http
