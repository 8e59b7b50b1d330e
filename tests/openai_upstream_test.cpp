// torouter::openai::Upstream against stand-in upstreams on loopback: answers,
// streams, each failure mapped to its FailureKind, asynchronous calls and
// their cancel, and https:// through a TLS front made at test time.
#include <fmt/format.h>
#include <sched.h>
#include <sys/socket.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "stand_in_upstream.hpp"
#include "support/raw_http.hpp"
#include "support/temp_dir.hpp"
#include "support/tls_relay.hpp"
#include "torouter/error.hpp"
#include "torouter/openai/upstream.hpp"

using Catch::Matchers::Contains;
using torouter::FailureKind;
using torouter::Request;
using torouter::Response;
using torouter::openai::Upstream;
using torouter::openai::UpstreamOptions;
using torouter::server::StandInBehaviour;
using torouter::server::StandInUpstream;
using namespace std::chrono_literals;

namespace {

UpstreamOptions options_for(const StandInUpstream& stand_in) {
  UpstreamOptions o;
  o.base_url = stand_in.base_url();
  o.model = "m1";
  o.read_timeout = 10s;
  return o;
}

Request request(std::string prompt) {
  Request r;
  r.expert = "e";
  r.prompt = std::move(prompt);
  r.timeout = 20s;
  return r;
}

StandInBehaviour status(int code, std::string retry_after = {}, std::string body = {}) {
  StandInBehaviour b;
  b.kind = StandInBehaviour::Kind::Status;
  b.status = code;
  b.retry_after = std::move(retry_after);
  b.body = std::move(body);
  return b;
}

}  // namespace

TEST_CASE("openai upstream: a plain call and a streamed one", "[openai]") {
  StandInUpstream stand_in("s");
  REQUIRE(stand_in.start() > 0);
  Upstream upstream(options_for(stand_in));

  Response r = upstream.complete(request("What is 2+2?"));
  REQUIRE(r.ok());
  CHECK(r.text == "m1 answers: What is 2+2?");
  CHECK(r.input_tokens > 0);
  CHECK(r.output_tokens > 0);
  CHECK_THAT(stand_in.last_body(), Contains("\"stream\":false"));

  std::string joined;
  int pieces = 0;
  int empty = 0;
  Response s = upstream.stream(request("Hi"), [&](std::string_view piece) {
    joined += piece;
    ++(piece.empty() ? empty : pieces);
  });
  REQUIRE(s.ok());
  CHECK(joined == "m1 answers: Hi");
  CHECK(pieces >= 2);
  CHECK(empty == 1);  // the last event: the finish reason and usage, no text
  CHECK(s.output_tokens > 0);

  // The conversation and extra fields as the caller gives them; max tokens
  // from the request when the caller's fields have none.
  torouter::openai::ChatCall call;
  call.messages_json = R"([{"role":"user","content":"from messages"}])";
  call.extra_fields_json = R"("temperature":0)";
  Request with_max = request("ignored");
  with_max.max_output_tokens = 12;
  Response c = upstream.complete(with_max, call);
  REQUIRE(c.ok());
  CHECK(c.text == "m1 answers: from messages");
  CHECK_THAT(stand_in.last_body(), Contains("\"temperature\":0"));
  CHECK_THAT(stand_in.last_body(), Contains("\"max_tokens\":12"));

  // Token counts written as 10.0 are counts; a string is none (left to the
  // router's estimate).
  stand_in.push_behaviour(status(
      200, "",
      R"({"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":10.0,"completion_tokens":"7"}})"));
  const Response odd = upstream.complete(request("x"));
  REQUIRE(odd.ok());
  CHECK(odd.input_tokens == 10);
  CHECK(odd.output_tokens == 0);

  // A stream event whose "error" is null is no error event.
  stand_in.push_behaviour(
      status(200, "",
             "data: {\"error\":null,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n"
             "data: [DONE]\n\n"));
  std::string streamed;
  const Response null_error =
      upstream.stream(request("x"), [&](std::string_view p) { streamed += p; });
  CHECK(null_error.ok());
  CHECK(streamed == "ok");

  // An error event: the upstream's words marked apart from ours.
  stand_in.push_behaviour(status(200, "", "data: {\"error\":{\"message\":\"shard 7 down\"}}\n\n"));
  const Response error_event = upstream.stream(request("x"), [](std::string_view) {});
  CHECK(error_event.failure == FailureKind::ServerError);
  CHECK(error_event.error_message.substr(0, error_event.upstream_words_at) ==
        "error event in stream: ");
  CHECK(error_event.error_message.substr(error_event.upstream_words_at) == "shard 7 down");
  CHECK(error_event.http_status == 0);

  // Connections are reused: many calls, no failure.
  for (int i = 0; i < 20; ++i) REQUIRE(upstream.complete(request("again")).ok());
}

