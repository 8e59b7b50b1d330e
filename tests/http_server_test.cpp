// torouter-server's HTTP/1.1 listener (server/http_server.hpp)
// over real loopback sockets, with requests written byte for byte: keep-alive,
// pipelining, chunked bodies, 100-continue, refusals, streaming, stop.
#include "http_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "open_files.hpp"
#include "support/raw_http.hpp"
#include "support/temp_dir.hpp"
#include "support/test_certificate.hpp"

using namespace torouter::server;
using Catch::Matchers::Contains;
using std::chrono::milliseconds;
using namespace std::chrono_literals;
using torouter::test::HttpReply;
using torouter::test::RawHttpConnection;

namespace {

// A server whose handler echoes the request, streams on /stream, throws on
// /throw and drops the connection on /abort.
struct Fixture {
  explicit Fixture(HttpServerOptions options = small_options()) {
    server = std::make_unique<HttpServer>(
        options,
        [](const HttpRequest& req, HttpResponse& res) {
          if (req.path() == "/throw") throw std::runtime_error("handler broke");
          if (req.path() == "/stream") {
            res.set_header("X-Stream", "yes");
            res.start_stream("text/event-stream");
            for (const char* piece : {"data: one\n\n", "data: two\n\n"}) res.write(piece);
            return;
          }
          if (req.path() == "/abort") {
            res.start_stream("text/plain");
            res.abort();
            return;
          }
          res.set_header("X-Method", req.method);
          res.set_header("X-Seen", req.header("x-test"));
          res.set_header("X-Body-Skipped", req.body_skipped ? "1" : "0");
          res.set_content(std::string(req.path()) + ":" + req.body, "text/plain");
        },
        [](int status, std::string_view message) {
          return "refused " + std::to_string(status) + ": " + std::string(message);
        },
        [this](int status) {
          std::lock_guard<std::mutex> lock(mutex);
          statuses.push_back(status);
        });
    std::string error;
    port = server->bind("127.0.0.1", 0, error);
    REQUIRE(port > 0);
    thread = std::thread([this] { server->run(); });
  }
  ~Fixture() {
    server->stop();
    thread.join();
  }

  static HttpServerOptions small_options() {
    HttpServerOptions options;
    options.threads = 4;
    options.max_body_bytes = 1000;
    options.max_head_bytes = 2000;
    options.idle_timeout = milliseconds(2000);
    return options;
  }

  RawHttpConnection connect() const { return RawHttpConnection(port); }

  std::unique_ptr<HttpServer> server;
  std::thread thread;
  int port = -1;
  std::vector<int> seen_statuses() {
    std::lock_guard<std::mutex> lock(mutex);
    return statuses;
  }

  std::mutex mutex;
  std::vector<int> statuses;
};

void send(RawHttpConnection& connection, std::string_view data) { REQUIRE(connection.send(data)); }

HttpReply receive(RawHttpConnection& connection) { return connection.receive(); }

bool closed_by_server(RawHttpConnection& connection) { return connection.closed_by_server(); }

// A plain socket connected to the server, one descriptor and nothing else
// (RawHttpConnection brings an Asio context of its own); its reads give
// up after `read_timeout`.
int plain_socket_to(int port, std::chrono::seconds read_timeout) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0);
  const timeval wait{static_cast<time_t>(read_timeout.count()), 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
  return fd;
}

}  // namespace

