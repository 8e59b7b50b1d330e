// any_stream.hpp: one HTTP connection's byte stream, plain TCP or TLS over
// it (OpenSSL through Asio), chosen at run time; the listener's sessions
// (server/http_server.cpp) and the upstream client (http_client.cpp) read
// and write through it. Internal.
//
// Its reads and writes take a type-erased handler and a fixed buffer list,
// so each stream's own operations are compiled once, not once for every
// handler and buffer type of every Beast operation on each stream type.
// That was most of the compile time of both files (docs/TESTING.md); the
// cost is one small allocation per read or write.
//
// Asio keeps each operation, with two copies of its buffer list, in memory
// it recycles per thread, but only blocks of up to about 1 KB: past that
// every read and write was a call to malloc and free of 2.2 KB. The lists
// are sized to stay under it (`kReadBuffers`, `kWriteBuffers`).
#pragma once

#include <array>
#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace openai {

namespace detail {

/// The completion handler of a read or a write, its type erased. Called at
/// most once; it frees itself before calling the handler it holds, as Asio
/// asks of a handler's memory.
class IoCompletion {
 public:
  template <class Handler>
  explicit IoCompletion(Handler&& handler)
      : held_(std::make_unique<Held<std::decay_t<Handler>>>(std::forward<Handler>(handler))) {}

  void operator()(boost::system::error_code ec, std::size_t bytes) {
    Base* held = held_.release();
    held->complete(ec, bytes);
  }

 private:
  struct Base {
    virtual ~Base() = default;
    virtual void complete(boost::system::error_code ec, std::size_t bytes) = 0;
  };
  template <class Handler>
  struct Held final : Base {
    explicit Held(Handler&& h) : handler(std::move(h)) {}
    explicit Held(const Handler& h) : handler(h) {}
    void complete(boost::system::error_code ec, std::size_t bytes) override {
      Handler local(std::move(handler));
      delete this;
      local(ec, bytes);
    }
    Handler handler;
  };
  std::unique_ptr<Base> held_;
};

/// The first `kMost` non-empty buffers of a sequence, as one type. A read
/// or write "some" may move fewer bytes than offered, so leaving the rest
/// for the next call is what Beast's operations expect.
template <class Buffer, std::size_t kMost>
struct BufferList {
  using value_type = Buffer;
  using const_iterator = const Buffer*;

  template <class Sequence>
  explicit BufferList(const Sequence& sequence) {
    const auto end = boost::asio::buffer_sequence_end(sequence);
    for (auto it = boost::asio::buffer_sequence_begin(sequence); it != end && count < kMost; ++it) {
      const Buffer buffer(*it);
      if (buffer.size() > 0) items[count++] = buffer;
    }
  }
  const Buffer* begin() const { return items.data(); }
  const Buffer* end() const { return items.data() + count; }

  std::array<Buffer, kMost> items{};
  std::size_t count = 0;
};

/// Every read fills one buffer (a flat buffer's free space, or a scratch
/// buffer); two leave room. A longer sequence only reads less at a time.
inline constexpr std::size_t kReadBuffers = 2;
/// An answer's head takes a buffer per field; the server's answers have
/// about 17 with their body (with 16 a head of a dozen fields left its
/// body to a second write). 24 keeps an operation in Asio's recycled
/// memory; a longer head takes one more system call.
inline constexpr std::size_t kWriteBuffers = 24;

using ReadBuffers = BufferList<boost::asio::mutable_buffer, kReadBuffers>;
using WriteBuffers = BufferList<boost::asio::const_buffer, kWriteBuffers>;

}  // namespace detail

class AnyStream {
 public:
  // The io_context's own executor, not Asio's type-erased one: every
  // operation and timer wait then calls it directly, where the erased one
  // cost a copy, a virtual call and a destruction (a tenth of the server's
  // instructions per streamed answer; docs/BENCHMARKS.md).
  using executor_type = boost::asio::io_context::executor_type;
  using TcpStream = boost::beast::basic_stream<boost::asio::ip::tcp, executor_type>;
  using Socket = TcpStream::socket_type;
  using TlsStream = boost::beast::ssl_stream<TcpStream>;
  /// A timer on the same kind of executor.
  using Timer =
      boost::asio::basic_waitable_timer<std::chrono::steady_clock,
                                        boost::asio::wait_traits<std::chrono::steady_clock>,
                                        executor_type>;

  /// `tls` null: plain TCP. Otherwise TLS with that context, whose
  /// handshake must succeed before anything is read or written. `arg`
  /// makes the TCP stream: an executor, or a connected socket.
  template <class Arg>
  AnyStream(Arg&& arg, boost::asio::ssl::context* tls) {
    if (tls != nullptr) {
      tls_ = std::make_unique<TlsStream>(std::forward<Arg>(arg), *tls);
    } else {
      plain_.emplace(std::forward<Arg>(arg));
    }
  }

  executor_type get_executor() { return tcp().get_executor(); }
  bool secure() const { return tls_ != nullptr; }
  /// The TCP connection under it: its timeouts, cancel and close.
  TcpStream& tcp() { return tls_ ? boost::beast::get_lowest_layer(*tls_) : *plain_; }
  /// The TLS stream (only when `secure`): its handshake and settings.
  TlsStream& tls() { return *tls_; }

  // Beast's reads and writes of HTTP messages take this as their stream.
  template <class Buffers, class Handler>
  void async_read_some(const Buffers& buffers, Handler&& handler) {
    read_some(detail::ReadBuffers(buffers), detail::IoCompletion(std::forward<Handler>(handler)));
  }
  template <class Buffers, class Handler>
  void async_write_some(const Buffers& buffers, Handler&& handler) {
    write_some(detail::WriteBuffers(buffers), detail::IoCompletion(std::forward<Handler>(handler)));
  }

 private:
  void read_some(const detail::ReadBuffers& buffers, detail::IoCompletion done) {
    if (tls_) {
      tls_->async_read_some(buffers, std::move(done));
    } else {
      plain_->async_read_some(buffers, std::move(done));
    }
  }
  void write_some(const detail::WriteBuffers& buffers, detail::IoCompletion done) {
    if (tls_) {
      tls_->async_write_some(buffers, std::move(done));
    } else {
      plain_->async_write_some(buffers, std::move(done));
    }
  }

  std::optional<TcpStream> plain_;
  std::unique_ptr<TlsStream> tls_;
};

}  // namespace openai
TOROUTER_END_NAMESPACE