TEST_CASE("openai upstream: the finish reason and tool calls reach ChatCall::answer", "[openai]") {
  StandInUpstream stand_in("s");
  REQUIRE(stand_in.start() > 0);
  Upstream upstream(options_for(stand_in));
  StandInBehaviour tools;
  tools.tool_calls = {{"call_a", "function", "lookup", R"({"q":"x"})"},
                      {"call_b", "function", "add", R"({"a":1,"b":2})"}};
  stand_in.set_behaviour(tools);

  torouter::openai::ChatAnswer answer;
  torouter::openai::ChatCall call;
  call.answer = &answer;
  for (const bool streamed : {false, true}) {
    INFO("streamed: " << streamed);
    std::string joined;
    const Response r = streamed ? upstream.stream(
                                      request("x"), [&](std::string_view p) { joined += p; }, call)
                                : upstream.complete(request("x"), call);
    REQUIRE(r.ok());
    CHECK(r.text.empty());
    CHECK(joined.empty());
    CHECK(answer.finish_reason == "tool_calls");
    REQUIRE(answer.tool_calls.size() == 2);
    CHECK(answer.tool_calls[0].id == "call_a");
    CHECK(answer.tool_calls[0].type == "function");
    CHECK(answer.tool_calls[0].name == "lookup");
    CHECK(answer.tool_calls[0].arguments == R"({"q":"x"})");
    CHECK(answer.tool_calls[1].id == "call_b");
    CHECK(answer.tool_calls[1].name == "add");
    CHECK(answer.tool_calls[1].arguments == R"({"a":1,"b":2})");
  }

  // A text answer cut short: its reason, and nothing left of the last call's tools.
  StandInBehaviour cut;
  cut.finish_reason = "length";
  stand_in.set_behaviour(cut);
  REQUIRE(upstream.complete(request("x"), call).ok());
  CHECK(answer.finish_reason == "length");
  CHECK(answer.tool_calls.empty());

  // A failed call leaves nothing of use.
  stand_in.push_behaviour(status(503));
  CHECK(upstream.complete(request("x"), call).failure == FailureKind::ServerError);
  CHECK(answer.finish_reason.empty());

  // A stream whose tool call index skips ahead cannot be joined: malformed.
  stand_in.push_behaviour(status(
      200, "",
      "data: "
      "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"c\"}]}}]}\n\n"
      "data: [DONE]\n\n"));
  const Response skipped = upstream.stream(
      request("x"), [](std::string_view) {}, call);
  CHECK(skipped.failure == FailureKind::ServerError);
  CHECK(skipped.error_message.substr(0, skipped.upstream_words_at) ==
        "malformed stream event: a tool call index skips ahead: ");
  CHECK_THAT(skipped.error_message.substr(skipped.upstream_words_at), Contains("\"index\":1"));
}

