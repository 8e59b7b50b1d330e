// connection_stream.hpp: one accepted connection as the listener reads and
// writes it, plain TCP or TLS (OpenSSL through Asio) chosen at run time, so
// one session type serves both. Internal to http_server.cpp.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <memory>
#include <utility>

namespace torouter::server {

class ConnectionStream {
 public:
  using executor_type = boost::beast::tcp_stream::executor_type;

  /// `tls` null: plain TCP. Otherwise TLS with that context; `handshake`
  /// must succeed before anything is read or written.
  ConnectionStream(boost::asio::ip::tcp::socket socket, boost::asio::ssl::context* tls)
      : plain_(tls ? boost::beast::tcp_stream(socket.get_executor())
                   : boost::beast::tcp_stream(std::move(socket))) {
    if (tls) tls_ = std::make_unique<TlsStream>(std::move(socket), *tls);
  }

  executor_type get_executor() { return tcp().get_executor(); }
  bool secure() const { return tls_ != nullptr; }
  /// The TCP connection under it: its timeouts, cancel and close.
  boost::beast::tcp_stream& tcp() { return tls_ ? boost::beast::get_lowest_layer(*tls_) : plain_; }

  template <class Handler>
  void async_handshake(Handler&& handler) {
    tls_->async_handshake(boost::asio::ssl::stream_base::server, std::forward<Handler>(handler));
  }

  // Beast's reads and writes of HTTP messages take this as their stream.
  template <class Buffers, class Handler>
  void async_read_some(const Buffers& buffers, Handler&& handler) {
    if (tls_) {
      tls_->async_read_some(buffers, std::forward<Handler>(handler));
    } else {
      plain_.async_read_some(buffers, std::forward<Handler>(handler));
    }
  }

  template <class Buffers, class Handler>
  void async_write_some(const Buffers& buffers, Handler&& handler) {
    if (tls_) {
      tls_->async_write_some(buffers, std::forward<Handler>(handler));
    } else {
      plain_.async_write_some(buffers, std::forward<Handler>(handler));
    }
  }

 private:
  using TlsStream = boost::beast::ssl_stream<boost::beast::tcp_stream>;
  boost::beast::tcp_stream plain_;  // unused (and unopened) under TLS
  std::unique_ptr<TlsStream> tls_;
};

}  // namespace torouter::server
