// http_wire.cpp: sockets, HTTP/1.1 heads, body framing and chunked coding
// (see http_wire.hpp).
#include "http_wire.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

namespace torouter::openai::http {

namespace {

constexpr std::size_t kReadSize = 16 * 1024;
constexpr std::size_t kMaxHeaders = 128;
constexpr std::size_t kMaxChunkLine = 4096;
constexpr std::size_t kMaxTrailerBytes = 64 * 1024;

bool is_token_char(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_token(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), is_token_char);
}

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// Whether the comma-separated list `value` holds `token` (any case).
bool list_has(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    const auto comma = value.find(',');
    std::string_view item = value.substr(0, comma);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (equal_ignoring_case(item, token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

// The value of the last field named `name`, or empty.
std::string_view last_field(const MessageHead& head, std::string_view name) {
  std::string_view value;
  for (const Header& h : head.headers) {
    if (equal_ignoring_case(h.name, name)) value = h.value;
  }
  return value;
}

// The last entry of a comma-separated list, trimmed.
std::string_view last_list_item(std::string_view value) {
  const auto comma = value.rfind(',');
  std::string_view item = comma == std::string_view::npos ? value : value.substr(comma + 1);
  while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
  while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
  return item;
}

bool parse_decimal(std::string_view text, std::uint64_t& value) {
  if (text.empty() || text.size() > 18) return false;
  value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return true;
}

// "HTTP/1.0" or "HTTP/1.1" as its minor version, else -1.
int http1_minor_version(std::string_view text) {
  if (text.size() != 8 || text.substr(0, 7) != "HTTP/1.") return -1;
  return text[7] == '0' ? 0 : text[7] == '1' ? 1 : -1;
}

bool parse_request_line(std::string_view line, MessageHead& head) {
  const auto first = line.find(' ');
  if (first == std::string_view::npos) return false;
  const auto second = line.find(' ', first + 1);
  if (second == std::string_view::npos) return false;
  const std::string_view method = line.substr(0, first);
  const std::string_view target = line.substr(first + 1, second - first - 1);
  head.minor_version = http1_minor_version(line.substr(second + 1));
  if (!is_token(method) || target.empty() || head.minor_version < 0) return false;
  for (char c : target) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return false;
  }
  head.method.assign(method);
  head.target.assign(target);
  return true;
}

bool parse_status_line(std::string_view line, MessageHead& head) {
  if (line.size() < 12 || line[8] != ' ') return false;
  head.minor_version = http1_minor_version(line.substr(0, 8));
  if (head.minor_version < 0) return false;
  const std::string_view code = line.substr(9, 3);
  if (!std::all_of(code.begin(), code.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  if (line.size() > 12 && line[12] != ' ') return false;
  head.status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
  return head.status >= 100;
}

bool parse_field_line(std::string_view line, MessageHead& head) {
  const auto colon = line.find(':');
  if (colon == std::string_view::npos) return false;
  const std::string_view name = line.substr(0, colon);
  if (!is_token(name)) return false;  // also refuses folded lines and "name :"
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  for (char c : value) {
    if (c == '\0' || c == '\r' || c == '\n') return false;
  }
  if (head.headers.size() >= kMaxHeaders) return false;
  head.headers.push_back(Header{std::string(name), std::string(value)});
  return true;
}

// The Content-Length of `head`: true with has_length false when absent;
// false when present twice with different values or not a number.
bool content_length(const MessageHead& head, bool& has_length, std::uint64_t& length) {
  has_length = false;
  for (const Header& h : head.headers) {
    if (!equal_ignoring_case(h.name, "content-length")) continue;
    std::uint64_t value = 0;
    if (!parse_decimal(h.value, value)) return false;
    if (has_length && value != length) return false;
    has_length = true;
    length = value;
  }
  return true;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::chrono::milliseconds remaining(Clock::time_point deadline) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
}

}  // namespace

bool equal_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

Socket& Socket::operator=(Socket&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

void Socket::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool configure_socket(int fd, std::chrono::milliseconds receive_timeout,
                      std::chrono::milliseconds send_timeout) {
  auto to_timeval = [](std::chrono::milliseconds ms) {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
    return tv;
  };
  const auto at_least_1ms = [](std::chrono::milliseconds ms) {
    return std::max(ms, std::chrono::milliseconds(1));
  };
  const timeval receive = to_timeval(at_least_1ms(receive_timeout));
  const timeval send = to_timeval(at_least_1ms(send_timeout));
  const int one = 1;
  return ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &receive, sizeof receive) == 0 &&
         ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send, sizeof send) == 0 &&
         ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0;
}

namespace {

struct FreeAddresses {
  void operator()(addrinfo* list) const { ::freeaddrinfo(list); }
};
using Addresses = std::unique_ptr<addrinfo, FreeAddresses>;

// The stream addresses of host:port (`passive`: to listen on); empty with
// `error` set when the name does not resolve.
Addresses resolve(const std::string& host, const std::string& port, bool passive,
                  std::string& error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    error = std::string("cannot resolve ") + host + ": " + ::gai_strerror(rc);
    return Addresses();
  }
  error = "no address for " + host;
  return Addresses(found);
}

}  // namespace

Socket connect_to(const std::string& host, const std::string& port,
                  std::chrono::milliseconds timeout, std::string& error, bool& timed_out) {
  timed_out = false;
  const Clock::time_point deadline = Clock::now() + timeout;
  const Addresses found = resolve(host, port, false, error);
  for (addrinfo* a = found.get(); a != nullptr; a = a->ai_next) {
    Socket socket(
        ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    if (!socket.is_open()) continue;
    int rc = ::connect(socket.fd(), a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{socket.fd(), POLLOUT, 0};
      const auto wait = remaining(deadline);
      rc = wait.count() > 0 ? ::poll(&p, 1, static_cast<int>(wait.count())) : 0;
      if (rc == 0) {
        timed_out = true;
        error = "connection timed out";
        continue;
      }
      int socket_error = 0;
      socklen_t length = sizeof socket_error;
      if (rc < 0 || ::getsockopt(socket.fd(), SOL_SOCKET, SO_ERROR, &socket_error, &length) != 0) {
        socket_error = errno;
      }
      if (socket_error != 0) errno = socket_error;
      rc = socket_error == 0 ? 0 : -1;
    }
    if (rc != 0) {
      error = std::strerror(errno);
      continue;
    }
    const int flags = ::fcntl(socket.fd(), F_GETFL);
    if (flags < 0 || ::fcntl(socket.fd(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
      error = std::strerror(errno);
      continue;
    }
    timed_out = false;
    error.clear();
    return socket;
  }
  return Socket();
}

Socket listen_on(const std::string& host, const std::string& port, std::string& error) {
  const Addresses found = resolve(host, port, true, error);
  for (addrinfo* a = found.get(); a != nullptr; a = a->ai_next) {
    Socket socket(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!socket.is_open()) continue;
    const int one = 1;
    ::setsockopt(socket.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(socket.fd(), a->ai_addr, a->ai_addrlen) != 0 ||
        ::listen(socket.fd(), SOMAXCONN) != 0) {
      error = std::strerror(errno);
      continue;
    }
    error.clear();
    return socket;
  }
  return Socket();
}

int local_port(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof address;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return -1;
  if (address.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
  }
  if (address.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
  }
  return -1;
}

IoStatus send_all(int fd, std::string_view data, Clock::time_point deadline) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (Clock::now() >= deadline) return IoStatus::Timeout;
      continue;
    }
    return IoStatus::Failed;
  }
  return IoStatus::Ok;
}

std::string_view MessageHead::header(std::string_view name) const {
  for (const Header& h : headers) {
    if (equal_ignoring_case(h.name, name)) return h.value;
  }
  return {};
}

bool MessageHead::has_header(std::string_view name) const {
  for (const Header& h : headers) {
    if (equal_ignoring_case(h.name, name)) return true;
  }
  return false;
}

bool MessageHead::keeps_alive() const {
  const std::string_view connection = header("connection");
  if (list_has(connection, "close")) return false;
  return minor_version >= 1 || list_has(connection, "keep-alive");
}

std::string_view MessageHead::path() const {
  const std::string_view t(target);
  return t.substr(0, t.find('?'));
}

ParseStatus parse_head(std::string_view text, bool is_request, MessageHead& head,
                       std::size_t& used) {
  head.method.clear();
  head.target.clear();
  head.status = 0;
  head.headers.clear();
  std::size_t pos = 0;
  bool first = true;
  for (;;) {
    const auto newline = text.find('\n', pos);
    if (newline == std::string_view::npos) return ParseStatus::Incomplete;
    std::string_view line = text.substr(pos, newline - pos);
    pos = newline + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (first) {
      // A few empty lines before a request line are allowed (RFC 9112 2.2).
      if (line.empty() && is_request && pos <= 8) continue;
      const bool ok = is_request ? parse_request_line(line, head) : parse_status_line(line, head);
      if (!ok) return ParseStatus::Malformed;
      first = false;
      continue;
    }
    if (line.empty()) {
      used = pos;
      return ParseStatus::Done;
    }
    if (!parse_field_line(line, head)) return ParseStatus::Malformed;
  }
}

bool request_framing(const MessageHead& head, BodyFraming& framing) {
  bool has_length = false;
  std::uint64_t length = 0;
  if (!content_length(head, has_length, length)) return false;
  if (head.has_header("transfer-encoding")) {
    // Both framings at once is how requests get smuggled: refuse it. The
    // codings of every Transfer-Encoding field add up; chunked must be last.
    const std::string_view last = last_list_item(last_field(head, "transfer-encoding"));
    if (has_length || !equal_ignoring_case(last, "chunked")) return false;
    framing.kind = BodyFraming::Kind::Chunked;
    return true;
  }
  framing.kind = has_length ? BodyFraming::Kind::Length : BodyFraming::Kind::None;
  framing.length = has_length ? length : 0;
  return true;
}

bool response_framing(const MessageHead& head, BodyFraming& framing) {
  if (head.status < 200 || head.status == 204 || head.status == 304) {
    framing.kind = BodyFraming::Kind::None;
    return true;
  }
  bool has_length = false;
  std::uint64_t length = 0;
  const bool length_ok = content_length(head, has_length, length);
  if (head.has_header("transfer-encoding")) {
    framing.kind =
        equal_ignoring_case(last_list_item(last_field(head, "transfer-encoding")), "chunked")
            ? BodyFraming::Kind::Chunked
            : BodyFraming::Kind::UntilClose;
    return true;
  }
  if (!length_ok) return false;
  framing.kind = has_length ? BodyFraming::Kind::Length : BodyFraming::Kind::UntilClose;
  framing.length = length;
  return true;
}

ChunkedDecoder::Result ChunkedDecoder::feed(std::string_view input, std::size_t& used,
                                            const std::function<bool(std::string_view)>& on_piece) {
  used = 0;
  for (;;) {
    const std::string_view rest = input.substr(used);
    if (state_ == State::Data) {
      if (rest.empty()) return Result::NeedMore;
      const std::size_t take =
          static_cast<std::size_t>(std::min<std::uint64_t>(remaining_, rest.size()));
      used += take;
      remaining_ -= take;
      if (remaining_ == 0) state_ = State::DataEnd;
      if (!on_piece(rest.substr(0, take))) return Result::Stopped;
      continue;
    }
    const auto newline = rest.find('\n');
    if (newline == std::string_view::npos) {
      return rest.size() > kMaxChunkLine ? Result::Malformed : Result::NeedMore;
    }
    if (newline > kMaxChunkLine) return Result::Malformed;
    std::string_view line = rest.substr(0, newline);
    used += newline + 1;
    if (line.empty() || line.back() != '\r') return Result::Malformed;  // a bare LF
    line.remove_suffix(1);
    for (char c : line) {
      const auto u = static_cast<unsigned char>(c);
      if ((u < 0x20 && c != '\t') || u == 0x7f) return Result::Malformed;
    }
    switch (state_) {
      case State::Size: {
        // "<hex>[;extension...]"; extensions carry nothing we use.
        const std::string_view digits = line.substr(0, line.find(';'));
        std::size_t n = 0;
        std::uint64_t size = 0;
        for (; n < digits.size() && hex_digit(digits[n]) >= 0; ++n) {
          if (n >= 15) return Result::Malformed;
          size = size * 16 + static_cast<std::uint64_t>(hex_digit(digits[n]));
        }
        std::string_view after = digits.substr(n);
        while (!after.empty() && (after.front() == ' ' || after.front() == '\t'))
          after.remove_prefix(1);
        if (n == 0 || !after.empty()) return Result::Malformed;
        remaining_ = size;
        state_ = size == 0 ? State::Trailer : State::Data;
        break;
      }
      case State::DataEnd:
        if (!line.empty()) return Result::Malformed;
        state_ = State::Size;
        break;
      case State::Trailer:
        if (line.empty()) return Result::Done;  // trailer fields are ignored
        trailer_bytes_ += line.size() + 2;
        if (trailer_bytes_ > kMaxTrailerBytes) return Result::Malformed;
        break;
      case State::Data:
        break;  // handled above
    }
  }
}

void Reader::reset(int fd) {  // keeps on_timeout_
  fd_ = fd;
  begin_ = end_ = scanned_ = 0;
}

IoStatus Reader::fill(Clock::time_point deadline, bool patient) {
  if (begin_ == end_) {
    begin_ = end_ = 0;
  } else if (begin_ > 0 && buffer_.size() - end_ < kReadSize) {
    std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  if (buffer_.size() - end_ < kReadSize) buffer_.resize(end_ + kReadSize);
  for (;;) {
    // Checked before each receive, so bytes that trickle in one at a time
    // cannot hold a read past its deadline.
    if (Clock::now() >= deadline) return IoStatus::Timeout;
    const ssize_t n = ::recv(fd_, buffer_.data() + end_, buffer_.size() - end_, 0);
    if (n > 0) {
      end_ += static_cast<std::size_t>(n);
      return IoStatus::Ok;
    }
    if (n == 0) return IoStatus::Closed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!patient) return IoStatus::Timeout;
      continue;
    }
    return IoStatus::Failed;
  }
}

IoStatus Reader::read_head(bool is_request, MessageHead& head, std::size_t max_bytes,
                           Clock::time_point deadline) {
  scanned_ = 0;
  for (;;) {
    const std::string_view data(buffer_.data() + begin_, end_ - begin_);
    // Parse only once the empty line that ends the head is here.
    const std::size_t from = scanned_ > 3 ? scanned_ - 3 : 0;
    const auto blank = data.find("\n\r\n", from);
    const auto bare = data.find("\n\n", from);
    if (blank != std::string_view::npos || bare != std::string_view::npos) {
      std::size_t used = 0;
      const ParseStatus parsed = parse_head(data, is_request, head, used);
      if (parsed == ParseStatus::Done) {
        if (used > max_bytes) return IoStatus::TooLarge;
        begin_ += used;
        return IoStatus::Ok;
      }
      if (parsed == ParseStatus::Malformed) return IoStatus::Malformed;
    }
    scanned_ = data.size();
    if (data.size() > max_bytes) return IoStatus::TooLarge;
    // Nothing of the head yet: an idle connection, which a receive timeout ends.
    const bool patient = waits_through_timeouts() && buffered() > 0;
    const IoStatus status = fill(deadline, patient);
    if (status != IoStatus::Ok) return status;
  }
}

IoStatus Reader::read_body(const BodyFraming& framing, std::uint64_t max_bytes,
                           Clock::time_point deadline,
                           const std::function<bool(std::string_view)>& on_piece) {
  using Kind = BodyFraming::Kind;
  if (framing.kind == Kind::None) return IoStatus::Ok;
  if (framing.kind == Kind::Length) {
    if (framing.length > max_bytes) return IoStatus::TooLarge;
    std::uint64_t left = framing.length;
    while (left > 0) {
      if (buffered() == 0) {
        const IoStatus status = fill(deadline, waits_through_timeouts());
        if (status == IoStatus::Closed) return IoStatus::Failed;  // cut short
        if (status != IoStatus::Ok) return status;
      }
      const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(left, buffered()));
      const std::string_view piece(buffer_.data() + begin_, take);
      begin_ += take;
      left -= take;
      if (!on_piece(piece)) return IoStatus::Stopped;
    }
    return IoStatus::Ok;
  }
  if (framing.kind == Kind::UntilClose) {
    std::uint64_t total = 0;
    for (;;) {
      if (buffered() > 0) {
        const std::string_view piece(buffer_.data() + begin_, buffered());
        total += piece.size();
        begin_ = end_;
        if (total > max_bytes) return IoStatus::TooLarge;
        if (!on_piece(piece)) return IoStatus::Stopped;
      }
      const IoStatus status = fill(deadline, waits_through_timeouts());
      if (status == IoStatus::Closed) return IoStatus::Ok;
      if (status != IoStatus::Ok) return status;
    }
  }
  ChunkedDecoder decoder;
  std::uint64_t total = 0;
  const std::function<bool(std::string_view)> counted = [&](std::string_view piece) {
    total += piece.size();
    return total <= max_bytes && on_piece(piece);
  };
  for (;;) {
    if (buffered() > 0) {
      std::size_t used = 0;
      const auto result =
          decoder.feed(std::string_view(buffer_.data() + begin_, buffered()), used, counted);
      begin_ += used;
      if (result == ChunkedDecoder::Result::Done) return IoStatus::Ok;
      if (result == ChunkedDecoder::Result::Malformed) return IoStatus::Malformed;
      if (result == ChunkedDecoder::Result::Stopped) {
        return total > max_bytes ? IoStatus::TooLarge : IoStatus::Stopped;
      }
    }
    const IoStatus status = fill(deadline, waits_through_timeouts());
    if (status == IoStatus::Closed) return IoStatus::Failed;  // cut short
    if (status != IoStatus::Ok) return status;
  }
}

std::string_view reason_phrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Unknown";
  }
}

void append_status_line(std::string& out, int status) {
  out += "HTTP/1.1 ";
  out += std::to_string(status);
  out.push_back(' ');
  out += reason_phrase(status);
  out += "\r\n";
}

void append_header(std::string& out, std::string_view name, std::string_view value) {
  auto append_clean = [&out](std::string_view text) {
    // Almost every name and value is clean: two memchr scans, one append.
    if (text.find('\r') == std::string_view::npos && text.find('\n') == std::string_view::npos) {
      out.append(text);
      return;
    }
    for (char c : text) {
      if (c != '\r' && c != '\n') out.push_back(c);
    }
  };
  append_clean(name);
  out += ": ";
  append_clean(value);
  out += "\r\n";
}

void append_chunk(std::string& out, std::string_view data) {
  if (data.empty()) return;  // an empty chunk would end the body
  char size[20];
  const int n = std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  out.append(size, static_cast<std::size_t>(n));
  out.append(data);
  out += "\r\n";
}

}  // namespace torouter::openai::http