TEST_CASE("openai upstream: ChatCall::pieces_as_json hands on each event's choice, for a relay",
          "[openai]") {
  StandInUpstream stand_in("s");
  REQUIRE(stand_in.start() > 0);
  Upstream upstream(options_for(stand_in));
  StandInBehaviour thinking;
  thinking.reasoning_chunks = 2;
  thinking.tool_calls = {{"call_a", "function", "lookup", R"({"q":"x"})"}};
  stand_in.set_behaviour(thinking);
  torouter::openai::ChatAnswer answer;
  torouter::openai::ChatCall call;
  call.answer = &answer;
  call.pieces_as_json = true;
  std::vector<std::string> pieces;
  const Response r = upstream.stream(
      request("x"), [&](std::string_view p) { pieces.emplace_back(p); }, call);
  REQUIRE(r.ok());
  // The thinking as JSON members, without the role; the tool call's
  // pieces and the end as empty pieces (the call whole in `answer`).
  REQUIRE(pieces.size() >= 3);
  CHECK(pieces[0] == R"("delta":{"reasoning_content":"Hm."})");
  CHECK(pieces[1] == R"("delta":{"reasoning_content":" Hm."})");
  for (std::size_t i = 2; i < pieces.size(); ++i) CHECK(pieces[i].empty());
  REQUIRE(answer.tool_calls.size() == 1);
  CHECK(answer.tool_calls[0].arguments == R"({"q":"x"})");
  CHECK(answer.usage_json.find("\"prompt_tokens\"") == 1);

  // A text answer: its content is still the response's text.
  stand_in.set_behaviour(StandInBehaviour());
  pieces.clear();
  const Response text = upstream.stream(
      request("Hi"), [&](std::string_view p) { pieces.emplace_back(p); }, call);
  REQUIRE(text.ok());
  CHECK(text.text == "m1 answers: Hi");
  REQUIRE_FALSE(pieces.empty());
  CHECK(pieces[0].rfind(R"("delta":{"content":"m1)", 0) == 0);

  // A plain answer's choices, usage and other members, as sent.
  const Response plain = upstream.complete(request("Hi"), call);
  REQUIRE(plain.ok());
  CHECK(answer.choices_json.rfind(R"([{"index":0,"message":{"role":"assistant")", 0) == 0);
  CHECK(answer.usage_json.rfind(R"({"prompt_tokens":)", 0) == 0);
  CHECK(answer.other_members_json.empty());  // the stand-in sends none
}

TEST_CASE("openai upstream: failures map to failure kinds", "[openai]") {
  StandInUpstream stand_in("s");
  REQUIRE(stand_in.start() > 0);
  UpstreamOptions o = options_for(stand_in);
  o.read_timeout = 600ms;
  Upstream upstream(o);

  stand_in.push_behaviour(status(429, "2"));
  Response r = upstream.complete(request("x"));
  CHECK(r.failure == FailureKind::RateLimited);
  CHECK(r.retry_after == 2000ms);

  stand_in.push_behaviour(status(503));
  r = upstream.complete(request("x"));
  CHECK(r.failure == FailureKind::ServerError);
  CHECK_THAT(r.error_message, Contains("HTTP 503"));

  stand_in.push_behaviour(
      status(400, "", R"({"error":{"message":"maximum context length is 8192 tokens"}})"));
  r = upstream.complete(request("x"));
  CHECK(r.failure == FailureKind::ContextTooLong);

  stand_in.push_behaviour(status(422));
  r = upstream.complete(request("x"));
  CHECK(r.failure == FailureKind::BadRequest);

  stand_in.push_behaviour(status(401));  // the upstream's key: the expert is broken
  r = upstream.complete(request("x"));
  CHECK(r.failure == FailureKind::ServerError);

  StandInBehaviour drop;
  drop.kind = StandInBehaviour::Kind::Drop;
  stand_in.push_behaviour(drop);
  r = upstream.complete(request("x"));
  CHECK(r.failure == FailureKind::ServerError);
  CHECK_THAT(r.error_message, Contains("dropped"));

  StandInBehaviour slow;
  slow.delay = 1500ms;
  stand_in.push_behaviour(slow);
  r = upstream.complete(request("x"));
  CHECK(r.failure == FailureKind::Timeout);

  StandInBehaviour mid;
  mid.kind = StandInBehaviour::Kind::DropMidStream;
  stand_in.push_behaviour(mid);
  std::string joined;
  r = upstream.stream(request("a longer prompt to cut"), [&](std::string_view p) { joined += p; });
  CHECK(r.failure == FailureKind::ServerError);
  CHECK(!joined.empty());

  // Nothing listens on a stopped stand-in's port.
  StandInUpstream gone("g");
  REQUIRE(gone.start() > 0);
  UpstreamOptions closed = options_for(gone);
  gone.stop();
  r = Upstream(closed).complete(request("x"));
  CHECK(r.failure == FailureKind::ServerError);
  CHECK_THAT(r.error_message, Contains("cannot connect"));
}

// An upstream written byte for byte, to answer in each HTTP framing, to
// close kept-alive connections between calls, and to misbehave.
TEST_CASE("openai upstream: answers in every framing, closed connections replaced", "[openai]") {
  torouter::test::RawHttpListener listener;
  const int port = listener.port();
  const std::string json = "{\"choices\":[{\"message\":{\"content\":\"framed\"}}]}";
  const std::string whole =
      "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(json.size()) + "\r\n\r\n" + json;
  std::atomic<int> accepted{0};
  std::atomic<int> requests{0};
  std::thread server([&] {
    std::optional<torouter::test::RawHttpConnection> connection;
    auto next_connection = [&] {
      connection.emplace(listener.accept());
      ++accepted;
    };
    // Reads one request; false when the connection ended.
    auto read_request = [&] {
      const bool read = connection->receive_request();
      if (read) ++requests;
      return read;
    };
    auto answer = [&](const std::string& text) { connection->send(text); };
    auto chunk = [](std::string_view data) {
      return fmt::format("{:x}\r\n{}\r\n", data.size(), data);
    };
    // 1: one answer with Content-Length; then the upstream closes it idle.
    next_connection();
    if (read_request()) answer(whole);
    connection->close();
    // 2: a request read and dropped without a byte, on a new connection:
    // the client must not send it again.
    next_connection();
    read_request();
    connection->close();
    // 3: a chunked answer, then one read until the connection closes.
    next_connection();
    if (read_request()) {
      answer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(json.substr(0, 10)) +
             chunk(json.substr(10)) + "0\r\n\r\n");
    }
    if (read_request()) answer("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + json);
    connection->close();
    // 4: an interim 100 before the answer, and stray bytes after it, which
    // must not become the next call's answer.
    next_connection();
    if (read_request()) answer("HTTP/1.1 100 Continue\r\n\r\n" + whole + "HTTP/1.1 200 OK\r\n");
    // 5: a malformed answer.
    next_connection();
    if (read_request()) answer("HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n");
    // 6: a chunk size line without end, past any buffer's bound.
    next_connection();
    if (read_request()) {
      answer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;e=" +
             std::string(300 * 1024, 'a'));
    }
  });

  UpstreamOptions o;
  o.base_url = "http://127.0.0.1:" + std::to_string(port) + "/v1";
  o.model = "m";
  Upstream upstream(o);
  CHECK(upstream.complete(request("one")).text == "framed");
  std::this_thread::sleep_for(100ms);  // the upstream closes the idle connection
  Response dropped = upstream.complete(request("two"));
  CHECK(dropped.failure == FailureKind::ServerError);
  CHECK_THAT(dropped.error_message, Contains("dropped the connection"));
  CHECK(upstream.complete(request("three")).text == "framed");
  CHECK(upstream.complete(request("four")).text == "framed");
  CHECK(upstream.complete(request("five")).text == "framed");
  Response malformed = upstream.complete(request("six"));
  CHECK(malformed.failure == FailureKind::ServerError);
  CHECK_THAT(malformed.error_message, Contains("malformed answer") && Contains("Content-Length"));
  // Beast bounds a head and a body, not a chunk's size line: the client's
  // buffer is bounded instead, and the call fails at that bound.
  Response endless = upstream.complete(request("seven"));
  CHECK(endless.failure == FailureKind::ServerError);
  CHECK_THAT(endless.error_message, Contains("chunk size line") && Contains("81920 bytes"));
  server.join();
  CHECK(accepted == 6);
  CHECK(requests == 7);
}