TEST_CASE("http server: keep-alive, pipelining and request bodies", "[http][server]") {
  Fixture f;
  RawHttpConnection socket = f.connect();

  send(socket, "POST /echo HTTP/1.1\r\nHost: x\r\nX-Test: 1\r\nContent-Length: 5\r\n\r\nhello");
  HttpReply a = receive(socket);
  CHECK(a.status == 200);
  CHECK(a.body == "/echo:hello");
  CHECK(a.header("x-method") == "POST");
  CHECK(a.header("x-seen") == "1");
  CHECK(a.header("content-type") == "text/plain");
  CHECK(a.keeps_alive());

  // Two requests in one write, the second with a chunked body.
  send(socket,
       "GET /first?q=1 HTTP/1.1\r\nHost: t\r\n\r\n"
       "POST /second HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: "
       "chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
  CHECK(receive(socket).body == "/first:");
  CHECK(receive(socket).body == "/second:abcde");

  // A client that waits for 100 Continue before sending its body.
  send(socket, "POST /big HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
  HttpReply interim = receive(socket);
  CHECK(interim.status == 100);
  send(socket, "xyz");
  CHECK(receive(socket).body == "/big:xyz");

  // A HEAD request's answer has the headers of GET's and no body.
  send(socket, "HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\nHost: t\r\n\r\n");
  const HttpReply head = socket.receive(/*to_head=*/true);
  CHECK(head.status == 200);
  CHECK(head.header("content-length") == "6");  // "/echo:"
  CHECK(receive(socket).body == "/next:");

  // A line end after a POST's body, or before a request line, is ignored
  // (RFC 9112, section 2.2), a few bytes of them only.
  send(socket, "POST /crlf HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx\r\n");
  CHECK(receive(socket).body == "/crlf:x");
  send(socket, "\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(receive(socket).body == "/after:");
  {
    RawHttpConnection flood = f.connect();
    send(flood, std::string(64, '\n') + "GET /late HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(closed_by_server(flood));
  }

  // HTTP/1.0 closes after its answer.
  send(socket, "GET /old HTTP/1.0\r\n\r\n");
  HttpReply old = receive(socket);
  CHECK(old.status == 200);
  CHECK(old.header("connection") == "close");
  CHECK(closed_by_server(socket));
  CHECK(f.seen_statuses() == std::vector<int>{200, 200, 200, 200, 200, 200, 200, 200, 200});
}

TEST_CASE("http server: HTTP/1.0 closes after its answer even when it asks to be kept alive",
          "[http][server]") {
  Fixture f;
  RawHttpConnection socket = f.connect();
  // The answer is HTTP/1.1, which would not tell a 1.0 client it stays
  // open: such a client reads to the close.
  send(socket, "GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  HttpReply old = receive(socket);
  CHECK(old.status == 200);
  CHECK(old.header("connection") == "close");
  CHECK(closed_by_server(socket));
}

TEST_CASE("http server: every answer carries a Date", "[http][server]") {
  Fixture f;
  const std::string imf_fixdate =
      R"([A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT)";
  RawHttpConnection socket = f.connect();
  send(socket, "GET /dated HTTP/1.1\r\nHost: t\r\n\r\n");
  HttpReply answer = receive(socket);
  CHECK(answer.status == 200);
  CHECK_THAT(answer.header("date"), Catch::Matchers::Matches(imf_fixdate));
  RawHttpConnection hostless = f.connect();
  send(hostless, "GET /dated HTTP/1.1\r\n\r\n");
  HttpReply refused = receive(hostless);
  CHECK(refused.status == 400);
  CHECK_THAT(refused.header("date"), Catch::Matchers::Matches(imf_fixdate));
}

TEST_CASE("http server: wants_body answers a 100-continue request without its body",
          "[http][server]") {
  HttpServerOptions options = Fixture::small_options();
  options.wants_body = [](const HttpRequest& head) { return head.header("x-allow") == "yes"; };
  Fixture f(options);
  const std::string head =
      "POST /big HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n";

  RawHttpConnection refused = f.connect();
  send(refused, head + "\r\n");
  const HttpReply answer = receive(refused);  // no 100 first: the answer itself
  CHECK(answer.status == 200);
  CHECK(answer.body == "/big:");
  CHECK(answer.header("x-body-skipped") == "1");
  CHECK(closed_by_server(refused));  // the body may still come: never read as a request

  RawHttpConnection wanted = f.connect();
  send(wanted, head + "X-Allow: yes\r\n\r\n");
  CHECK(receive(wanted).status == 100);
  send(wanted, "xyz");
  const HttpReply whole = receive(wanted);
  CHECK(whole.body == "/big:xyz");
  CHECK(whole.header("x-body-skipped") == "0");
  CHECK(whole.keeps_alive());

  // Without Expect the body is read whatever wants_body would say.
  send(wanted, "POST /plain HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nab");
  CHECK(receive(wanted).body == "/plain:ab");

  // HTTP/1.0 knows no 1xx answer: the expectation is ignored and the body
  // read as it comes.
  RawHttpConnection old_client = f.connect();
  send(old_client, "POST /old HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab");
  const HttpReply old_answer = receive(old_client);
  CHECK(old_answer.status == 200);
  CHECK(old_answer.body == "/old:ab");
}

TEST_CASE("http server: refusals close the connection", "[http][server]") {
  Fixture f;
  const std::vector<std::pair<std::string, int>> cases = {
      {"GARBAGE\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
       400},
      {"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400},
      {"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n", 413},
      {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n" +
           std::string(1001, 'a') + "\r\n0\r\n\r\n",
       413},
      {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
      {"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + std::string(3000, 'b') + "\r\n\r\n", 431},
      {"GET /" + std::string(3000, 't') + " HTTP/1.1\r\nHost: t\r\n\r\n", 414},
      {"GET / HTTP/1.1\r\nX-No-Host: 1\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", 400},
      // A body whose length a proxy in front may read otherwise: read as
      // empty, its bytes would be served as the next request (smuggling).
      {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n"
       "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
       "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
       400},
      {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, "
       "chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
       501},
      // HTTP/1.0 has no transfer codings (RFC 9112, section 6.1).
      {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400},
  };
  for (const auto& [request, status] : cases) {
    INFO(request.substr(0, 60));
    RawHttpConnection socket = f.connect();
    send(socket, request);
    HttpReply a = receive(socket);
    CHECK(a.status == status);
    CHECK_THAT(a.body, Contains("refused " + std::to_string(status)));
    CHECK(a.header("connection") == "close");
    CHECK(closed_by_server(socket));
  }
  CHECK(f.seen_statuses().size() == cases.size());

  // A head in pieces: Beast reads its request line only with the whole
  // head, so a short line before large fields is still a 431, and a long
  // line a 414.
  const std::vector<std::tuple<std::string, std::string, int>> pieces = {
      {"GET /ab", "c HTTP/1.1\r\nHost: t\r\nX-Big: " + std::string(3000, 'b') + "\r\n\r\n", 431},
      {"GET /" + std::string(1500, 't'), std::string(1500, 't') + " HTTP/1.1\r\nHost: t\r\n\r\n",
       414},
  };
  for (const auto& [first, rest, status] : pieces) {
    INFO(first.substr(0, 20));
    RawHttpConnection socket = f.connect();
    send(socket, first);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    send(socket, rest);
    CHECK(receive(socket).status == status);
  }
}

TEST_CASE("http server: a chunk line or trailer without end is refused at the buffer's bound",
          "[http][server]") {
  // Beast bounds a head and a body's content, not a chunk's size line nor
  // a trailer field: each waits whole in the connection's buffer, which is
  // bounded instead (the head's limit and 16 KiB; here 4096 + 16 KiB).
  Fixture f;
  const std::string endless(200 * 1024, 'a');
  const std::string zeros(200 * 1024, '0');
  const std::string chunked = "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (const std::string& request :
       {chunked + "1;ext=" + endless, chunked + "1\r\na\r\n0\r\nX-Trailer: " + endless,
        chunked + zeros}) {
    INFO(request.substr(chunked.size(), 20));
    RawHttpConnection socket = f.connect();
    send(socket, request);
    HttpReply a = receive(socket);
    CHECK(a.status == 400);
    CHECK_THAT(a.body, Contains("longer than 20480 bytes"));
    CHECK(closed_by_server(socket));
  }
  // Within the bound, a long extension is still read.
  RawHttpConnection socket = f.connect();
  send(socket, chunked + "1;ext=" + std::string(10000, 'e') + "\r\nz\r\n0\r\n\r\n");
  HttpReply ok = receive(socket);
  CHECK(ok.status == 200);
  CHECK(ok.body == "/:z");
}

TEST_CASE("http server: streamed answers, failing handlers, stop", "[http][server]") {
  Fixture f;
  RawHttpConnection socket = f.connect();

  send(socket, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n");
  HttpReply streamed = receive(socket);
  CHECK(streamed.status == 200);
  CHECK(streamed.header("transfer-encoding") == "chunked");
  CHECK(streamed.header("x-stream") == "yes");
  CHECK(streamed.body == "data: one\n\ndata: two\n\n");

  // HTTP/1.0 has no chunked coding: the body runs to the close, even when
  // the client asked to keep the connection.
  for (const char* keep : {"", "Connection: keep-alive\r\n"}) {
    INFO("HTTP/1.0 " << keep);
    RawHttpConnection old = f.connect();
    send(old, std::string("GET /stream HTTP/1.0\r\n") + keep + "\r\n");
    // A body with neither length nor chunks is read until the server
    // closes: the read ends there, or fails at its timeout.
    HttpReply reply = receive(old);
    CHECK(reply.status == 200);
    CHECK_FALSE(reply.has_header("transfer-encoding"));
    CHECK_FALSE(reply.has_header("content-length"));
    CHECK(reply.body == "data: one\n\ndata: two\n\n");
  }

  send(socket, "GET /throw HTTP/1.1\r\nHost: t\r\n\r\n");
  HttpReply thrown = receive(socket);
  CHECK(thrown.status == 500);
  CHECK_THAT(thrown.body, Contains("internal error: handler broke"));

  send(socket, "GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(receive(socket).body == "/after:");

  send(socket, "GET /abort HTTP/1.1\r\nHost: t\r\n\r\n");
  HttpReply aborted = receive(socket);
  CHECK(aborted.status == -1);  // headers, then the connection closed mid-body

  // stop() ends an idle kept-alive connection and returns promptly.
  RawHttpConnection idle = f.connect();
  send(idle, "GET /idle HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(receive(idle).status == 200);
  const auto start = std::chrono::steady_clock::now();
  f.server->stop();
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
  CHECK(closed_by_server(idle));
}

TEST_CASE("http server: idle and trickling connections hold no worker", "[http][server]") {
  // One worker, and a crowd that holds connections open without a whole
  // request: a normal request is still answered, and kept alive.
  HttpServerOptions options = Fixture::small_options();
  options.threads = 1;
  options.read_timeout = milliseconds(20000);
  Fixture f(options);
  std::vector<RawHttpConnection> idle;
  for (int i = 0; i < 100; ++i) idle.push_back(f.connect());
  std::vector<RawHttpConnection> trickling;
  for (int i = 0; i < 20; ++i) {
    trickling.push_back(f.connect());
    send(trickling.back(), "GET /slow HTTP/1.1\r\nHo");
  }
  RawHttpConnection normal = f.connect();
  for (int i = 0; i < 3; ++i) {
    send(normal, "GET /n HTTP/1.1\r\nHost: t\r\n\r\n");
    HttpReply a = receive(normal);
    CHECK(a.body == "/n:");
    CHECK(a.keeps_alive());
  }
}

TEST_CASE("http server: past its caps, 503 with Retry-After", "[http][server]") {
  SECTION("open connections") {
    HttpServerOptions options = Fixture::small_options();
    options.max_connections = 2;
    Fixture f(options);
    RawHttpConnection one = f.connect();
    RawHttpConnection two = f.connect();
    std::this_thread::sleep_for(milliseconds(100));  // both accepted
    RawHttpConnection three = f.connect();
    HttpReply refused = receive(three);
    CHECK(refused.status == 503);
    CHECK(refused.header("retry-after") == "1");
    CHECK_THAT(refused.body, Contains("too many open connections"));
  }
  SECTION("requests waiting for a worker") {
    HttpServerOptions options = Fixture::small_options();
    options.threads = 1;
    options.max_queued_requests = 1;
    std::atomic<bool> release{false};
    HttpServer server(
        options,
        [&](const HttpRequest&, HttpResponse& res) {
          while (!release) std::this_thread::sleep_for(milliseconds(5));
          res.set_content("done", "text/plain");
        },
        [](int status, std::string_view message) {
          return "refused " + std::to_string(status) + ": " + std::string(message);
        },
        [](int) {});
    std::string error;
    const int port = server.bind("127.0.0.1", 0, error);
    REQUIRE(port > 0);
    std::thread running([&] { server.run(); });
    auto connect = [&] { return RawHttpConnection(port); };
    RawHttpConnection busy = connect();  // taken by the worker
    send(busy, "GET /a HTTP/1.1\r\nHost: t\r\n\r\n");
    std::this_thread::sleep_for(milliseconds(100));
    RawHttpConnection queued = connect();  // waits in the queue
    send(queued, "GET /b HTTP/1.1\r\nHost: t\r\n\r\n");
    std::this_thread::sleep_for(milliseconds(100));
    RawHttpConnection over = connect();
    send(over, "GET /c HTTP/1.1\r\nHost: t\r\n\r\n");
    HttpReply refused = receive(over);
    CHECK(refused.status == 503);
    CHECK(refused.header("retry-after") == "1");
    release = true;
    CHECK(receive(busy).body == "done");
    CHECK(receive(queued).body == "done");
    server.stop();
    running.join();
  }
}

TEST_CASE("http server: connections refused at the cap hold a bounded number of descriptors",
          "[http][server]") {
  // Past the cap each connection is refused with a 503 and drained for as
  // long as its client sends (here silent: 0.5 s), keeping its descriptor;
  // at most kMostRefusalsAtOnce do so at once, and the rest are closed
  // unanswered. The clients are plain sockets of this process, one
  // descriptor each, so what the server holds is the rest of the count.
  HttpServerOptions options = Fixture::small_options();
  options.max_connections = 1;
  options.idle_timeout = std::chrono::seconds(60);  // `served` outlives the flood, however slow
  Fixture f(options);
  RawHttpConnection served = f.connect();
  send(served, "GET /a HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(receive(served).status == 200);
  const std::size_t before = torouter::server::open_descriptors();
  constexpr std::size_t kFlood = 3 * torouter::server::kMostRefusalsAtOnce;
  std::vector<int> flood;
  for (std::size_t i = 0; i < kFlood; ++i) flood.push_back(plain_socket_to(f.port, 5s));
  // Accepted by now, and still within the refusals' 0.5 s drain.
  std::this_thread::sleep_for(milliseconds(200));
  const std::size_t held_by_server = torouter::server::open_descriptors() - before - kFlood;
  CHECK(held_by_server <= torouter::server::kMostRefusalsAtOnce + 4);
  // The first past the cap got its 503.
  char head[64] = {};
  CHECK(::recv(flood.front(), head, sizeof head - 1, 0) > 0);
  CHECK(std::string(head).rfind("HTTP/1.1 503", 0) == 0);
  for (const int fd : flood) ::close(fd);
  // The connection within the cap is served as before.
  send(served, "GET /b HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(receive(served).status == 200);
}

TEST_CASE("http server: a TLS connection refused at the cap has 2 s for its handshake",
          "[http][server][tls]") {
  // A refusal holds one of kMostRefusalsAtOnce slots until it ends: a
  // client past the cap that never begins its handshake is let go after
  // 2 s, not read_timeout (30 s), or a few such clients would leave every
  // other one past the cap unanswered.
  const auto dir = torouter::testing::process_temp_dir("http_server_tls_refusal");
  const auto cert = torouter::testing::make_certificate(dir, "IP:127.0.0.1");
  HttpServerOptions options = Fixture::small_options();
  options.max_connections = 1;
  options.tls_cert_file = cert.certificate;
  options.tls_key_file = cert.key;
  Fixture f(options);
  const int within = plain_socket_to(f.port, 10s);  // within the cap, silent: it has read_timeout
  std::this_thread::sleep_for(milliseconds(100));
  const int past = plain_socket_to(f.port, 10s);  // past the cap, silent
  const auto start = std::chrono::steady_clock::now();
  char byte = 0;
  CHECK(::recv(past, &byte, 1, 0) == 0);  // closed by the server, not the 10 s wait
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(8));
  ::close(past);
  ::close(within);
}

TEST_CASE("http server: a client that takes no bytes for write_timeout is cut off",
          "[http][server]") {
  // The answer is far larger than the loopback connection's buffers, and the
  // client reads nothing: a write stalls, and write_timeout after it began
  // the server gives up on the client (the answer's client_gone fires) and
  // closes the connection, whatever was still queued.
  HttpServerOptions options = Fixture::small_options();
  options.handlers_never_block = true;
  options.write_timeout = milliseconds(300);
  options.max_queued_answer_bytes = 64 << 20;
  std::mutex mutex;
  std::shared_ptr<torouter::CancelSignal> gone;
  HttpServer server(
      options,
      [&](const HttpRequest&, HttpResponse& res) {
        {
          std::lock_guard<std::mutex> lock(mutex);
          gone = res.client_gone();
        }
        res.start_stream("text/plain");
        const std::string piece(64 << 10, 'x');
        for (int i = 0; i < 512; ++i) res.write(piece);  // 32 MiB, queued at once
      },
      [](int status, std::string_view) { return std::to_string(status); }, [](int) {});
  std::string error;
  const int port = server.bind("127.0.0.1", 0, error);
  REQUIRE(port > 0);
  std::thread running([&] { server.run(); });
  RawHttpConnection client(port);
  const auto start = std::chrono::steady_clock::now();
  send(client, "GET /flood HTTP/1.1\r\nHost: t\r\n\r\n");
  auto cut = [&] {
    std::lock_guard<std::mutex> lock(mutex);
    return gone && gone->cancelled();
  };
  while (!cut() && std::chrono::steady_clock::now() - start < std::chrono::seconds(10)) {
    std::this_thread::sleep_for(milliseconds(20));
  }
  CHECK(cut());
  CHECK(std::chrono::steady_clock::now() - start >= milliseconds(300));
  CHECK(receive(client).status == -1);  // what the buffers held, then the close
  server.stop();
  running.join();
}

TEST_CASE("http server: slow readers together cannot queue past max_queued_answer_bytes_total",
          "[http][server]") {
  // Clients that read nothing, one after another, under a per-connection
  // cap they stay within: the first queues 24 MiB; the second would take
  // the total past 32 MiB and is cut off, its queue dropped at once; so a
  // third's 4 MiB still fit.
  HttpServerOptions options = Fixture::small_options();
  options.handlers_never_block = true;
  options.write_timeout = std::chrono::seconds(20);
  options.max_queued_answer_bytes = 64 << 20;
  options.max_queued_answer_bytes_total = 32 << 20;
  std::mutex mutex;
  std::vector<std::shared_ptr<torouter::CancelSignal>> gone;
  std::atomic<int> handled{0};
  HttpServer server(
      options,
      [&](const HttpRequest& req, HttpResponse& res) {
        {
          std::lock_guard<std::mutex> lock(mutex);
          gone.push_back(res.client_gone());
        }
        res.start_stream("text/plain");
        const std::string piece(64 << 10, 'x');
        const int pieces = req.path() == "/small" ? 64 : 384;  // 4 or 24 MiB
        for (int i = 0; i < pieces; ++i) res.write(piece);
        ++handled;
      },
      [](int status, std::string_view) { return std::to_string(status); }, [](int) {});
  std::string error;
  const int port = server.bind("127.0.0.1", 0, error);
  REQUIRE(port > 0);
  std::thread running([&] { server.run(); });
  auto cut = [&](std::size_t i) {
    std::lock_guard<std::mutex> lock(mutex);
    return i < gone.size() && gone[i]->cancelled();
  };
  auto wait_for = [](const std::function<bool()>& done) {
    const auto start = std::chrono::steady_clock::now();
    while (!done() && std::chrono::steady_clock::now() - start < std::chrono::seconds(10)) {
      std::this_thread::sleep_for(milliseconds(10));
    }
    return done();
  };
  {
    RawHttpConnection first(port);
    send(first, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    REQUIRE(wait_for([&] { return handled == 1; }));
    RawHttpConnection second(port);
    send(second, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(wait_for([&] { return cut(1); }));
    RawHttpConnection third(port);
    send(third, "GET /small HTTP/1.1\r\nHost: t\r\n\r\n");
    REQUIRE(wait_for([&] { return handled == 3; }));
    std::this_thread::sleep_for(milliseconds(50));
    CHECK_FALSE(cut(0));
    CHECK_FALSE(cut(2));
  }  // the clients leave: stop need not wait out the answers they never read
  server.stop();
  running.join();
}

TEST_CASE("http server: connections stay open while a worker is free for each", "[http][server]") {
  // Connections that arrive together queue for a moment before the workers
  // wake; that alone must not close kept-alive connections (the clients
  // would reconnect and queue again, and the connections churn).
  Fixture f;  // 4 workers
  std::vector<RawHttpConnection> connections;
  for (int i = 0; i < 4; ++i) connections.push_back(f.connect());
  int closing = 0;
  for (int round = 0; round < 20; ++round) {
    for (auto& connection : connections) send(connection, "GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
    for (auto& connection : connections) {
      const HttpReply a = receive(connection);
      REQUIRE(a.status == 200);
      closing += a.keeps_alive() ? 0 : 1;
    }
  }
  CHECK(closing == 0);
}

TEST_CASE("http server: a stop before run, and an idle timeout", "[http][server]") {
  HttpServerOptions options = Fixture::small_options();
  options.idle_timeout = milliseconds(200);
  Fixture f(options);
  RawHttpConnection socket = f.connect();
  const auto start = std::chrono::steady_clock::now();
  CHECK(closed_by_server(socket));  // nothing sent: closed after the idle timeout
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(3));

  // A request that trickles in a byte at a time is cut at the read timeout.
  HttpServerOptions slow_options = Fixture::small_options();
  slow_options.read_timeout = milliseconds(300);
  Fixture slow(slow_options);
  RawHttpConnection trickling = slow.connect();
  const auto trickle_start = std::chrono::steady_clock::now();
  HttpReply late;
  std::thread reading([&] { late = receive(trickling); });
  for (char c : std::string("GET / HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")) {
    if (!trickling.send_from_another_thread(std::string_view(&c, 1))) break;
    std::this_thread::sleep_for(milliseconds(30));
  }
  reading.join();
  CHECK(late.status == 408);
  CHECK(std::chrono::steady_clock::now() - trickle_start < std::chrono::seconds(5));

  HttpServer never(
      HttpServerOptions{}, [](const HttpRequest&, HttpResponse&) {},
      [](int, std::string_view) { return std::string(); }, [](int) {});
  std::string error;
  REQUIRE(never.bind("127.0.0.1", 0, error) > 0);
  never.stop();
  never.run();  // returns at once
  CHECK_FALSE(never.is_running());
}

TEST_CASE("http server: a stop as run() starts", "[http][server]") {
  // stop() closes the acceptor on an I/O thread while run() may still be
  // checking it: under ThreadSanitizer (scripts/sanitize) this loop showed
  // the two touching the acceptor unordered until stop() took run()'s lock.
  for (int round = 0; round < 30; ++round) {
    HttpServer server(
        HttpServerOptions{}, [](const HttpRequest&, HttpResponse&) {},
        [](int, std::string_view) { return std::string(); }, [](int) {});
    std::string error;
    REQUIRE(server.bind("127.0.0.1", 0, error) > 0);
    std::thread running([&] { server.run(); });
    server.stop();
    running.join();
    CHECK_FALSE(server.is_running());
  }
}

TEST_CASE("http server: a TLS certificate it cannot use is named at bind", "[http][server]") {
  HttpServerOptions options = Fixture::small_options();
  options.tls_cert_file = "/nonexistent/server.crt";
  options.tls_key_file = "/nonexistent/server.key";
  HttpServer server(
      options, [](const HttpRequest&, HttpResponse&) {},
      [](int, std::string_view) { return std::string(); }, [](int) {});
  std::string error;
  CHECK(server.bind("127.0.0.1", 0, error) == -1);
  CHECK_THAT(error, Contains("cannot use TLS certificate /nonexistent/server.crt"));
}
