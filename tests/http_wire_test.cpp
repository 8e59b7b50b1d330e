// HTTP/1.1 heads, framing, chunked coding and the socket reader
// (server/http_wire.hpp), on literal messages and on real sockets.
#include "http_wire.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

using namespace torouter::openai::http;
using Catch::Matchers::Contains;
using std::chrono::milliseconds;

namespace {

ParseStatus parse_request(std::string_view text, MessageHead& head) {
  std::size_t used = 0;
  return parse_head(text, true, head, used);
}

// Decodes `body` fed `step` bytes at a time; returns the data, or "MALFORMED".
std::string decode_chunked(std::string_view body, std::size_t step) {
  ChunkedDecoder decoder;
  std::string data;
  std::string pending;
  const auto keep = [&](std::string_view piece) {
    data.append(piece);
    return true;
  };
  for (std::size_t at = 0; at < body.size(); at += step) {
    pending.append(body.substr(at, step));
    std::size_t used = 0;
    const auto result = decoder.feed(pending, used, keep);
    pending.erase(0, used);
    if (result == ChunkedDecoder::Result::Malformed) return "MALFORMED";
    if (result == ChunkedDecoder::Result::Done) return data;
  }
  return "INCOMPLETE";
}

// A connected pair of stream sockets, with a short receive timeout on the
// reading end.
struct SocketPair {
  SocketPair() {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    reader = Socket(fds[0]);
    writer = Socket(fds[1]);
    timeval tv{0, 100 * 1000};
    ::setsockopt(reader.fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  void write(std::string_view data) {
    REQUIRE(send_all(writer.fd(), data, Clock::now()) == IoStatus::Ok);
  }
  Socket reader;
  Socket writer;
};

}  // namespace

TEST_CASE("http wire: request heads", "[http]") {
  MessageHead head;
  std::size_t used = 0;
  const std::string text =
      "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length:  12 \r\n"
      "X-Empty:\r\n\r\nbody";
  REQUIRE(parse_head(text, true, head, used) == ParseStatus::Done);
  CHECK(used == text.size() - 4);
  CHECK(head.method == "POST");
  CHECK(head.target == "/v1/chat/completions?x=1");
  CHECK(head.path() == "/v1/chat/completions");
  CHECK(head.minor_version == 1);
  CHECK(head.header("content-length") == "12");
  CHECK(head.header("CONTENT-LENGTH") == "12");
  CHECK(head.has_header("x-empty"));
  CHECK(head.header("x-empty").empty());
  CHECK_FALSE(head.has_header("accept"));
  CHECK(head.keeps_alive());

  SECTION("bare LF line ends and empty lines before the request line") {
    REQUIRE(parse_request("\r\nGET / HTTP/1.0\nConnection: keep-alive\n\n", head) ==
            ParseStatus::Done);
    CHECK(head.method == "GET");
    CHECK(head.keeps_alive());
    REQUIRE(parse_request("GET / HTTP/1.0\r\n\r\n", head) == ParseStatus::Done);
    CHECK_FALSE(head.keeps_alive());
    REQUIRE(parse_request("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", head) ==
            ParseStatus::Done);
    CHECK_FALSE(head.keeps_alive());
  }
  SECTION("incomplete") {
    CHECK(parse_request("", head) == ParseStatus::Incomplete);
    CHECK(parse_request("GET / HTTP/1.1\r\nHost: a\r\n", head) == ParseStatus::Incomplete);
  }
  SECTION("malformed") {
    for (const char* bad :
         {"GET /\r\n\r\n", "GET / HTTP/2.0\r\n\r\n", "GET  / HTTP/1.1\r\n\r\n",
          "G@T / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nHost a\r\n\r\n",
          "GET / HTTP/1.1\r\nHo st: a\r\n\r\n", "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
          "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", "GET /\x01 HTTP/1.1\r\n\r\n",
          "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n"}) {
      INFO(bad);
      CHECK(parse_request(bad, head) == ParseStatus::Malformed);
    }
    const std::string nul = std::string("GET / HTTP/1.1\r\nA: b") + '\0' + "c\r\n\r\n";
    CHECK(parse_request(nul, head) == ParseStatus::Malformed);
  }
}

TEST_CASE("http wire: status lines", "[http]") {
  MessageHead head;
  std::size_t used = 0;
  REQUIRE(parse_head("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\n\r\n", false, head,
                     used) == ParseStatus::Done);
  CHECK(head.status == 429);
  CHECK(head.header("retry-after") == "2");
  REQUIRE(parse_head("HTTP/1.0 204\r\n\r\n", false, head, used) == ParseStatus::Done);
  CHECK(head.status == 204);
  CHECK_FALSE(head.keeps_alive());
  for (const char* bad :
       {"HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 2x0 OK\r\n\r\n", "HTTP/1.1 200OK\r\n\r\n",
        "HTTP/3 200 OK\r\n\r\n", "ICY 200 OK\r\n\r\n", "HTTP/1.1 099 No\r\n\r\n"}) {
    INFO(bad);
    CHECK(parse_head(bad, false, head, used) == ParseStatus::Malformed);
  }
}

TEST_CASE("http wire: body framing", "[http]") {
  MessageHead head;
  BodyFraming framing;
  auto request = [&](const std::string& fields) {
    REQUIRE(parse_request("POST / HTTP/1.1\r\n" + fields + "\r\n", head) == ParseStatus::Done);
    return request_framing(head, framing);
  };
  REQUIRE(request(""));
  CHECK(framing.kind == BodyFraming::Kind::None);
  REQUIRE(request("Content-Length: 42\r\n"));
  CHECK(framing.kind == BodyFraming::Kind::Length);
  CHECK(framing.length == 42);
  REQUIRE(request("Content-Length: 42\r\nContent-Length: 42\r\n"));
  CHECK(framing.length == 42);
  REQUIRE(request("Transfer-Encoding: chunked\r\n"));
  CHECK(framing.kind == BodyFraming::Kind::Chunked);
  REQUIRE(request("Transfer-Encoding: gzip, Chunked\r\n"));
  CHECK(framing.kind == BodyFraming::Kind::Chunked);
  REQUIRE(request("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"));
  CHECK(framing.kind == BodyFraming::Kind::Chunked);
  // The codings of all Transfer-Encoding fields add up: chunked must be last.
  CHECK_FALSE(request("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"));
  // Two readings of one message are how requests get smuggled: refused.
  CHECK_FALSE(request("Content-Length: 42\r\nContent-Length: 43\r\n"));
  CHECK_FALSE(request("Content-Length: 42\r\nTransfer-Encoding: chunked\r\n"));
  CHECK_FALSE(request("Transfer-Encoding: gzip\r\n"));
  CHECK_FALSE(request("Content-Length: -1\r\n"));
  CHECK_FALSE(request("Content-Length: 0x10\r\n"));
  CHECK_FALSE(request("Content-Length: 99999999999999999999\r\n"));

  auto response = [&](const std::string& text) {
    std::size_t used = 0;
    REQUIRE(parse_head(text, false, head, used) == ParseStatus::Done);
    return response_framing(head, framing);
  };
  REQUIRE(response("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"));
  CHECK(framing.kind == BodyFraming::Kind::None);
  REQUIRE(response("HTTP/1.1 200 OK\r\n\r\n"));
  CHECK(framing.kind == BodyFraming::Kind::UntilClose);
  REQUIRE(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"));
  CHECK(framing.kind == BodyFraming::Kind::Chunked);
  REQUIRE(response("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"));
  CHECK(framing.kind == BodyFraming::Kind::Length);
  CHECK_FALSE(response("HTTP/1.1 200 OK\r\nContent-Length: seven\r\n\r\n"));
}

TEST_CASE("http wire: chunked bodies", "[http]") {
  const std::string body =
      "5\r\nhello\r\n1;ext=1\r\n \r\nB\r\nwide world!\r\n0\r\nTrailer: x\r\n\r\n";
  for (std::size_t step : {body.size(), std::size_t{1}, std::size_t{3}, std::size_t{7}}) {
    INFO(step);
    CHECK(decode_chunked(body, step) == "hello wide world!");
  }
  CHECK(decode_chunked("0\r\n\r\n", 1).empty());
  // Chunk lines end in CRLF: a bare LF, or a control character in an
  // extension, is how one body gets read two ways behind a proxy.
  CHECK(decode_chunked("5\nhello\n0\n\n", 1) == "MALFORMED");
  CHECK(decode_chunked("2;x\nab\r\n0\r\n\r\n", 1) == "MALFORMED");
  CHECK(decode_chunked("2;x\x01y\r\nab\r\n0\r\n\r\n", 1) == "MALFORMED");
  std::string long_trailer = "0\r\n";
  for (int i = 0; i < 100; ++i) long_trailer += "X-Trailer: " + std::string(1000, 't') + "\r\n";
  CHECK(decode_chunked(long_trailer + "\r\n", 512) == "MALFORMED");
  CHECK(decode_chunked("x\r\nhello\r\n0\r\n\r\n", 1) == "MALFORMED");
  CHECK(decode_chunked("5\r\nhelloX\r\n0\r\n\r\n", 1) == "MALFORMED");
  CHECK(decode_chunked("5 x\r\nhello\r\n0\r\n\r\n", 1) == "MALFORMED");
  CHECK(decode_chunked("ffffffffffffffff\r\n", 1) == "MALFORMED");
  CHECK(decode_chunked("5\r\nhel", 1) == "INCOMPLETE");
  CHECK(decode_chunked(std::string(5000, '1'), 100) == "MALFORMED");

  std::string encoded;
  append_chunk(encoded, "hello");
  append_chunk(encoded, "");  // an empty piece must not end the body
  append_chunk(encoded, std::string(300, 'x'));
  encoded += "0\r\n\r\n";
  CHECK(decode_chunked(encoded, 4) == "hello" + std::string(300, 'x'));
}

TEST_CASE("http wire: writing heads", "[http]") {
  std::string out;
  append_status_line(out, 413);
  append_header(out, "X-Name", "value\r\nInjected: yes");
  CHECK(out == "HTTP/1.1 413 Content Too Large\r\nX-Name: valueInjected: yes\r\n");
  CHECK(reason_phrase(299) == "Unknown");
  CHECK(equal_ignoring_case("Content-Length", "content-LENGTH"));
  CHECK_FALSE(equal_ignoring_case("Content-Length", "Content-Lengt"));
}

TEST_CASE("http wire: reading messages from a socket", "[http]") {
  SocketPair pair;
  Reader reader(pair.reader.fd());
  MessageHead head;
  std::string body;
  const auto keep = [&](std::string_view piece) {
    body.append(piece);
    return true;
  };
  const auto soon = Clock::now() + std::chrono::seconds(5);

  SECTION("pipelined requests in one write, bodies of both framings") {
    pair.write(
        "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        "GET /c HTTP/1.1\r\n\r\n");
    BodyFraming framing;
    REQUIRE(reader.read_head(true, head, 4096, soon) == IoStatus::Ok);
    CHECK(head.target == "/a");
    REQUIRE(request_framing(head, framing));
    REQUIRE(reader.read_body(framing, 100, soon, keep) == IoStatus::Ok);
    CHECK(body == "hello");
    body.clear();
    REQUIRE(reader.read_head(true, head, 4096, soon) == IoStatus::Ok);
    CHECK(head.target == "/b");
    REQUIRE(request_framing(head, framing));
    REQUIRE(reader.read_body(framing, 100, soon, keep) == IoStatus::Ok);
    CHECK(body == "abc");
    REQUIRE(reader.read_head(true, head, 4096, soon) == IoStatus::Ok);
    CHECK(head.target == "/c");
    CHECK(reader.buffered() == 0);
  }
  SECTION("a message that arrives in pieces") {
    std::thread writer([&] {
      for (std::string_view piece :
           {"POST /slow HT", "TP/1.1\r\nContent-Len", "gth: 6\r\n", "\r\nab", "cd", "ef"}) {
        std::this_thread::sleep_for(milliseconds(20));
        pair.write(piece);
      }
    });
    REQUIRE(reader.read_head(true, head, 4096, soon) == IoStatus::Ok);
    BodyFraming framing;
    REQUIRE(request_framing(head, framing));
    const IoStatus status = reader.read_body(framing, 100, soon, keep);
    writer.join();
    REQUIRE(status == IoStatus::Ok);
    CHECK(body == "abcdef");
  }
  SECTION("limits, timeouts and a closed peer") {
    pair.write("GET / HTTP/1.1\r\nX-Long: " + std::string(5000, 'a') + "\r\n\r\n");
    CHECK(reader.read_head(true, head, 1024, soon) == IoStatus::TooLarge);

    SocketPair idle;
    Reader idle_reader(idle.reader.fd(), OnReceiveTimeout::WaitToDeadline);
    const auto start = Clock::now();
    // Nothing yet: an idle connection times out at its first receive
    // timeout (100 ms), however far the deadline.
    CHECK(idle_reader.read_head(true, head, 1024, soon) == IoStatus::Timeout);
    CHECK(Clock::now() - start < std::chrono::seconds(2));
    // Half a head: waited through receive timeouts until the deadline.
    idle.write("GET / HT");
    CHECK(idle_reader.read_head(true, head, 1024, Clock::now() + milliseconds(300)) ==
          IoStatus::Timeout);
    CHECK(idle_reader.buffered() == 8);

    // Bytes that trickle in, each before the receive timeout, still end at
    // the deadline.
    SocketPair trickle;
    Reader trickle_reader(trickle.reader.fd(), OnReceiveTimeout::WaitToDeadline);
    std::atomic<bool> stop{false};
    std::thread dripping([&] {
      for (int i = 0; i < 200 && !stop; ++i) {
        send_all(trickle.writer.fd(), "a", Clock::now());
        std::this_thread::sleep_for(milliseconds(20));
      }
    });
    const auto dripping_start = Clock::now();
    CHECK(trickle_reader.read_head(true, head, 1 << 16, Clock::now() + milliseconds(300)) ==
          IoStatus::Timeout);
    CHECK(Clock::now() - dripping_start < std::chrono::seconds(2));
    stop = true;
    dripping.join();

    // A receive timeout of 0 is 1 ms, not "wait forever" (on TCP, which
    // the no-delay option needs).
    std::string error;
    bool timed_out = false;
    Socket listener = listen_on("127.0.0.1", "0", error);
    REQUIRE(listener.is_open());
    Socket zero = connect_to("127.0.0.1", std::to_string(local_port(listener.fd())),
                             milliseconds(2000), error, timed_out);
    REQUIRE(zero.is_open());
    REQUIRE(configure_socket(zero.fd(), milliseconds(0), milliseconds(0)));
    Reader zero_reader(zero.fd());
    CHECK(zero_reader.read_head(false, head, 1024, soon) == IoStatus::Timeout);

    SocketPair cut;
    Reader cut_reader(cut.reader.fd());
    BodyFraming framing;
    framing.kind = BodyFraming::Kind::Length;
    framing.length = 1000;
    CHECK(cut_reader.read_body(framing, 999, soon, keep) == IoStatus::TooLarge);
    cut.write("abc");
    cut.writer.close();
    framing.length = 10;
    CHECK(cut_reader.read_body(framing, 100, soon, keep) == IoStatus::Failed);  // cut short
    CHECK(body == "abc");
    CHECK(cut_reader.read_head(true, head, 1024, soon) == IoStatus::Closed);
  }
  SECTION("a body read until the peer closes, and a handler that stops") {
    pair.write("0123456789");
    pair.writer.close();
    BodyFraming framing;
    framing.kind = BodyFraming::Kind::UntilClose;
    CHECK(reader.read_body(framing, 100, soon, [&](std::string_view piece) {
      body.append(piece);
      return false;
    }) == IoStatus::Stopped);
    CHECK(body == "0123456789");
  }
}

TEST_CASE("http wire: listening and connecting on loopback", "[http]") {
  std::string error;
  Socket listener = listen_on("127.0.0.1", "0", error);
  REQUIRE(listener.is_open());
  const int port = local_port(listener.fd());
  REQUIRE(port > 0);
  bool timed_out = false;
  Socket client =
      connect_to("127.0.0.1", std::to_string(port), milliseconds(2000), error, timed_out);
  REQUIRE(client.is_open());
  REQUIRE(configure_socket(client.fd(), milliseconds(1000), milliseconds(1000)));
  Socket served(::accept(listener.fd(), nullptr, nullptr));
  REQUIRE(served.is_open());
  REQUIRE(send_all(client.fd(), "ping", Clock::now()) == IoStatus::Ok);
  char buffer[8] = {};
  CHECK(::recv(served.fd(), buffer, sizeof buffer, 0) == 4);
  CHECK(std::string(buffer) == "ping");

  listener.close();
  Socket refused =
      connect_to("127.0.0.1", std::to_string(port), milliseconds(2000), error, timed_out);
  CHECK_FALSE(refused.is_open());
  CHECK_FALSE(timed_out);
  CHECK_FALSE(error.empty());
  Socket unresolved =
      connect_to("no-such-host.invalid", "80", milliseconds(2000), error, timed_out);
  CHECK_FALSE(unresolved.is_open());
  CHECK_THAT(error, Contains("cannot resolve"));
}