TEST_CASE("openai upstream: HTTP errors classified without a server", "[openai]") {
  using torouter::openai::classify_http_error;
  CHECK(classify_http_error(429, "", "1.5", "").retry_after == 1500ms);
  CHECK(classify_http_error(429, "", "", "250").retry_after == 250ms);
  CHECK(classify_http_error(429, "", "Wed, 21 Oct 2015 07:28:00 GMT", "").retry_after == 0ms);
  CHECK(classify_http_error(500, "oops", "", "").failure == FailureKind::ServerError);
  CHECK(classify_http_error(504, "", "", "").failure == FailureKind::Timeout);
  CHECK(
      classify_http_error(400, R"({"error":{"code":"context_length_exceeded"}})", "", "").failure ==
      FailureKind::ContextTooLong);
  CHECK(classify_http_error(413, "Input is too long for requested model", "", "").failure ==
        FailureKind::ContextTooLong);
  const Response bad =
      classify_http_error(400, R"({"error":{"message":"bad temperature"}})", "", "");
  CHECK(bad.failure == FailureKind::BadRequest);
  CHECK(bad.error_message == "HTTP 400: bad temperature");
  // Where the upstream's own words begin, and its status: what a server
  // needs to cut them from what its clients are told.
  CHECK(bad.error_message.substr(bad.upstream_words_at) == "bad temperature");
  CHECK(bad.http_status == 400);
  const Response odd_status = classify_http_error(302, "moved", "", "");
  CHECK(odd_status.error_message == "HTTP 302: unexpected status");
  CHECK(odd_status.upstream_words_at == std::string::npos);
  CHECK(odd_status.http_status == 302);
  // An empty body quotes nothing: no dangling "HTTP 503: ".
  const Response silent = classify_http_error(503, "", "", "");
  CHECK(silent.error_message == "HTTP 503");
  CHECK(silent.upstream_words_at == std::string::npos);
  CHECK(classify_http_error(422, "", "", "").failure == FailureKind::BadRequest);
  // The upstream's key or model id is wrong: the expert is broken, not the request.
  for (const int status : {401, 402, 403, 404}) {
    CHECK(classify_http_error(status, "Incorrect API key provided", "", "").failure ==
          FailureKind::ServerError);
  }
}

