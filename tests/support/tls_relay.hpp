// TLS for tests, made at test time: a self-signed certificate from Debian's
// `openssl`, and a TLS front (Asio and OpenSSL) that relays each connection's
// bytes to a plain server on loopback, so a plain stand-in answers https://.
//
//   auto cert = make_certificate(dir, "IP:127.0.0.1,DNS:localhost");
//   TlsRelay relay(cert, stand_in.port());
//   options.base_url = "https://127.0.0.1:" + std::to_string(relay.port()) + "/v1";
//   options.ca_file = cert.certificate;
#pragma once

#include <array>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "support/test_certificate.hpp"

namespace torouter::testing {

/// Accepts TLS on 127.0.0.1 and relays each connection to `target_port`.
class TlsRelay {
 public:
  TlsRelay(const Certificate& certificate, int target_port)
      : tls_(boost::asio::ssl::context::tls_server),
        acceptor_(io_, {boost::asio::ip::make_address("127.0.0.1"), 0}),
        target_(boost::asio::ip::make_address("127.0.0.1"),
                static_cast<unsigned short>(target_port)) {
    tls_.use_certificate_chain_file(certificate.certificate);
    tls_.use_private_key_file(certificate.key, boost::asio::ssl::context::pem);
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~TlsRelay() {
    io_.stop();
    thread_.join();
  }
  TlsRelay(const TlsRelay&) = delete;
  TlsRelay& operator=(const TlsRelay&) = delete;

  int port() const { return acceptor_.local_endpoint().port(); }

 private:
  using Tcp = boost::asio::ip::tcp;
  using TlsStream = boost::asio::ssl::stream<Tcp::socket>;

  // Both ends of one relayed connection; each direction pumps on its own.
  struct Pair : std::enable_shared_from_this<Pair> {
    Pair(Tcp::socket socket, boost::asio::ssl::context& tls)
        : client(std::move(socket), tls), upstream(client.get_executor()) {}
    TlsStream client;
    Tcp::socket upstream;
    std::array<char, 16384> from_client{};
    std::array<char, 16384> from_upstream{};

    void close() {
      boost::system::error_code ignored;
      client.lowest_layer().close(ignored);
      upstream.close(ignored);
    }
    template <typename From, typename To, typename Buffer>
    void pump(From& from, To& to, Buffer& buffer) {
      auto self = shared_from_this();
      from.async_read_some(
          boost::asio::buffer(buffer),
          [self, &from, &to, &buffer](boost::system::error_code ec, std::size_t n) {
            if (ec) return self->close();
            boost::asio::async_write(
                to, boost::asio::buffer(buffer.data(), n),
                [self, &from, &to, &buffer](boost::system::error_code ec2, std::size_t) {
                  if (ec2) return self->close();
                  self->pump(from, to, buffer);
                });
          });
    }
  };

  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, Tcp::socket socket) {
      if (ec) return;
      auto pair = std::make_shared<Pair>(std::move(socket), tls_);
      pair->client.async_handshake(
          boost::asio::ssl::stream_base::server, [this, pair](boost::system::error_code ec2) {
            if (ec2) return pair->close();
            pair->upstream.async_connect(target_, [pair](boost::system::error_code ec3) {
              if (ec3) return pair->close();
              pair->pump(pair->client, pair->upstream, pair->from_client);
              pair->pump(pair->upstream, pair->client, pair->from_upstream);
            });
          });
      accept();
    });
  }

  boost::asio::io_context io_;
  boost::asio::ssl::context tls_;
  Tcp::acceptor acceptor_;
  Tcp::endpoint target_;
  std::thread thread_;
};

}  // namespace torouter::testing