TEST_CASE("openai upstream: configuration checks", "[openai]") {
  UpstreamOptions o;
  o.model = "m";
  o.base_url = "127.0.0.1:8000/v1";
  CHECK_THROWS_WITH(Upstream(o), Contains("must start with http:// or https://"));
  o.base_url = "http:///v1";
  CHECK_THROWS_WITH(Upstream(o), Contains("has no host"));
  o.base_url = "http://127.0.0.1:1/v1";
  o.api_key_env = "TOROUTER_TEST_SURELY_UNSET_KEY";
  CHECK_THROWS_WITH(Upstream(o), Contains("TOROUTER_TEST_SURELY_UNSET_KEY is not set"));
  o.api_key_env.clear();
  o.model.clear();
  CHECK_THROWS_WITH(Upstream(o), Contains("model"));
  o.model = "m";
  o.connect_timeout = std::chrono::milliseconds(0);
  CHECK_THROWS_WITH(Upstream(o), Contains("connect_timeout: must be above 0"));
  o.connect_timeout = std::chrono::milliseconds(100);
  o.read_timeout = std::chrono::milliseconds(-1);
  CHECK_THROWS_WITH(Upstream(o), Contains("read_timeout: must be above 0"));
  o.read_timeout = std::chrono::milliseconds(100);
  o.max_response_bytes = 0;
  CHECK_THROWS_WITH(Upstream(o), Contains("max_response_bytes: must be above 0"));
  o.max_response_bytes = 1;
  CHECK_NOTHROW(Upstream(o));
}

TEST_CASE("openai upstream: asynchronous calls hold no thread, and a cancel stops one at once",
          "[openai]") {
  StandInUpstream stand_in("s");  // its delays are timers: one thread answers all forty at once
  REQUIRE(stand_in.start() > 0);
  UpstreamOptions o = options_for(stand_in);
  o.io = std::make_shared<torouter::openai::IoThreads>(1);
  Upstream upstream(o);

  SECTION("forty calls that each take 300 ms are all in flight on one thread") {
    StandInBehaviour slow;
    slow.delay = 300ms;
    stand_in.set_behaviour(slow);
    std::mutex mutex;
    std::condition_variable all_done;
    int answered = 0;
    const auto begin = std::chrono::steady_clock::now();
    for (int i = 0; i < 40; ++i) {
      upstream.complete_async(request("hi"), {}, [&](Response r) {
        std::lock_guard<std::mutex> lock(mutex);
        if (r.ok()) ++answered;
        all_done.notify_all();
      });
    }
    std::unique_lock<std::mutex> lock(mutex);
    all_done.wait_for(lock, 10s, [&] { return answered == 40; });
    CHECK(answered == 40);
    // One at a time would take 12 s.
    CHECK(std::chrono::steady_clock::now() - begin < 6s);
  }

  SECTION("a cancel mid-stream ends the call at once; the upstream serves on") {
    StandInBehaviour trickle;
    trickle.chunks = 100;
    trickle.chunk_gap = 100ms;
    stand_in.set_behaviour(trickle);
    auto cancel = std::make_shared<torouter::CancelSignal>();
    Request r = request("hi");
    r.cancel = cancel;
    std::promise<Response> ended;
    std::atomic<int> pieces{0};
    upstream.stream_async(
        r, [&](std::string_view) { ++pieces; }, {},
        [&](Response response) { ended.set_value(std::move(response)); });
    while (pieces.load() == 0) std::this_thread::sleep_for(5ms);
    const auto cancelled_at = std::chrono::steady_clock::now();
    cancel->cancel();
    Response response = ended.get_future().get();
    CHECK(std::chrono::steady_clock::now() - cancelled_at < 2s);  // not the 10 s stream
    CHECK(response.failure == FailureKind::TransportError);
    CHECK_THAT(response.error_message, Contains("cancelled"));
    const int seen = pieces.load();
    std::this_thread::sleep_for(300ms);
    CHECK(pieces.load() == seen);  // nothing after the cancel

    stand_in.set_behaviour(StandInBehaviour());
    CHECK(upstream.complete(request("again")).ok());
  }
}

TEST_CASE("openai upstream: https through the same client, the certificate checked", "[openai]") {
  namespace fs = std::filesystem;
  const fs::path dir = torouter::testing::process_temp_dir("openai_tls");
  const auto good = torouter::testing::make_certificate(dir, "IP:127.0.0.1,DNS:localhost");
  const auto other = torouter::testing::make_certificate(dir, "DNS:example.invalid", "other");
  StandInUpstream stand_in("s");
  REQUIRE(stand_in.start() > 0);
  torouter::testing::TlsRelay relay(good, stand_in.port());
  torouter::testing::TlsRelay wrong_name(other, stand_in.port());

  UpstreamOptions o = options_for(stand_in);
  o.base_url = "https://127.0.0.1:" + std::to_string(relay.port()) + "/v1";
  o.ca_file = good.certificate;
  Upstream upstream(o);
  Response plain = upstream.complete(request("hello"));
  REQUIRE(plain.ok());
  CHECK_THAT(plain.text, Contains("hello"));
  std::string streamed;
  Response end = upstream.stream(request("hello"), [&](std::string_view c) { streamed += c; });
  CHECK(end.ok());
  CHECK_THAT(streamed, Contains("hello"));
  CHECK(upstream.complete(request("kept alive")).ok());

  SECTION("a certificate no configured authority signed is refused") {
    UpstreamOptions system_cas = o;
    system_cas.ca_file.clear();
    Response r = Upstream(system_cas).complete(request("hello"));
    CHECK(r.failure == FailureKind::ServerError);
    CHECK_THAT(r.error_message, Contains("TLS handshake"));
  }
  SECTION("a certificate for another name is refused") {
    UpstreamOptions mismatched = o;
    mismatched.base_url = "https://127.0.0.1:" + std::to_string(wrong_name.port()) + "/v1";
    mismatched.ca_file = other.certificate;
    Response r = Upstream(mismatched).complete(request("hello"));
    CHECK(r.failure == FailureKind::ServerError);
    CHECK_THAT(r.error_message, Contains("TLS handshake"));
  }
  SECTION("an unreadable CA file is a configuration error") {
    UpstreamOptions missing = o;
    missing.ca_file = (dir / "absent.pem").string();
    CHECK_THROWS_WITH(Upstream(missing), Contains("ca_file") && Contains("absent.pem"));
  }
  fs::remove_all(dir);
}

TEST_CASE("IoThreads::usable_cores counts the cores this thread may run on, not the machine's",
          "[openai]") {
  cpu_set_t before;
  CPU_ZERO(&before);
  REQUIRE(::sched_getaffinity(0, sizeof(before), &before) == 0);
  REQUIRE(torouter::openai::IoThreads::usable_cores() ==
          static_cast<std::size_t>(CPU_COUNT(&before)));
  // Narrowed to one allowed core, as `taskset -c N` or a one-core cpuset
  // would start the server.
  int first = 0;
  while (!CPU_ISSET(first, &before)) ++first;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  REQUIRE(::sched_setaffinity(0, sizeof(one), &one) == 0);
  const std::size_t narrowed = torouter::openai::IoThreads::usable_cores();
  REQUIRE(::sched_setaffinity(0, sizeof(before), &before) == 0);
  CHECK(narrowed == 1);
}
