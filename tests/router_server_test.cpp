// torouter-server over real HTTP on loopback: stand-in upstreams on ephemeral
// ports, the server in-process (and once as a child process), real requests.
// Timing is never asserted tightly: the machine may be loaded.
#include "router_server.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <simdjson.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "asio_event_loop.hpp"
#include "open_files.hpp"
#include "stand_in_upstream.hpp"
#include "support/default_router_files.hpp"
#include "support/raw_http.hpp"
#include "support/synthetic_data.hpp"
#include "support/temp_dir.hpp"
#include "support/test_certificate.hpp"
#include "torouter/error.hpp"
#include "torouter/openai/upstream.hpp"
#include "torouter/train.hpp"
#include "torouter/trainable_scorer.hpp"

using Catch::Matchers::Contains;
using torouter::server::RouterServer;
using torouter::server::ServerConfig;
using torouter::server::StandInBehaviour;
using torouter::server::StandInUpstream;
using Kind = StandInBehaviour::Kind;
using torouter::test::HttpHeaders;
using torouter::test::HttpReply;
using torouter::test::RawHttpConnection;
using namespace std::chrono_literals;

namespace {

const std::string& kModel = torouter::testing::kDefaultRouterModel;
const std::string& kExpertsFile = torouter::testing::kDefaultRouterExperts;
// Three of the default router's experts: gemma is the cheapest (0.1/0.1),
// nemotron the dearest (0.9/0.9).
const std::vector<std::string> kExperts = {"qwen2.5-7b-instruct", "gemma-2-9b-it",
                                           "llama-3.3-nemotron-super-49b-v1"};
const std::string kPrompt = "Prove that the square root of 2 is irrational, step by step.";

StandInBehaviour behaviour(Kind kind, int status = 200, std::string retry_after = {},
                           std::string body = {}) {
  StandInBehaviour b;
  b.kind = kind;
  b.status = status;
  b.retry_after = std::move(retry_after);
  b.body = std::move(body);
  return b;
}

std::string chat_body(const std::string& model, const std::string& prompt, bool stream = false) {
  return "{\"model\":\"" + model +
         "\",\"temperature\":0.25,\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
         "{\"role\":\"user\",\"content\":\"" + prompt + "\"}]" +
         (stream ? ",\"stream\":true}" : "}");
}

// Stand-ins for three experts, and the router server in front of them.
struct Fixture {
  // With `tls`, the stand-ins and the server serve HTTPS with that
  // certificate, and the server trusts it for its upstream calls.
  explicit Fixture(const std::function<void(ServerConfig&)>& tweak = {},
                   const torouter::testing::Certificate* tls = nullptr) {
    ::setenv("TOROUTER_TEST_UPSTREAM_KEY", "sk-upstream", 1);
    ServerConfig config;
    config.origin = "test-config";
    config.port = 0;
    config.threads = 16;
    config.router_model = kModel;
    config.experts_file = kExpertsFile;
    config.policy.lambda_cost = 0;
    config.router.initial_backoff = 10ms;
    config.router.max_backoff = 50ms;
    config.router.failures_before_cooldown = 1000;
    config.router.attempt_timeout = 20s;
    config.router.invoke_timeout = 60s;
    for (const auto& name : kExperts) {
      auto upstream = tls ? std::make_unique<StandInUpstream>(name, 1, tls->certificate, tls->key)
                          : std::make_unique<StandInUpstream>(name);
      REQUIRE(upstream->start() > 0);
      torouter::server::ExpertConfig e;
      e.name = name;
      e.upstream.base_url = upstream->base_url();
      e.upstream.model = "up-" + name;
      e.upstream.api_key_env = "TOROUTER_TEST_UPSTREAM_KEY";
      e.upstream.read_timeout = 10s;
      if (tls) e.upstream.ca_file = tls->certificate;
      config.experts.push_back(e);
      upstreams[name] = std::move(upstream);
    }
    if (tls) {
      config.tls_cert_file = tls->certificate;
      config.tls_key_file = tls->key;
    }
    if (tweak) tweak(config);
    server = std::make_unique<RouterServer>(config);
    port = server->start();
    REQUIRE(port > 0);
  }

  std::optional<HttpReply> post(const std::string& body, const HttpHeaders& headers = {}) const {
    return torouter::test::http_call(port, "POST", "/v1/chat/completions", headers, body);
  }

  std::optional<HttpReply> get(const std::string& path, const HttpHeaders& headers = {}) const {
    return torouter::test::http_call(port, "GET", path, headers);
  }

  // The expert the router picks for `prompt` when every upstream is healthy.
  std::string routed(const std::string& prompt) const {
    return routed_body(chat_body("router", prompt));
  }
  // The same for a whole request body.
  std::string routed_body(const std::string& body) const {
    auto res = post(body);
    REQUIRE(res);
    REQUIRE(res->status == 200);
    return res->header("X-Torouter-Expert");
  }

  std::size_t total_requests() const {
    std::size_t n = 0;
    for (const auto& [name, u] : upstreams) n += u->requests();
    return n;
  }

  std::map<std::string, std::unique_ptr<StandInUpstream>> upstreams;
  std::unique_ptr<RouterServer> server;
  int port = -1;
};

simdjson::dom::element parse(simdjson::dom::parser& parser, const std::string& text) {
  simdjson::dom::element doc;
  INFO(text);
  REQUIRE(parser.parse(text).get(doc) == simdjson::SUCCESS);
  return doc;
}

std::string str(simdjson::dom::element e) {
  std::string_view s;
  if (e.get(s)) return "<not a string>";
  return std::string(s);
}

// The `data:` payloads of an SSE body, in order.
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const auto end = body.find("\n\n", at);
    out.push_back(body.substr(at + 6, end - at - 6));
    at = end == std::string::npos ? body.size() : end;
  }
  return out;
}

// A small model over kExperts, trained on synthetic prompts: a valid model
// whose version differs from the default router's.
std::string small_model(const std::filesystem::path& dir) {
  const auto set = torouter::make_training_set(kExperts, torouter::testing::synthetic_rows(120, 1),
                                               "synthetic");
  auto scorer = torouter::make_scorer("knn:5");
  torouter::TrainOptions options;
  options.threads = 1;
  scorer->train(set, options);
  const auto path = (dir / "small.tormodel").string();
  torouter::save_model(*scorer, path);
  return path;
}

// The decision log's lines once it has `count` (it is written by a thread
// of its own), or what it has after 10 s.
std::vector<std::string> log_lines(const std::string& path, std::size_t count) {
  std::vector<std::string> lines;
  for (int i = 0; i < 500 && lines.size() < count; ++i) {
    std::this_thread::sleep_for(20ms);
    lines.clear();
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
  }
  return lines;
}

std::string version_of(const std::string& model) {
  return std::string(torouter::load_model(model).scorer->version());
}

}  // namespace

TEST_CASE("router server: routes a request and tells the decision in headers", "[server]") {
  Fixture f;
  auto res = f.post(chat_body("router", kPrompt));
  REQUIRE(res);
  REQUIRE(res->status == 200);
  const std::string expert = res->header("X-Torouter-Expert");
  REQUIRE(f.upstreams.count(expert) == 1);
  CHECK(res->header("X-Torouter-Routed-Expert") == expert);
  CHECK(res->header("X-Torouter-Reason") == "highest_utility");
  CHECK(res->header("X-Torouter-Attempts") == "1");
  CHECK(std::stod(res->header("X-Torouter-Predicted-Quality")) > 0.0);
  const double expected = std::stod(res->header("X-Torouter-Expected-Quality"));
  CHECK(expected >= 0.0);
  CHECK(expected <= 1.0);
  CHECK(std::stod(res->header("X-Torouter-Predicted-Cost-Usd")) > 0.0);
  CHECK(std::stod(res->header("X-Torouter-Cost-Usd")) > 0.0);
  CHECK(res->header("X-Torouter-Model-Version") == torouter::load_model(kModel).scorer->version());

  simdjson::dom::parser parser;
  auto doc = parse(parser, res->body);
  CHECK(str(doc["object"]) == "chat.completion");
  CHECK(str(doc["model"]) == expert);
  CHECK(str(doc["choices"].at(0)["message"]["role"]) == "assistant");
  CHECK(str(doc["choices"].at(0)["message"]["content"]) == "up-" + expert + " answers: " + kPrompt);
  CHECK(str(doc["torouter"]["attempts"].at(0)["outcome"]) == "answered");
  std::uint64_t tokens = 0;
  CHECK(doc["usage"]["total_tokens"].get(tokens) == simdjson::SUCCESS);
  CHECK(tokens > 0);

  // The upstream got the whole conversation, the client's parameters, its
  // own model id and the key from the configured environment variable.
  const StandInUpstream& up = *f.upstreams[expert];
  CHECK(up.requests() == 1);
  CHECK(up.last_authorization() == "Bearer sk-upstream");
  simdjson::dom::parser parser2;
  auto sent = parse(parser2, up.last_body());
  CHECK(str(sent["model"]) == "up-" + expert);
  CHECK(str(sent["messages"].at(0)["content"]) == "Be brief.");
  CHECK(str(sent["messages"].at(1)["content"]) == kPrompt);
  double temperature = 0;
  CHECK(sent["temperature"].get(temperature) == simdjson::SUCCESS);
  CHECK(temperature == Approx(0.25));
}

TEST_CASE("router server: a streamed call asks its upstream for the token counts", "[server]") {
  // OpenAI and vLLM put usage in a stream only when asked; without it a
  // stream's cost is an estimate.
  const bool asked = GENERATE(true, false);
  Fixture f([asked](ServerConfig& c) {
    for (auto& e : c.experts) e.upstream.stream_usage = asked;
  });
  auto res = f.post(chat_body("router", kPrompt, true));
  REQUIRE(res);
  REQUIRE(res->status == 200);
  const std::string sent = f.upstreams[res->header("X-Torouter-Expert")]->last_body();
  INFO(sent);
  CHECK((sent.find(R"("stream_options":{"include_usage":true})") != std::string::npos) == asked);
  CHECK_THAT(sent, Contains(R"("stream":true)"));
}

TEST_CASE("router server: router:<lambda> sets the cost weight, a name bypasses routing",
          "[server]") {
  Fixture f;
  // A huge cost weight makes the cheapest expert win.
  auto cheap = f.post(chat_body("router:1e9", kPrompt));
  REQUIRE(cheap);
  REQUIRE(cheap->status == 200);
  CHECK(cheap->header("X-Torouter-Expert") == "gemma-2-9b-it");
  CHECK(cheap->header("X-Torouter-Lambda-Cost") == "1000000000");

  auto bypass = f.post(chat_body("llama-3.3-nemotron-super-49b-v1", "hello there"));
  REQUIRE(bypass);
  REQUIRE(bypass->status == 200);
  CHECK(bypass->header("X-Torouter-Expert") == "llama-3.3-nemotron-super-49b-v1");
  CHECK(bypass->header("X-Torouter-Reason") == "bypass");
  CHECK(bypass->header("X-Torouter-Attempts") == "1");
  CHECK(f.upstreams["llama-3.3-nemotron-super-49b-v1"]->requests() == 1);
  // A named call has no routed pick: no header and no trace names one, nor
  // gives the routed pick's expected quality, even when it names the
  // expert the router would have picked.
  const std::string top = f.routed("hello there");
  auto named_top = f.post(chat_body(top, "hello there"));
  REQUIRE(named_top);
  REQUIRE(named_top->status == 200);
  for (const auto& named : {*bypass, *named_top}) {
    CHECK_FALSE(named.has_header("X-Torouter-Routed-Expert"));
    CHECK_FALSE(named.has_header("X-Torouter-Expected-Quality"));
    CHECK_THAT(named.body, Contains("\"routed_expert\":null"));
  }

  for (const char* model : {"router:", "router:abc", "router:-1", "router:1e999"}) {
    auto bad = f.post(chat_body(model, "hi"));
    REQUIRE(bad);
    CHECK(bad->status == 400);
    CHECK_THAT(bad->body, Contains("\"param\":\"model\""));
  }
  auto unknown = f.post(chat_body("gpt-17", "hi"));
  REQUIRE(unknown);
  CHECK(unknown->status == 404);
  CHECK_THAT(unknown->body, Contains("model_not_found"));
}

TEST_CASE("router server: router:q>=<floor> picks the cheapest expert above the floor",
          "[server]") {
  Fixture f;  // lambda 0 by default: plain "router" picks the best predicted
  const std::string best = f.routed(kPrompt);
  simdjson::dom::parser parser;

  // Every expert reaches a floor of 0: the cheapest answers.
  auto zero = f.post(chat_body("router:q>=0", kPrompt));
  REQUIRE(zero);
  REQUIRE(zero->status == 200);
  CHECK(zero->header("X-Torouter-Expert") == "gemma-2-9b-it");
  CHECK(zero->header("X-Torouter-Reason") == "cheapest_above_floor");
  CHECK(zero->header("X-Torouter-Quality-Floor") == "0");
  CHECK(double(parse(parser, zero->body)["torouter"]["quality_floor"]) == 0.0);

  // Nobody is predicted to reach 1: the best predicted answers.
  auto one = f.post(chat_body("router:q>=1", kPrompt));
  REQUIRE(one);
  REQUIRE(one->status == 200);
  CHECK(one->header("X-Torouter-Expert") == best);
  CHECK(one->header("X-Torouter-Reason") == "floor_not_reached");
  CHECK(one->header("X-Torouter-Quality-Floor") == "1");

  auto plain = f.post(chat_body("router", kPrompt));
  REQUIRE(plain);
  CHECK_FALSE(plain->has_header("X-Torouter-Quality-Floor"));
  CHECK(parse(parser, plain->body)["torouter"]["quality_floor"].is_null());

  for (const char* model : {"router:q>=1.01", "router:q>=-1", "router:q>=x"}) {
    auto bad = f.post(chat_body(model, "hi"));
    REQUIRE(bad);
    CHECK(bad->status == 400);
    CHECK_THAT(bad->body, Contains("\"param\":\"model\"") && Contains("quality floor"));
  }
  CHECK(f.total_requests() == 4);  // the bad floors reached no upstream
}

TEST_CASE("router server: the config's quality floor applies to plain router", "[server]") {
  Fixture f([](ServerConfig& config) { config.policy.quality_floor = 0.0; });
  auto plain = f.post(chat_body("router", kPrompt));
  REQUIRE(plain);
  REQUIRE(plain->status == 200);
  CHECK(plain->header("X-Torouter-Expert") == "gemma-2-9b-it");
  CHECK(plain->header("X-Torouter-Reason") == "cheapest_above_floor");
  CHECK(plain->header("X-Torouter-Quality-Floor") == "0");
  // "router:<lambda>" asks for cost-weighted routing instead: no floor.
  auto weighted = f.post(chat_body("router:0", kPrompt));
  REQUIRE(weighted);
  REQUIRE(weighted->status == 200);
  CHECK(weighted->header("X-Torouter-Reason") == "highest_utility");
  CHECK_FALSE(weighted->has_header("X-Torouter-Quality-Floor"));
}

TEST_CASE("router server: a request's needs exclude experts that lack them", "[server]") {
  // qwen takes text only, gemma images, nemotron tools; each has 4096 tokens.
  Fixture f([](ServerConfig& config) {
    for (auto& e : config.experts) {
      e.capabilities = torouter::Capabilities{};
      e.context_window_tokens = 4096;
      if (e.name == "gemma-2-9b-it") e.capabilities->images = true;
      if (e.name == "llama-3.3-nemotron-super-49b-v1") e.capabilities->tools = true;
    }
  });
  const std::string user = R"({"role":"user","content":"Describe it."})";
  auto image = f.post(
      R"({"model":"router","messages":[{"role":"user","content":[{"type":"text","text":"What is)"
      R"( this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]})");
  REQUIRE(image);
  REQUIRE(image->status == 200);
  CHECK(image->header("X-Torouter-Expert") == "gemma-2-9b-it");

  auto tools = f.post(R"({"model":"router","tools":[{"type":"function","function":{"name":"f"}}],)"
                      R"("messages":[)" +
                      user + "]}");
  REQUIRE(tools);
  REQUIRE(tools->status == 200);
  CHECK(tools->header("X-Torouter-Expert") == "llama-3.3-nemotron-super-49b-v1");
  CHECK(tools->header("X-Torouter-Reason") == "only_eligible");

  const std::size_t before = f.total_requests();
  auto json = f.post(R"({"model":"router","response_format":{"type":"json_object"},"messages":[)" +
                     user + "]}");
  REQUIRE(json);
  CHECK(json->status == 400);
  CHECK_THAT(json->body,
             Contains("no_capable_expert") && Contains("\"param\":\"response_format.type\""));

  auto direct = f.post(R"({"model":"qwen2.5-7b-instruct","tools":[{"type":"function"}],)"
                       R"("messages":[)" +
                       user + "]}");
  REQUIRE(direct);
  CHECK(direct->status == 400);
  CHECK_THAT(direct->body, Contains("capability_not_supported") && Contains("\"param\":\"tools\""));

  auto too_long = f.post(R"({"model":"router","max_tokens":5000,"messages":[)" + user + "]}");
  REQUIRE(too_long);
  CHECK(too_long->status == 400);
  CHECK_THAT(too_long->body,
             Contains("context_length_exceeded") && Contains("\"param\":\"max_tokens\""));
  // The error names the field the request used.
  auto too_long_completion = f.post(R"({"model":"router","max_completion_tokens":5000,)"
                                    R"("messages":[)" +
                                    user + "]}");
  REQUIRE(too_long_completion);
  CHECK(too_long_completion->status == 400);
  CHECK_THAT(too_long_completion->body, Contains("\"param\":\"max_completion_tokens\"") &&
                                            Contains("plus max_completion_tokens (5000)") &&
                                            !Contains("max_tokens ("));
  CHECK(f.total_requests() == before);  // refused before any upstream call
}

TEST_CASE("router server: fails over from failing upstreams", "[server]") {
  Fixture f([](ServerConfig& c) {
    for (auto& e : c.experts) e.upstream.read_timeout = 700ms;
  });
  const std::string first = f.routed(kPrompt);

  auto expect_failover = [&](StandInBehaviour failure, const std::string& kind,
                             const std::string& attempts = "3") {
    INFO("failure kind " << kind);
    // Two attempts per expert: both fail, then the next expert answers.
    f.upstreams[first]->push_behaviour(failure);
    f.upstreams[first]->push_behaviour(failure);
    auto res = f.post(chat_body("router", kPrompt));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    CHECK(res->header("X-Torouter-Routed-Expert") == first);
    CHECK(res->header("X-Torouter-Expert") != first);
    CHECK(res->header("X-Torouter-Attempts") == attempts);
    CHECK_THAT(res->body, Contains("\"failure\":\"" + kind + "\""));
    // Every attempt, on either expert, sent the whole conversation.
    const std::string answered = res->header("X-Torouter-Expert");
    REQUIRE(f.upstreams.count(answered) == 1);
    for (const std::string& expert : {first, answered}) {
      CHECK_THAT(f.upstreams[expert]->last_body(), Contains("\"content\":\"Be brief.\""));
    }
  };
  SECTION("5xx") { expect_failover(behaviour(Kind::Status, 503), "server_error"); }
  SECTION("dropped connection") { expect_failover(behaviour(Kind::Drop), "server_error"); }
  SECTION("timeout") {
    StandInBehaviour slow;
    slow.delay = 2000ms;
    expect_failover(slow, "timeout");
  }
  SECTION("429 with a Retry-After longer than the router waits") {
    // Not retried: the router fails over at once.
    expect_failover(behaviour(Kind::Status, 429, "3600"), "rate_limited", "2");
  }
  SECTION("429 with a short Retry-After is waited out on the same expert") {
    f.upstreams[first]->push_behaviour(behaviour(Kind::Status, 429, "1"));
    auto res = f.post(chat_body("router", kPrompt));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    CHECK(res->header("X-Torouter-Expert") == first);
    CHECK(res->header("X-Torouter-Attempts") == "2");
    CHECK_THAT(res->body, Contains("\"waited_ms\":1000"));
  }
  SECTION("context too long fails over at once") {
    f.upstreams[first]->push_behaviour(behaviour(
        Kind::Status, 400, "",
        R"({"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}})"));
    auto res = f.post(chat_body("router", kPrompt));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    CHECK(res->header("X-Torouter-Expert") != first);
    CHECK(res->header("X-Torouter-Attempts") == "2");
    CHECK_THAT(res->body, Contains("\"failure\":\"context_too_long\""));
  }
}

TEST_CASE("router server: upstreams that all answer too late give a 504", "[server]") {
  Fixture f([](ServerConfig& c) { c.router.attempt_timeout = 200ms; });
  StandInBehaviour late;
  late.delay = 1000ms;
  for (auto& [name, u] : f.upstreams) u->set_behaviour(late);
  auto res = f.post(chat_body("router", kPrompt));
  REQUIRE(res);
  CHECK(res->status == 504);
  simdjson::dom::parser parser;
  auto doc = parse(parser, res->body);
  CHECK(str(doc["error"]["code"]) == "upstream_timeout");
  CHECK_THAT(str(doc["error"]["message"]), Contains("timeout"));
}

TEST_CASE("router server: failures of every expert become OpenAI error objects", "[server]") {
  Fixture f;
  SECTION("all upstreams down: 502") {
    for (auto& [name, u] : f.upstreams) u->set_behaviour(behaviour(Kind::Status, 500));
    auto res = f.post(chat_body("router", kPrompt));
    REQUIRE(res);
    CHECK(res->status == 502);
    simdjson::dom::parser parser;
    auto doc = parse(parser, res->body);
    CHECK(str(doc["error"]["code"]) == "upstream_error");
    CHECK_THAT(str(doc["error"]["message"]), Contains("HTTP 500"));
    CHECK(res->header("X-Torouter-Attempts") == "6");
  }
  SECTION("what an upstream says of its own failure stays in the server's log") {
    for (auto& [name, u] : f.upstreams) {
      u->set_behaviour(behaviour(Kind::Status, 503, "",
                                 R"({"error":{"message":"backend 10.9.8.7:8000 overloaded"}})"));
    }
    auto res = f.post(chat_body("router", kPrompt));
    REQUIRE(res);
    CHECK(res->status == 502);
    CHECK_THAT(res->body, Contains("HTTP 503: <in the server's log>"));
    CHECK_THAT(res->body, !Contains("10.9.8.7"));
    // The same for an error event in a stream.
    for (auto& [name, u] : f.upstreams) {
      u->set_behaviour(
          behaviour(Kind::Status, 200, "",
                    "data: {\"error\":{\"message\":\"shard gw-9.internal down\"}}\n\n"));
    }
    auto streamed = f.post(chat_body("router", kPrompt, true));
    REQUIRE(streamed);
    CHECK(streamed->status == 502);
    CHECK_THAT(streamed->body, Contains("error event in stream: <in the server's log>"));
    CHECK_THAT(streamed->body, !Contains("gw-9.internal"));
  }
  SECTION("an error event after the first chunk: the stream's last event is cut too") {
    for (auto& [name, u] : f.upstreams) {
      u->set_behaviour(
          behaviour(Kind::Status, 200, "",
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"half\"}}]}\n\n"
                    "data: {\"error\":{\"message\":\"shard gw-9.internal down\"}}\n\n"));
    }
    auto res = f.post(chat_body("router", kPrompt, true));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const auto events = sse_data(res->body);
    REQUIRE(!events.empty());
    CHECK_THAT(events.back(), Contains("stream_broken") &&
                                  Contains("error event in stream: <in the server's log>"));
    CHECK_THAT(res->body, !Contains("gw-9.internal"));
  }
  SECTION("an answer after a failover: its trace cuts the failed call's words") {
    const std::string first = f.routed(kPrompt);
    f.upstreams[first]->push_behaviour(behaviour(
        Kind::Status, 503, "", R"({"error":{"message":"backend 10.9.8.7:8000 overloaded"}})"));
    auto res = f.post(chat_body("router", kPrompt));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    CHECK(res->header("X-Torouter-Attempts") != "1");
    CHECK_THAT(res->body, Contains("HTTP 503: <in the server's log>"));
    CHECK_THAT(res->body, !Contains("10.9.8.7"));
  }
  SECTION("a 413 is the request's fault, but its page stays in the log") {
    for (auto& [name, u] : f.upstreams) {
      u->set_behaviour(behaviour(Kind::Status, 413, "",
                                 "<html><center>nginx/1.22.1 at gw-7.internal</center></html>"));
    }
    auto res = f.post(chat_body("router", kPrompt));
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK_THAT(res->body, Contains("context_length_exceeded") && Contains("HTTP 413"));
    CHECK_THAT(res->body, !Contains("gw-7.internal"));
  }
  SECTION("upstreams that refuse the server's own key: 502, not the client's fault") {
    for (auto& [name, u] : f.upstreams) {
      u->set_behaviour(
          behaviour(Kind::Status, 401, "",
                    R"({"error":{"message":"Incorrect API key provided: sk-abc***xyz"}})"));
    }
    auto res = f.post(chat_body("router", kPrompt));
    REQUIRE(res);
    CHECK(res->status == 502);
    CHECK_THAT(res->body, Contains("upstream_error") && Contains("HTTP 401"));
    CHECK_THAT(res->body, !Contains("sk-abc"));
  }
  SECTION("all upstreams rate limited: 429 with the soonest Retry-After") {
    f.upstreams.begin()->second->set_behaviour(behaviour(
        Kind::Status, 429, "40", R"({"error":{"message":"Rate limit reached for org-secret"}})"));
    for (auto& [name, u] : f.upstreams) {
      if (u != f.upstreams.begin()->second) u->set_behaviour(behaviour(Kind::Status, 429, "30"));
    }
    auto res = f.post(chat_body("router", kPrompt));
    REQUIRE(res);
    CHECK(res->status == 429);
    CHECK(res->header("Retry-After") == "30");
    CHECK_THAT(res->body, Contains("upstream_rate_limited"));
    CHECK_THAT(res->body, !Contains("org-secret"));
  }
  SECTION("experts that share an upstream: the error names the one called") {
    Fixture g(
        [&](ServerConfig& c) { c.experts[1].upstream.base_url = c.experts[0].upstream.base_url; });
    g.upstreams[kExperts[0]]->stop();
    auto res = g.post(chat_body(kExperts[1], kPrompt));
    REQUIRE(res);
    CHECK(res->status == 502);
    CHECK_THAT(res->body, Contains("cannot connect to <upstream of " + kExperts[1] + ">"));
    CHECK_THAT(res->body, !Contains("<upstream of " + kExperts[0] + ">"));
  }
  SECTION("an upstream URL that begins another's: the longer is replaced whole") {
    Fixture g([&](ServerConfig& c) {
      c.experts[1].upstream.base_url = c.experts[0].upstream.base_url + "0";
    });
    g.upstreams[kExperts[0]]->stop();
    auto res = g.post(chat_body(kExperts[1], kPrompt));
    REQUIRE(res);
    CHECK(res->status == 502);
    CHECK_THAT(res->body, Contains("cannot connect to <upstream of " + kExperts[1] + ">:"));
  }
  SECTION("upstreams that cannot be reached: their URLs stay out of the answer") {
    for (auto& [name, u] : f.upstreams) u->stop();
    auto res = f.post(chat_body("router", kPrompt));
    REQUIRE(res);
    CHECK(res->status == 502);
    CHECK_THAT(res->body, Contains("cannot connect to <upstream of "));
    CHECK_THAT(res->body, !Contains("127.0.0.1"));
  }
  SECTION("bypass to an expert whose context is too small: 400") {
    f.upstreams["gemma-2-9b-it"]->set_behaviour(
        behaviour(Kind::Status, 400, "", R"({"error":{"message":"prompt is too long"}})"));
    auto res = f.post(chat_body("gemma-2-9b-it", kPrompt));
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK_THAT(res->body, Contains("context_length_exceeded"));
    // What to fix in the request: the upstream's words reach the client.
    CHECK_THAT(res->body, Contains("HTTP 400: prompt is too long"));
  }
  SECTION("no eligible expert: 503") {
    Fixture g([](ServerConfig& c) { c.policy.max_cost_usd = 1e-12; });
    auto res = g.post(chat_body("router", kPrompt));
    REQUIRE(res);
    CHECK(res->status == 503);
    CHECK_THAT(res->body, Contains("no_eligible_expert"));
    CHECK(g.total_requests() == 0);
  }
}

// The content of a streamed answer: its chunks' deltas joined (each event a
// chat.completion.chunk).
std::string streamed_content(const std::string& body) {
  const auto events = sse_data(body);
  std::string joined;
  simdjson::dom::parser parser;
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    auto doc = parse(parser, events[i]);
    CHECK(str(doc["object"]) == "chat.completion.chunk");
    std::string_view piece;
    if (!doc["choices"].at(0)["delta"]["content"].get(piece)) joined += piece;
  }
  return joined;
}

TEST_CASE("router server: streams answers as server-sent events", "[server]") {
  Fixture f;
  const std::string first = f.routed(kPrompt);

  SECTION("a healthy stream") {
    auto res = f.post(chat_body("router", kPrompt, true));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    CHECK_THAT(res->header("Content-Type"), Contains("text/event-stream"));
    CHECK(res->header("X-Torouter-Expert") == first);
    const auto events = sse_data(res->body);
    REQUIRE(events.size() >= 3);
    CHECK(events.back() == "[DONE]");
    CHECK(streamed_content(res->body) == "up-" + first + " answers: " + kPrompt);
    simdjson::dom::parser parser;
    auto last = parse(parser, events[events.size() - 2]);
    CHECK(str(last["choices"].at(0)["finish_reason"]) == "stop");
    CHECK(str(last["torouter"]["expert"]) == first);
  }
  SECTION("stream_options.include_usage: the usage in an event of its own, as OpenAI's") {
    std::string body = chat_body("router", kPrompt, true);
    body.insert(body.size() - 1, ",\"stream_options\":{\"include_usage\":true}");
    auto res = f.post(body);
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const auto events = sse_data(res->body);
    REQUIRE(events.size() >= 4);
    CHECK(events.back() == "[DONE]");
    simdjson::dom::parser parser;
    auto usage = parse(parser, events[events.size() - 2]);
    CHECK(usage["choices"].get_array().value().size() == 0);
    CHECK(usage["usage"]["total_tokens"].get_uint64().value() > 0);
    CHECK(str(usage["id"]) == str(parse(parser, events[0])["id"]));
    auto last = parse(parser, events[events.size() - 3]);
    CHECK(str(last["choices"].at(0)["finish_reason"]) == "stop");
    // Every chunk before the usage event carries a null usage, as OpenAI's.
    for (std::size_t i = 0; i + 2 < events.size(); ++i) {
      INFO(events[i]);
      CHECK(parse(parser, events[i])["usage"].is_null());
    }
    CHECK(str(last["torouter"]["expert"]) == first);
    CHECK(streamed_content(res->body) == "up-" + first + " answers: " + kPrompt);
  }
  SECTION("fails over before the first chunk") {
    f.upstreams[first]->push_behaviour(behaviour(Kind::Status, 503));
    f.upstreams[first]->push_behaviour(behaviour(Kind::Status, 503));
    auto res = f.post(chat_body("router", kPrompt, true));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const std::string answered = res->header("X-Torouter-Expert");
    CHECK(answered != first);
    CHECK(res->header("X-Torouter-Attempts") == "3");
    CHECK(streamed_content(res->body) == "up-" + answered + " answers: " + kPrompt);
    CHECK(sse_data(res->body).back() == "[DONE]");
  }
  SECTION("breaks after the first chunk: an error event, no failover") {
    StandInBehaviour drop = behaviour(Kind::DropMidStream);
    drop.chunks = 3;
    f.upstreams[first]->push_behaviour(drop);
    const std::size_t before = f.total_requests();
    auto res = f.post(chat_body("router", kPrompt, true));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    CHECK(res->header("X-Torouter-Expert") == first);
    const auto events = sse_data(res->body);
    REQUIRE(events.size() >= 2);
    CHECK_THAT(events.front(), Contains("\"content\""));
    CHECK_THAT(events.back(), Contains("\"code\":\"stream_broken\""));
    CHECK_THAT(res->body, !Contains("[DONE]"));
    CHECK(f.total_requests() == before + 1);
    auto metrics = f.get("/metrics");
    REQUIRE(metrics);
    CHECK_THAT(metrics->body, Contains("torouter_stream_broken_total 1"));
  }
  SECTION("every expert failing before the first chunk: a plain error answer") {
    for (auto& [name, u] : f.upstreams) u->set_behaviour(behaviour(Kind::Status, 503));
    auto res = f.post(chat_body("router", kPrompt, true));
    REQUIRE(res);
    CHECK(res->status == 502);
    CHECK_THAT(res->header("Content-Type"), Contains("application/json"));
  }
}

TEST_CASE("router server: a named expert obeys the budget, its cap and its enabled flag",
          "[server]") {
  const std::string named = "llama-3.3-nemotron-super-49b-v1";
  SECTION("the budget refuses it: 429") {
    Fixture f([](ServerConfig& c) { c.router.budget_usd = 1e-12; });
    auto res = f.post(chat_body(named, kPrompt));
    REQUIRE(res);
    CHECK(res->status == 429);
    CHECK_THAT(res->body, Contains("budget_exhausted"));
    CHECK(f.upstreams[named]->requests() == 0);
    // Its headers describe the expert it named, as an answer's would, and
    // not the router's pick, which it never called.
    Fixture unlimited;
    REQUIRE(unlimited.routed(kPrompt) != named);
    auto answered = unlimited.post(chat_body(named, kPrompt));
    REQUIRE(answered);
    REQUIRE(answered->status == 200);
    CHECK(res->header("X-Torouter-Expert").empty());
    CHECK(res->header("X-Torouter-Predicted-Cost-Usd") ==
          answered->header("X-Torouter-Predicted-Cost-Usd"));
    CHECK(res->header("X-Torouter-Predicted-Quality") ==
          answered->header("X-Torouter-Predicted-Quality"));
  }
  SECTION("disabled: 503, naming why") {
    Fixture f([&](ServerConfig& c) {
      for (auto& e : c.experts) {
        if (e.name == named) e.enabled = false;
      }
    });
    auto res = f.post(chat_body(named, kPrompt));
    REQUIRE(res);
    CHECK(res->status == 503);
    CHECK_THAT(res->body, Contains("no_eligible_expert") && Contains("disabled"));
    CHECK(res->header("Retry-After").empty());  // waiting does not enable it
    CHECK(f.upstreams[named]->requests() == 0);
  }
  SECTION("at its cap: 503 once the capacity wait is over") {
    Fixture f([&](ServerConfig& c) {
      c.router.capacity_wait = 100ms;
      for (auto& e : c.experts) {
        if (e.name == named) e.max_concurrent_calls = 1;
      }
    });
    StandInBehaviour slow;
    slow.delay = 1500ms;
    f.upstreams[named]->push_behaviour(slow);
    std::thread first([&] { f.post(chat_body(named, "the first call")); });
    while (f.upstreams[named]->requests() == 0) std::this_thread::sleep_for(5ms);
    auto res = f.post(chat_body(named, kPrompt));
    first.join();
    REQUIRE(res);
    CHECK(res->status == 503);
    CHECK_THAT(res->body, Contains("at_capacity"));
    CHECK(res->header("Retry-After") == "1");  // a moment's refusal
    // Routing time is routing's: not the 100 ms spent waiting for a slot
    // (two routes, each well under a millisecond; the margin is for a
    // loaded machine under a sanitizer).
    auto metrics = f.get("/metrics");
    REQUIRE(metrics);
    const auto sum_at = metrics->body.find("torouter_route_latency_seconds_sum ");
    REQUIRE(sum_at != std::string::npos);
    CHECK(std::atof(metrics->body.c_str() + sum_at + 35) < 0.09);
  }
  SECTION("named calls turned off: 403") {
    Fixture f([](ServerConfig& c) { c.named_calls = false; });
    auto res = f.post(chat_body(named, kPrompt));
    REQUIRE(res);
    CHECK(res->status == 403);
    CHECK_THAT(res->body, Contains("named_calls_off"));
    CHECK(f.post(chat_body("router", kPrompt))->status == 200);
  }
}

TEST_CASE("router server: a stream runs as long as its chunks keep coming", "[server]") {
  // attempt_timeout bounds the first chunk and every gap, not the stream.
  Fixture f([](ServerConfig& c) { c.router.attempt_timeout = 400ms; });
  const std::string first = f.routed(kPrompt);
  StandInBehaviour slow;
  slow.chunks = 12;
  slow.chunk_gap = 100ms;  // 1.1 s in all, each gap a quarter of the timeout

  SECTION("a long healthy stream is not cut") {
    f.upstreams[first]->push_behaviour(slow);
    auto res = f.post(chat_body("router", kPrompt, true));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    CHECK(res->header("X-Torouter-Expert") == first);
    CHECK(streamed_content(res->body) == "up-" + first + " answers: " + kPrompt);
    CHECK(sse_data(res->body).back() == "[DONE]");
  }
  SECTION("a reasoning model's thinking, then its answer, is not cut") {
    // Events with no answer text (vLLM's reasoning_content) arrive 100 ms
    // apart for 0.8 s, twice the timeout, before the first word.
    StandInBehaviour thinking = slow;
    thinking.reasoning_chunks = 8;
    f.upstreams[first]->push_behaviour(thinking);
    const auto calls = [&f] {
      std::size_t n = 0;
      for (const auto& [name, u] : f.upstreams) n += u->requests();
      return n;
    };
    const std::size_t before = calls();
    auto res = f.post(chat_body("router", kPrompt, true));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    CHECK(res->header("X-Torouter-Expert") == first);
    CHECK(streamed_content(res->body) == "up-" + first + " answers: " + kPrompt);
    CHECK(sse_data(res->body).back() == "[DONE]");
    CHECK(calls() == before + 1);  // no failover
  }
  SECTION("a stream that stalls between chunks is cut") {
    StandInBehaviour stalled = slow;
    stalled.chunk_gap = 1500ms;
    f.upstreams[first]->push_behaviour(stalled);
    auto res = f.post(chat_body("router", kPrompt, true));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    CHECK_THAT(sse_data(res->body).back(), Contains("\"code\":\"stream_broken\""));
    CHECK_THAT(res->body, Contains("timeout"));
  }
}

TEST_CASE("router server: relays what an answer says beyond its text", "[server]") {
  Fixture f;
  const std::string first = f.routed(kPrompt);
  simdjson::dom::parser parser;
  SECTION("a plain answer: every choice, logprobs, reasoning, usage details, fingerprint") {
    StandInBehaviour rich;
    rich.verbatim_body = R"({"id":"up-1","object":"chat.completion","created":7,"model":"up",)"
                         R"("system_fingerprint":"fp_42","choices":[)"
                         R"({"index":0,"message":{"role":"assistant","content":"Yes.",)"
                         R"("reasoning_content":"Think."},"logprobs":{"content":[{"token":"Yes",)"
                         R"("logprob":-0.1}]},"finish_reason":"stop"},)"
                         R"({"index":1,"message":{"role":"assistant","content":"No."},)"
                         R"("logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,)"
                         R"("completion_tokens":4,"total_tokens":13,)"
                         R"("completion_tokens_details":{"reasoning_tokens":2}}})";
    f.upstreams[first]->push_behaviour(rich);
    auto res = f.post(R"({"model":"router","n":2,"logprobs":true,"messages":[{"role":"user",)"
                      R"("content":")" +
                      kPrompt + R"("}]})");
    REQUIRE(res);
    REQUIRE(res->status == 200);
    CHECK_THAT(f.upstreams[first]->last_body(), Contains("\"n\":2"));
    auto doc = parse(parser, res->body);
    // The server's own id: 128 random bits, never the upstream's.
    const std::string id(str(doc["id"]));
    CHECK(id.rfind("chatcmpl-torouter-", 0) == 0);
    CHECK(id.size() == 18 + 32);
    CHECK(id.find_first_not_of("0123456789abcdef", 18) == std::string::npos);
    auto again = f.post(chat_body("router", kPrompt));
    REQUIRE(again);
    CHECK(std::string(str(parse(parser, again->body)["id"])) != id);
    doc = parse(parser, res->body);
    CHECK(str(doc["model"]) == first);
    CHECK(str(doc["system_fingerprint"]) == "fp_42");
    CHECK(str(doc["choices"].at(0)["message"]["content"]) == "Yes.");
    CHECK(str(doc["choices"].at(0)["message"]["reasoning_content"]) == "Think.");
    CHECK(str(doc["choices"].at(0)["logprobs"]["content"].at(0)["token"]) == "Yes");
    CHECK(str(doc["choices"].at(1)["message"]["content"]) == "No.");
    CHECK(doc["usage"]["completion_tokens_details"]["reasoning_tokens"].get_uint64().value() == 2);
    CHECK(str(doc["torouter"]["expert"]) == first);
  }
  SECTION("a stream: reasoning and logprobs as they come, usage details at the end") {
    auto event = [](const std::string& rest) {
      return R"(data: {"id":"up-1","object":"chat.completion.chunk","created":7,"model":"up",)"
             R"("system_fingerprint":"fp_42","choices":)" +
             rest + "}\n\n";
    };
    StandInBehaviour rich;
    rich.verbatim_events = {
        event(R"([{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}])"),
        event(R"([{"index":0,"delta":{"reasoning_content":"Think."},"finish_reason":null}])"),
        event(R"([{"index":0,"delta":{"content":"Yes"},"logprobs":{"content":[{"token":"Yes",)"
              R"("logprob":-0.1}]},"finish_reason":null}])"),
        event(R"([{"index":0,"delta":{"content":"."},"finish_reason":null}])"),
        event(R"([{"index":0,"delta":{},"finish_reason":"stop"}])"),
        event(R"([],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,)"
              R"("completion_tokens_details":{"reasoning_tokens":2}})"),
        "data: [DONE]\n\n"};
    f.upstreams[first]->push_behaviour(rich);
    auto res = f.post(chat_body("router", kPrompt, true));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const auto events = sse_data(res->body);
    REQUIRE(events.size() == 6);  // role, thinking, two pieces, the end, [DONE]
    CHECK(str(parse(parser, events[0])["choices"].at(0)["delta"]["role"]) == "assistant");
    CHECK(str(parse(parser, events[1])["choices"].at(0)["delta"]["reasoning_content"]) == "Think.");
    auto piece = parse(parser, events[2])["choices"].at(0);
    CHECK(str(piece["delta"]["content"]) == "Yes");
    CHECK(str(piece["logprobs"]["content"].at(0)["token"]) == "Yes");
    CHECK(streamed_content(res->body) == "Yes.");
    auto end = parse(parser, events[4]);
    CHECK(str(end["choices"].at(0)["finish_reason"]) == "stop");
    CHECK(str(end["system_fingerprint"]) == "fp_42");
    CHECK(end["usage"]["completion_tokens_details"]["reasoning_tokens"].get_uint64().value() == 2);
    CHECK(str(end["torouter"]["expert"]) == first);
    CHECK(events[5] == "[DONE]");
  }
  SECTION("a stream of thinking alone is billed from its text, not from the relayed JSON") {
    StandInBehaviour thinking;
    for (int i = 0; i < 20; ++i) {
      thinking.verbatim_events.push_back(
          R"(data: {"choices":[{"index":0,"delta":{"reasoning_content":"Hm."}}]})"
          "\n\n");
    }
    thinking.verbatim_events.push_back(
        R"(data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})"
        "\n\n");
    thinking.verbatim_events.push_back("data: [DONE]\n\n");
    f.upstreams[first]->push_behaviour(thinking);
    auto res = f.post(chat_body("router", kPrompt, true));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const auto events = sse_data(res->body);
    REQUIRE(events.size() == 1 + 20 + 2);  // the role, the thinking, the end, [DONE]
    auto end = parse(parser, events[events.size() - 2]);
    // No content: nothing to estimate an output from (20 pieces of JSON
    // would have counted for about 200 tokens).
    CHECK(end["usage"]["completion_tokens"].get_uint64().value() == 0);
  }
  SECTION("a stream whose upstream counts no usage shows the counts billed") {
    StandInBehaviour bare;
    bare.verbatim_events = {R"(data: {"choices":[{"index":0,"delta":{"content":"Yes, it is."}}]})"
                            "\n\n",
                            R"(data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})"
                            "\n\n",
                            "data: [DONE]\n\n"};
    f.upstreams[first]->push_behaviour(bare);
    auto res = f.post(chat_body("router", kPrompt, true));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const auto events = sse_data(res->body);
    REQUIRE(events.size() >= 2);
    auto end = parse(parser, events[events.size() - 2]);
    CHECK(end["usage"]["prompt_tokens"].get_uint64().value() > 0);
    CHECK(end["usage"]["completion_tokens"].get_uint64().value() > 0);
    CHECK(end["torouter"]["cost_usd"].get_double().value() > 0);
  }
}

TEST_CASE("router server: stream_timeout_ms caps a whole stream", "[server]") {
  Fixture f([](ServerConfig& c) {
    c.router.attempt_timeout = 400ms;
    c.router.stream_timeout = 500ms;
  });
  const std::string first = f.routed(kPrompt);
  StandInBehaviour slow;
  slow.chunks = 12;
  slow.chunk_gap = 100ms;
  f.upstreams[first]->push_behaviour(slow);
  auto res = f.post(chat_body("router", kPrompt, true));
  REQUIRE(res);
  REQUIRE(res->status == 200);
  CHECK_THAT(sse_data(res->body).back(), Contains("\"code\":\"stream_broken\""));
  CHECK_THAT(res->body, !Contains("[DONE]"));
}

namespace {

const std::string kTools =
    R"("tools":[{"type":"function","function":{"name":"get_weather","parameters":)"
    R"({"type":"object","properties":{"city":{"type":"string"}}}}}],"tool_choice":"auto")";

std::string tools_body(const std::string& model, bool stream) {
  return "{\"model\":\"" + model + "\",\"messages\":[{\"role\":\"user\",\"content\":\"" + kPrompt +
         "\"}]," + kTools + (stream ? ",\"stream\":true}" : "}");
}

// An answer that calls two tools.
StandInBehaviour calls_tools() {
  StandInBehaviour b;
  b.tool_calls = {{"call_1", "function", "get_weather", R"({"city":"Paris"})"},
                  {"call_2", "function", "get_time", R"({"zone":"Europe/Paris"})"}};
  return b;
}

// Checks the two tool calls of `calls_tools()` in `calls` (a message's or a
// delta's `tool_calls`).
void check_tool_calls(simdjson::dom::element calls, bool with_index) {
  simdjson::dom::array list;
  REQUIRE(calls.get(list) == simdjson::SUCCESS);
  REQUIRE(list.size() == 2);
  CHECK(str(calls.at(0)["id"]) == "call_1");
  CHECK(str(calls.at(0)["type"]) == "function");
  CHECK(str(calls.at(0)["function"]["name"]) == "get_weather");
  CHECK(str(calls.at(0)["function"]["arguments"]) == R"({"city":"Paris"})");
  CHECK(str(calls.at(1)["id"]) == "call_2");
  CHECK(str(calls.at(1)["function"]["name"]) == "get_time");
  CHECK(str(calls.at(1)["function"]["arguments"]) == R"({"zone":"Europe/Paris"})");
  std::uint64_t index = 99;
  CHECK((calls.at(1)["index"].get(index) == simdjson::SUCCESS) == with_index);
  if (with_index) CHECK(index == 1);
}

}  // namespace

TEST_CASE("router server: relays tool calls and the finish reason", "[server]") {
  Fixture f;
  const std::string first = f.routed_body(tools_body("router", false));
  simdjson::dom::parser parser;

  SECTION("a plain answer that calls tools, after a failover") {
    f.upstreams[first]->push_behaviour(behaviour(Kind::Status, 503));
    f.upstreams[first]->push_behaviour(behaviour(Kind::Status, 503));
    for (auto& [name, u] : f.upstreams) u->set_behaviour(calls_tools());
    auto res = f.post(tools_body("router", false));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const std::string answered = res->header("X-Torouter-Expert");
    CHECK(answered != first);
    auto doc = parse(parser, res->body);
    auto choice = doc["choices"].at(0);
    CHECK(str(choice["finish_reason"]) == "tool_calls");
    CHECK(choice["message"]["content"].is_null());
    check_tool_calls(choice["message"]["tool_calls"], false);

    // The client's tools and tool choice went upstream, to every attempt.
    for (const std::string& expert : {first, answered}) {
      simdjson::dom::parser sent_parser;
      auto sent = parse(sent_parser, f.upstreams[expert]->last_body());
      CHECK(str(sent["tools"].at(0)["function"]["name"]) == "get_weather");
      CHECK(str(sent["tool_choice"]) == "auto");
    }
  }
  SECTION("a streamed answer that calls tools: whole calls in one delta, then the reason") {
    for (auto& [name, u] : f.upstreams) u->set_behaviour(calls_tools());
    auto res = f.post(tools_body("router", true));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const auto events = sse_data(res->body);
    REQUIRE(events.size() >= 3);
    CHECK(events.back() == "[DONE]");
    int deltas_with_calls = 0;
    for (std::size_t i = 0; i + 1 < events.size(); ++i) {
      auto doc = parse(parser, events[i]);
      auto calls = doc["choices"].at(0)["delta"]["tool_calls"];
      if (calls.error()) continue;
      ++deltas_with_calls;
      check_tool_calls(calls.value(), true);
    }
    CHECK(deltas_with_calls == 1);
    auto last = parse(parser, events[events.size() - 2]);
    CHECK(str(last["choices"].at(0)["finish_reason"]) == "tool_calls");
    CHECK(str(last["torouter"]["expert"]) == first);
  }
  SECTION("a streamed bypass call that only calls tools still says the role first") {
    f.upstreams["gemma-2-9b-it"]->set_behaviour(calls_tools());
    auto res = f.post(tools_body("gemma-2-9b-it", true));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    const auto events = sse_data(res->body);
    REQUIRE(events.size() == 3);
    auto calls = parse(parser, events[0]);
    CHECK(str(calls["choices"].at(0)["delta"]["role"]) == "assistant");
    check_tool_calls(calls["choices"].at(0)["delta"]["tool_calls"], true);
    auto last = parse(parser, events[1]);
    CHECK(str(last["choices"].at(0)["finish_reason"]) == "tool_calls");
  }
  SECTION("a text answer cut short says \"length\", plain and streamed") {
    StandInBehaviour cut;
    cut.finish_reason = "length";
    for (auto& [name, u] : f.upstreams) u->set_behaviour(cut);
    auto plain = f.post(chat_body("router", kPrompt));
    REQUIRE(plain);
    REQUIRE(plain->status == 200);
    auto doc = parse(parser, plain->body);
    CHECK(str(doc["choices"].at(0)["finish_reason"]) == "length");
    CHECK(str(doc["choices"].at(0)["message"]["content"]) ==
          "up-" + plain->header("X-Torouter-Expert") + " answers: " + kPrompt);
    CHECK(doc["choices"].at(0)["message"]["tool_calls"].error() == simdjson::NO_SUCH_FIELD);

    auto streamed = f.post(chat_body("router", kPrompt, true));
    REQUIRE(streamed);
    REQUIRE(streamed->status == 200);
    const auto events = sse_data(streamed->body);
    REQUIRE(events.size() >= 3);
    auto last = parse(parser, events[events.size() - 2]);
    CHECK(str(last["choices"].at(0)["finish_reason"]) == "length");
  }
}

TEST_CASE("router server: bearer keys, size limit and bad input", "[server]") {
  Fixture f([](ServerConfig& c) {
    c.api_keys = {"key-one", "key-two"};
    c.max_request_bytes = 4096;
  });
  const HttpHeaders good{{"Authorization", "Bearer key-two"}};

  SECTION("authentication") {
    auto none = f.post(chat_body("router", "hi"));
    REQUIRE(none);
    CHECK(none->status == 401);
    CHECK(none->header("WWW-Authenticate") == "Bearer");
    CHECK_THAT(none->body, Contains("invalid_api_key"));
    auto wrong = f.post(chat_body("router", "hi"), {{"Authorization", "Bearer key-three"}});
    REQUIRE(wrong);
    CHECK(wrong->status == 401);
    // A prefix or an extension of a key is no key; nor is a key of the
    // right length that differs only in its last byte.
    for (const char* near : {"key-tw", "key-twoo", "key-twp"}) {
      auto refused = f.post(chat_body("router", "hi"),
                            {{"Authorization", std::string("Bearer ") + near}});
      REQUIRE(refused);
      CHECK(refused->status == 401);
    }
    auto models = f.get("/v1/models");
    REQUIRE(models);
    CHECK(models->status == 401);
    auto ok = f.post(chat_body("router", "hi"), good);
    REQUIRE(ok);
    CHECK(ok->status == 200);
    // The scheme's name in any case (RFC 9110); the key as it is.
    auto lower = f.post(chat_body("router", "hi"), {{"Authorization", "bearer key-two"}});
    REQUIRE(lower);
    CHECK(lower->status == 200);
    auto key_case = f.post(chat_body("router", "hi"), {{"Authorization", "Bearer KEY-TWO"}});
    REQUIRE(key_case);
    CHECK(key_case->status == 401);
    auto health = f.get("/health");  // open, for load balancers, but says only "up"
    REQUIRE(health);
    CHECK(health->status == 200);
    CHECK(health->body == "{\"status\":\"ok\"}");
    auto wrong_key_health = f.get("/health", {{"Authorization", "Bearer key-three"}});
    REQUIRE(wrong_key_health);
    CHECK(wrong_key_health->body == "{\"status\":\"ok\"}");
    auto keyed_health = f.get("/health", good);  // the experts' state needs the key
    REQUIRE(keyed_health);
    CHECK_THAT(keyed_health->body, Contains("\"experts\":[") && Contains("\"model_version\""));
    CHECK(f.total_requests() == 2);  // the two with a key
  }
  SECTION("a client that waits for 100 Continue gets it only with a key") {
    const std::string body = chat_body("router", "hi");
    auto head = [&](const std::string& authorization) {
      return "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n" + authorization +
             "Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: " +
             std::to_string(body.size()) + "\r\n\r\n";
    };
    RawHttpConnection keyless(f.port, 10s);
    REQUIRE(keyless.send(head("")));
    const HttpReply refused = keyless.receive();  // no 100 first: the 401 itself
    CHECK(refused.status == 401);
    CHECK_THAT(refused.body, Contains("invalid_api_key"));
    CHECK(keyless.closed_by_server());  // its body was never read

    RawHttpConnection keyed(f.port, 10s);
    REQUIRE(keyed.send(head("Authorization: Bearer key-one\r\n")));
    CHECK(keyed.receive().status == 100);
    REQUIRE(keyed.send(body));
    CHECK(keyed.receive().status == 200);
    CHECK(f.total_requests() == 1);
  }
  SECTION("request size limit") {
    auto res = f.post(chat_body("router", std::string(10000, 'a')), good);
    REQUIRE(res);
    CHECK(res->status == 413);
    CHECK_THAT(res->body, Contains("request_too_large"));
    CHECK(f.total_requests() == 0);
  }
  SECTION("malformed JSON and missing fields") {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"{\"model\":\"router\",\"messages\":[", "invalid_json"},
        {"", "invalid_json"},
        {"[1,2]", "JSON object"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"model\""},
        {"{\"model\":7,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "\"param\":\"model\""},
        {"{\"model\":\"router\"}", "\"param\":\"messages\""},
        {"{\"model\":\"router\",\"messages\":{}}", "\"param\":\"messages\""},
        {"{\"model\":\"router\",\"messages\":[]}", "\"param\":\"messages\""},
        {"{\"model\":\"router\",\"messages\":[{\"content\":\"x\"}]}", "messages[0].role"},
        {"{\"model\":\"router\",\"messages\":[\"x\"]}", "messages[0].role"},
        {"{\"model\":\"router\",\"stream\":\"yes\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
         "\"param\":\"stream\""},
        {"{\"model\":\"router\",\"max_tokens\":-1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
         "\"param\":\"max_tokens\""},
        {"\xff\xfe{}", "invalid_json"},
        {"{\"model\":\"router\",\"tools\":{},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
         "\"param\":\"tools\""},
        {"{\"model\":\"router\",\"tools\":[{\"function\":{}}],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
         "\"param\":\"tools[0].type\""},
        {"{\"model\":\"router\",\"tool_choice\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
         "\"param\":\"tool_choice\""},
    };
    for (const auto& [body, expected] : cases) {
      INFO(body);
      auto res = f.post(body, good);
      REQUIRE(res);
      CHECK(res->status == 400);
      CHECK_THAT(res->body, Contains("\"type\":\"invalid_request_error\""));
      CHECK_THAT(res->body, Contains(expected));
    }
    CHECK(f.total_requests() == 0);
    auto unknown_path = f.get("/v2/nothing", good);
    REQUIRE(unknown_path);
    CHECK(unknown_path->status == 404);
    CHECK_THAT(unknown_path->body, Contains("\"error\""));
    auto health = f.get("/health");
    REQUIRE(health);
    CHECK(health->status == 200);
  }
}

TEST_CASE("router server: /health says degraded while no expert can be called", "[server]") {
  Fixture f([](ServerConfig& c) {
    c.router.failures_before_cooldown = 1;
    c.router.cooldown = 60s;
  });
  CHECK_THAT(f.get("/health")->body, Contains("\"status\":\"ok\""));
  for (auto& [name, u] : f.upstreams) u->set_behaviour(behaviour(Kind::Status, 503));
  for (const std::string& name : kExperts) {  // each fails once, and rests
    auto failed = f.post(chat_body(name, kPrompt));
    REQUIRE(failed);
    CHECK(failed->status == 502);
    if (&name != &kExperts.back())
      CHECK_THAT(f.get("/health")->body, Contains("\"status\":\"ok\""));
  }
  auto health = f.get("/health");
  REQUIRE(health);
  CHECK(health->status == 200);  // the replica is up; its upstreams are not
  CHECK_THAT(health->body, Contains("\"status\":\"degraded\""));
  CHECK_THAT(health->body, !Contains("\"cooling_down\":false"));
  // A request still gets an answer, from an expert cooling down, and is
  // told so: the router's own reason would be none_eligible.
  for (auto& [name, u] : f.upstreams) u->set_behaviour(behaviour(Kind::Answer));
  const bool stream = GENERATE(false, true);
  auto last = f.post(chat_body("router", kPrompt, stream));
  REQUIRE(last);
  CHECK(last->status == 200);
  CHECK(last->header("X-Torouter-Reason") == "last_resort");
  if (!stream) CHECK_THAT(last->body, Contains("\"reason\":\"last_resort\""));
}

TEST_CASE("router server: models, health and metrics", "[server]") {
  Fixture f;
  auto models = f.get("/v1/models");
  REQUIRE(models);
  REQUIRE(models->status == 200);
  simdjson::dom::parser parser;
  auto doc = parse(parser, models->body);
  CHECK(str(doc["data"].at(0)["id"]) == "router");
  for (std::size_t i = 0; i < kExperts.size(); ++i) {
    CHECK(str(doc["data"].at(i + 1)["id"]) == kExperts[i]);
  }
  // One model, as OpenAI's retrieve answers; its name may come escaped.
  for (const std::string& id : {std::string("router"), kExperts[1]}) {
    auto one = f.get("/v1/models/" + id);
    REQUIRE(one);
    CHECK(one->status == 200);
    CHECK(str(parse(parser, one->body)["id"]) == id);
  }
  auto escaped = f.get("/v1/models/gemma%2D2-9b-it");
  REQUIRE(escaped);
  CHECK(escaped->status == 200);
  CHECK(str(parse(parser, escaped->body)["id"]) == "gemma-2-9b-it");
  auto missing = f.get("/v1/models/gpt-9");
  REQUIRE(missing);
  CHECK(missing->status == 404);
  CHECK_THAT(missing->body, Contains("model_not_found"));
  // The absolute form of a target (RFC 9112, section 3.2.2) reaches the same endpoint.
  auto absolute = f.get("http://127.0.0.1/v1/models?x=1");
  REQUIRE(absolute);
  CHECK(absolute->status == 200);
  CHECK_THAT(absolute->body, Contains("\"object\":\"list\""));
  // A known endpoint asked with another method: 405 with the methods it takes.
  auto wrong = torouter::test::http_call(f.port, "GET", "/v1/chat/completions");
  REQUIRE(wrong);
  CHECK(wrong->status == 405);
  CHECK(wrong->header("Allow") == "POST");
  CHECK_THAT(wrong->body, Contains("method_not_allowed"));
  auto wrong_get = torouter::test::http_call(f.port, "DELETE", "/v1/models/router");
  REQUIRE(wrong_get);
  CHECK(wrong_get->status == 405);
  CHECK(wrong_get->header("Allow") == "GET, HEAD");

  auto health = f.get("/health");
  REQUIRE(health);
  CHECK(health->status == 200);
  CHECK_THAT(health->body, Contains("\"status\":\"ok\""));
  // Load balancers probe with HEAD: GET's headers, no body, the same
  // connection still usable.
  auto probe = torouter::test::http_call(f.port, "HEAD", "/health");
  REQUIRE(probe);
  CHECK(probe->status == 200);
  CHECK(probe->body.empty());
  CHECK(f.get("/health")->status == 200);

  // One answered request and one bypass that fails.
  const std::string expert = f.routed(kPrompt);
  // The named call goes to another expert, so each counts one request.
  const std::string other = expert == kExperts[0] ? kExperts[1] : kExperts[0];
  f.upstreams[other]->set_behaviour(behaviour(Kind::Status, 503));
  auto failed = f.post(chat_body(other, "hi"));
  REQUIRE(failed);
  CHECK(failed->status == 502);

  // Responses are counted once written, which may be just after the client
  // has read them: poll a little (bounded) for the 502's count.
  std::string m;
  for (int i = 0; i < 100 && m.find("{code=\"502\"} 1") == std::string::npos; ++i) {
    if (i > 0) std::this_thread::sleep_for(20ms);
    auto metrics = f.get("/metrics");
    REQUIRE(metrics);
    REQUIRE(metrics->status == 200);
    m = metrics->body;
  }
  CHECK_THAT(m, Contains("torouter_chat_requests_total{mode=\"router\"} 1"));
  CHECK_THAT(m, Contains("torouter_chat_requests_total{mode=\"bypass\"} 1"));
  CHECK_THAT(m, Contains("torouter_expert_requests_total{expert=\"" + expert + "\"} 1"));
  CHECK_THAT(m, Contains("torouter_expert_answers_total{expert=\"" + expert + "\"} 1"));
  // A named call is a pinned invoke: retried like any call (two attempts).
  CHECK_THAT(m, Contains("torouter_expert_failures_total{expert=\"" + other +
                         "\",kind=\"server_error\"} 2"));
  // The named call routes too, for its decision headers.
  CHECK_THAT(m, Contains("torouter_route_latency_seconds_count 2"));
  CHECK_THAT(m, Contains("torouter_route_latency_seconds_bucket{le=\"+Inf\"} 2"));
  CHECK_THAT(m, Contains("torouter_upstream_latency_seconds_count{expert=\"" + expert + "\"} 1"));
  CHECK_THAT(m, Contains("torouter_http_responses_total{code=\"502\"} 1"));
  CHECK_THAT(m, Contains("torouter_http_responses_total{code=\"405\"} 2"));
  CHECK_THAT(m, Contains("torouter_http_responses_total{code=\"other\"} 0"));
  CHECK_THAT(m, Contains("# TYPE torouter_spend_usd_total counter"));
  CHECK_THAT(m, !Contains("torouter_spend_usd_total 0\n"));
}

TEST_CASE("router server: reloads its model under traffic and refuses a bad file", "[server]") {
  const auto dir = torouter::testing::process_temp_dir("router_server_reload");
  const std::string serving = (dir / "serving.tormodel").string();
  const std::string other = small_model(dir);
  std::filesystem::copy_file(kModel, serving, std::filesystem::copy_options::overwrite_existing);
  const std::string default_version = version_of(kModel);
  const std::string other_version = version_of(other);
  REQUIRE(default_version != other_version);
  Fixture f([&](ServerConfig& c) {
    c.router_model = serving;
    c.api_keys = {"key-one"};
  });
  const HttpHeaders key = {{"Authorization", "Bearer key-one"}};
  auto reload = [&] {
    return torouter::test::http_call(f.port, "POST", "/admin/reload", key, "");
  };

  // Two clients send 1,000 requests while the model is swapped 20 times.
  std::atomic<int> answered{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 2; ++c) {
    clients.emplace_back([&] {
      for (int i = 0; i < 500; ++i) {
        auto res = torouter::test::http_call(f.port, "POST", "/v1/chat/completions", key,
                                             chat_body("router", kPrompt));
        (res && res->status == 200 ? answered : failed).fetch_add(1);
      }
    });
  }
  for (int i = 0; i < 20; ++i) {
    const bool to_other = i % 2 == 0;
    std::filesystem::copy_file(to_other ? other : kModel, serving,
                               std::filesystem::copy_options::overwrite_existing);
    auto res = reload();
    REQUIRE(res);
    INFO(res->body);
    REQUIRE(res->status == 200);
    CHECK_THAT(res->body, Contains("\"model_version\":\"" +
                                   (to_other ? other_version : default_version) + "\""));
    std::this_thread::sleep_for(20ms);
  }
  for (auto& c : clients) c.join();
  CHECK(answered.load() == 1000);
  CHECK(failed.load() == 0);
  // The last swap put the default router back.
  auto health = f.get("/health", key);
  REQUIRE(health);
  CHECK_THAT(health->body, Contains(default_version));

  // A corrupt file is refused, and the model in place keeps serving.
  std::ofstream(serving, std::ios::trunc) << "not a model";
  auto refused = reload();
  REQUIRE(refused);
  CHECK(refused->status == 422);
  CHECK_THAT(refused->body, Contains("model_refused") && Contains("keeps serving") &&
                                Contains(default_version));
  auto after = f.post(chat_body("router", kPrompt), key);
  REQUIRE(after);
  CHECK(after->status == 200);
  CHECK(after->header("X-Torouter-Model-Version") == default_version);

  // A FIFO in the model's place is refused at once: reading it would
  // block the reload until someone writes to it, and a SIGTERM with it.
  std::filesystem::remove(serving);
  REQUIRE(::mkfifo(serving.c_str(), 0600) == 0);
  auto fifo = reload();
  REQUIRE(fifo);
  CHECK(fifo->status == 422);
  CHECK_THAT(fifo->body, Contains("not a regular file"));
  std::filesystem::remove(serving);

  auto metrics = f.get("/metrics", key);
  REQUIRE(metrics);
  CHECK_THAT(metrics->body, Contains("torouter_model_reloads_total{outcome=\"done\"} 20") &&
                                Contains("torouter_model_reloads_total{outcome=\"refused\"} 2"));

  // The endpoint needs the key.
  auto no_key = torouter::test::http_call(f.port, "POST", "/admin/reload", {}, "");
  REQUIRE(no_key);
  CHECK(no_key->status == 401);
  std::filesystem::remove_all(dir);
}

TEST_CASE("router server: a server without API keys refuses /admin/reload", "[server]") {
  Fixture f;
  auto res = torouter::test::http_call(f.port, "POST", "/admin/reload", {}, "");
  REQUIRE(res);
  CHECK(res->status == 403);
  CHECK_THAT(res->body, Contains("reload_needs_key"));
}

TEST_CASE("router server: the decision log and feedback by id", "[server]") {
  const auto dir = torouter::testing::process_temp_dir("router_server_decisions");
  const std::string log_path = (dir / "calls.jsonl").string();
  Fixture f([&](ServerConfig& c) { c.decision_log.path = log_path; });
  simdjson::dom::parser parser;

  auto plain = f.post(chat_body("router", kPrompt));
  REQUIRE(plain);
  REQUIRE(plain->status == 200);
  const std::string id = str(parse(parser, plain->body)["id"]);
  const std::string expert = plain->header("X-Torouter-Expert");
  auto streamed = f.post(chat_body("router", "Summarise the French revolution.", true));
  REQUIRE(streamed);
  REQUIRE(streamed->status == 200);
  const std::string stream_id = str(parse(parser, sse_data(streamed->body).at(0))["id"]);
  CHECK(stream_id != id);

  auto feedback = [&](const std::string& body) {
    return torouter::test::http_call(f.port, "POST", "/v1/feedback", {}, body);
  };
  auto recorded = feedback(R"({"id":")" + id + R"(","quality":0.8})");
  REQUIRE(recorded);
  CHECK(recorded->status == 200);
  CHECK(feedback(R"({"id":")" + id + R"(","quality":0.3})")->status == 200);
  CHECK(feedback(R"({"id":")" + stream_id + R"(","quality":1})")->status == 200);
  auto unknown = feedback(R"({"id":"chatcmpl-nobody","quality":0.5})");
  CHECK(unknown->status == 404);
  CHECK_THAT(unknown->body, Contains("unknown_id"));
  CHECK(feedback(R"({"id":")" + id + R"(","quality":1.5})")->status == 400);
  CHECK(feedback(R"({"quality":0.5})")->status == 400);
  CHECK(feedback("not json")->status == 400);

  // The log is written by a thread of its own: wait (bounded) for the lines.
  const std::vector<std::string> lines = log_lines(log_path, 5);
  REQUIRE(lines.size() == 5);
  auto decision = parse(parser, lines[0]);
  CHECK(str(decision["type"]) == "decision");
  CHECK(str(decision["id"]) == id);
  CHECK(str(decision["expert"]) == expert);
  CHECK(str(decision["decision"]["pick"]) == expert);
  CHECK(str(decision["prompt"]).find(kPrompt) != std::string::npos);
  CHECK(str(parse(parser, lines[1])["id"]) == stream_id);
  auto verdict = parse(parser, lines[3]);
  CHECK(str(verdict["type"]) == "feedback");
  CHECK(str(verdict["id"]) == id);
  CHECK(double(verdict["quality"]) == 0.3);

  auto metrics = f.get("/metrics");
  REQUIRE(metrics);
  CHECK_THAT(metrics->body, Contains("torouter_decision_log_lines_total{outcome=\"dropped\"} 0"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("router server: exploration spreads picks and logs their propensity", "[server]") {
  const auto dir = torouter::testing::process_temp_dir("router_server_explore");
  const std::string log_path = (dir / "calls.jsonl").string();
  Fixture f([&](ServerConfig& c) {
    c.decision_log.path = log_path;
    c.exploration.epsilon = 1.0;  // every pick uniform over the three experts
  });
  std::map<std::string, int> picks;
  int explored = 0;
  for (int i = 0; i < 40; ++i) {
    auto res = f.post(chat_body("router", kPrompt));
    REQUIRE(res);
    REQUIRE(res->status == 200);
    ++picks[res->header("X-Torouter-Expert")];
    explored += res->header("X-Torouter-Reason") == "explored" ? 1 : 0;
  }
  CHECK(picks.size() == 3);
  CHECK(explored > 0);
  // A named call is not explored.
  auto named = f.post(chat_body(kExperts[1], kPrompt));
  REQUIRE(named);
  CHECK(named->header("X-Torouter-Expert") == kExperts[1]);

  const std::vector<std::string> lines = log_lines(log_path, 41);
  REQUIRE(lines.size() == 41);
  simdjson::dom::parser parser;
  for (int i = 0; i < 40; ++i) {
    CHECK(double(parse(parser, lines[static_cast<std::size_t>(i)])["propensity"]) ==
          Approx(1.0 / 3));
  }
  CHECK(double(parse(parser, lines[40])["propensity"]) == 1.0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("router server: feedback without a decision log", "[server]") {
  Fixture f;
  auto res = torouter::test::http_call(f.port, "POST", "/v1/feedback", {},
                                       R"({"id":"chatcmpl-torouter-1","quality":0.5})");
  REQUIRE(res);
  CHECK(res->status == 404);
  CHECK_THAT(res->body, Contains("no_decision_log"));
}

TEST_CASE("router server: configuration errors name the file and the field", "[server]") {
  using torouter::server::parse_server_config;
  const std::string expert =
      R"({"name":"gemma-2-9b-it","base_url":"http://127.0.0.1:1/v1"})";
  auto error_of = [&](const std::string& json) {
    try {
      parse_server_config(json, "server.json", "");
    } catch (const torouter::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(error_of("{"), Contains("server.json: not valid JSON"));
  // An empty key list would open the server to anyone: it is said by
  // leaving the field out.
  CHECK_THAT(error_of(R"({"router_model":"m","api_keys":[],"experts":[)" + expert + "]}"),
             Contains("server.json: api_keys: empty"));
  ::setenv("TOROUTER_TEST_NO_KEYS", ",", 1);
  CHECK_THAT(error_of(R"({"router_model":"m","api_keys_env":"TOROUTER_TEST_NO_KEYS","experts":[)" +
                      expert + "]}"),
             Contains("api_keys_env: environment variable TOROUTER_TEST_NO_KEYS holds no key"));
  CHECK_THAT(error_of(R"({"experts":[)" + expert + "]}"), Contains("server.json: router_model: missing"));
  CHECK_THAT(error_of(R"({"router_model":"m","experts":[]})"), Contains("server.json: experts:"));
  CHECK_THAT(error_of(R"({"router_model":"m","colour":1,"experts":[)" + expert + "]}"),
             Contains("server.json: colour: unknown field"));
  CHECK_THAT(error_of(R"({"router_model":"m","policy":{"lambda_cost":-1},"experts":[)" + expert + "]}"),
             Contains("server.json: policy.lambda_cost: must be a finite number >= 0"));
  CHECK_THAT(error_of(R"({"router_model":"m","policy":{"budget_mode":"maybe"},"experts":[)" + expert + "]}"),
             Contains("policy.budget_mode"));
  CHECK_THAT(error_of(R"({"router_model":"m","listen":{"port":70000},"experts":[)" + expert + "]}"),
             Contains("server.json: listen.port"));
  CHECK_THAT(error_of(R"({"router_model":"m","listen":{"max_connections":0},"experts":[)" + expert + "]}"),
             Contains("server.json: listen.max_connections"));
  CHECK_THAT(
      error_of(R"({"router_model":"m","listen":{"idle_timeout_ms":0},"experts":[)" + expert + "]}"),
      Contains("server.json: listen.idle_timeout_ms"));
  CHECK(parse_server_config(
            R"({"router_model":"m","listen":{"idle_timeout_ms":90000},"experts":[)" + expert + "]}",
            "server.json", "")
            .idle_timeout == 90s);
  CHECK_THAT(error_of(R"({"router_model":"m","listen":{"tls_cert_file":"c.pem"},"experts":[)" +
                      expert + "]}"),
             Contains("server.json: listen.tls_key_file: missing: HTTPS needs both"));
  CHECK_THAT(error_of(R"({"router_model":"m","decision_log":{},"experts":[)" + expert + "]}"),
             Contains("server.json: decision_log.path: missing"));
  CHECK_THAT(error_of(R"({"router_model":"m","decision_log":{"path":"l","size":1},"experts":[)" +
                      expert + "]}"),
             Contains("server.json: decision_log.size: unknown field"));
  CHECK_THAT(error_of(R"({"router_model":"m","exploration":{"epsilon":2},"experts":[)" + expert +
                      "]}"),
             Contains("server.json: exploration.epsilon: must be a number in [0, 1]"));
  CHECK_THAT(error_of(R"({"router_model":"m","exploration":{"max_cost_ratio":0.5},"experts":[)" +
                      expert + "]}"),
             Contains("server.json: exploration.max_cost_ratio: must be >= 1"));
  CHECK_THAT(error_of(R"({"router_model":"m","experts":[{"name":"x"}]})"),
             Contains("server.json: experts[0].base_url: missing"));
  CHECK_THAT(error_of(R"({"router_model":"m","experts":[{"name":"x","base_url":"ftp://h"}]})"),
             Contains("server.json: experts[0].base_url"));
  CHECK_THAT(error_of(R"({"router_model":"m","experts":[{"name":"x","base_url":"http://h","api_key_env":"TOROUTER_TEST_SURELY_UNSET"}]})"),
             Contains("experts[0].api_key_env: environment variable TOROUTER_TEST_SURELY_UNSET is not set"));
  CHECK_THAT(error_of(R"({"router_model":"m","experts":[{"name":"x","base_url":"https://h","ca_file":"/surely/absent.pem"}]})"),
             Contains("server.json: experts[0].ca_file \"/surely/absent.pem\": cannot be read"));
  CHECK_THAT(error_of(R"({"router_model":"m","experts":[)" + expert + "," + expert + "]}"),
             Contains("experts[1].name: duplicate"));
  CHECK_THAT(error_of(R"({"router_model":"m","experts":[{"name":"x","base_url":"http://h","price":1}]})"),
             Contains("experts[0].price: unknown field"));
  CHECK_THAT(
      error_of(
          R"({"router_model":"m","experts":[{"name":"x","base_url":"http://h","stream_usage":1}]})"),
      Contains("experts[0].stream_usage: expected true or false"));
  CHECK_THAT(
      error_of(
          R"({"router_model":"m","experts":[{"name":"x","base_url":"http://h","capabilities":["tools","vision"]}]})"),
      Contains("server.json: experts[0].capabilities: unknown capability \"vision\"") &&
          Contains("known: tools, images, json_output"));
  CHECK_THAT(
      error_of(
          R"({"router_model":"m","experts":[{"name":"x","base_url":"http://h","capabilities":"tools"}]})"),
      Contains("experts[0].capabilities: expected an array of strings"));
  const ServerConfig declared = parse_server_config(
      R"({"router_model":"m","experts":[{"name":"x","base_url":"http://h","capabilities":["images","json_output"]},)"
      R"({"name":"y","base_url":"http://h"}]})",
      "server.json", "");
  REQUIRE(declared.experts[0].capabilities.has_value());
  CHECK(declared.experts[0].capabilities->images);
  CHECK(declared.experts[0].capabilities->json_output);
  CHECK_FALSE(declared.experts[0].capabilities->tools);
  CHECK_FALSE(declared.experts[1].capabilities.has_value());

  // The shared state and the budgets by window, expert and tag.
  const std::string base = R"({"router_model":"m","experts":[)" + expert + "],";
  CHECK_THAT(error_of(base + R"("state":{"key_prefix":"p"}})"),
             Contains("server.json: state.redis: missing"));
  CHECK_THAT(error_of(base + R"("state":{"redis":"redis://h","on_failure":"maybe"}})"),
             Contains("server.json: state.on_failure: expected \"open\" or \"closed\""));
  CHECK_THAT(error_of(base + R"("state":{"redis":"redis://h","refresh_ms":5000}})"),
             Contains("state.refresh_ms: must be at most 1000"));
  CHECK_THAT(error_of(base + R"("state":{"redis":"redis://h","call_expiry_ms":1000}})"),
             Contains("state.call_expiry_ms: must be above retry.invoke_timeout_ms"));
  CHECK_THAT(error_of(base + R"("state":{"redis":"redis://h"}})"),
             Contains("retry.stream_timeout_ms: must be set, below state.call_expiry_ms"));
  CHECK_THAT(error_of(base + R"("state":{"redis":"redis://h"},"retry":{"stream_timeout_ms":)"
                             R"(900000}})"),
             Contains("retry.stream_timeout_ms: must be set"));
  CHECK_THAT(error_of(base + R"("policy":{"budgets":[{"limit_usd":5,"window":"week"}]}})"),
             Contains("server.json: policy.budgets[0].window: expected lifetime, minute, hour, "
                      "day or month, got \"week\""));
  CHECK_THAT(error_of(base + R"("policy":{"budgets":[{"window":"day"}]}})"),
             Contains("policy.budgets[0].limit_usd: missing"));
  CHECK_THAT(error_of(base + R"("policy":{"budgets":[7]}})"),
             Contains("policy.budgets[0]: expected an object"));
  const ServerConfig shared = parse_server_config(
      base + R"("state":{"redis":"redis://10.0.0.5:6380/2","key_prefix":"prod","on_failure":)"
             R"("closed"},"retry":{"stream_timeout_ms":300000},)"
             R"("policy":{"budgets":[{"limit_usd":5,"window":"day","tag":"code"}]}})",
      "server.json", "");
  CHECK(shared.state.redis == "redis://10.0.0.5:6380/2");
  CHECK(shared.state.key_prefix == "prod");
  CHECK(shared.state.fail_closed);
  REQUIRE(shared.router.budgets.size() == 1);
  CHECK(shared.router.budgets[0].window == torouter::BudgetWindow::Day);
  CHECK(shared.router.budgets[0].tag == "code");
  CHECK_THAT(error_of(R"({"router_model":"m","experts":[{"name":"x","base_url":"http://h",)"
                      R"("requests_per_minute":-1}]})"),
             Contains("experts[0].requests_per_minute"));

  const std::string floor = R"({"router_model":"m","experts":[)" + expert + R"(],"policy":)";
  CHECK_THAT(error_of(floor + R"({"quality_floor":1.5}})"),
             Contains("server.json: policy.quality_floor: must be a number in [0, 1]"));
  CHECK(*parse_server_config(floor + R"({"quality_floor":0.7}})", "server.json", "")
             .policy.quality_floor == 0.7);

  // An expert the model does not know is named with the file and the field.
  ServerConfig config = parse_server_config(
      R"({"router_model":")" + kModel + R"(","listen":{"port":0},"experts":[{"name":"gpt-17","base_url":"http://127.0.0.1:1/v1"}]})",
      "server.json", "");
  try {
    RouterServer server(config);
    FAIL("no error");
  } catch (const torouter::Error& e) {
    CHECK_THAT(e.what(), Contains("server.json: experts[0].name: \"gpt-17\" is not an expert"));
  }
  // A floor set in code is checked too.
  config.policy.quality_floor = 2.0;
  CHECK_THROWS_WITH(RouterServer(config), Contains("server.json: policy.quality_floor"));
  config.policy.quality_floor.reset();
  // A missing model file is named.
  config.router_model = "/nonexistent/router.tormodel";
  CHECK_THROWS_WITH(RouterServer(config), Contains("/nonexistent/router.tormodel"));
}

TEST_CASE("router server: the README's demo config loads the default router", "[server]") {
  // Its paths are relative to the config file, so moving either breaks it.
  ServerConfig config = torouter::server::load_server_config(std::string(TOROUTER_SOURCE_DIR) +
                                                             "/server/demo_config.json");
  config.port = 0;
  RouterServer server(config);
  CHECK(server.bind() > 0);
}

TEST_CASE("router server: the torouter-server program", "[server]") {
  const auto dir = torouter::testing::process_temp_dir("torouter_server_test");
  const auto bad = dir / "bad.json";
  std::ofstream(bad) << R"({"router_model":"m.tormodel","experts":[{"name":"x"}]})";
  const std::string command = std::string("'") + TOROUTER_SERVER + "' --config '" + bad.string() +
                              "' > '" + (dir / "out.txt").string() + "' 2>&1";
  const int status = std::system(command.c_str());
  CHECK(WEXITSTATUS(status) == 1);
  std::ifstream out(dir / "out.txt");
  const std::string text((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
  CHECK_THAT(text, Contains("bad.json: experts[0].base_url: missing"));

  // A good configuration: the program listens, answers, reloads its model
  // on SIGHUP (refusing a bad file), and stops on SIGTERM.
  StandInUpstream upstream("any");
  REQUIRE(upstream.start() > 0);
  const auto serving = dir / "serving.tormodel";
  std::filesystem::copy_file(kModel, serving, std::filesystem::copy_options::overwrite_existing);
  const auto good = dir / "good.json";
  std::ofstream(good) << R"({"router_model":")" << serving.string() << R"(","listen":{"port":0},)"
                      << R"("experts":[{"name":"gemma-2-9b-it","base_url":")" << upstream.base_url()
                      << R"("}]})";
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::dup2(pipe_fds[1], 1);
    ::close(pipe_fds[0]);
    ::execl(TOROUTER_SERVER, TOROUTER_SERVER, "--config", good.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(pipe_fds[1]);
  std::string line;
  char c = 0;
  while (::read(pipe_fds[0], &c, 1) == 1 && c != '\n' && line.size() < 1000) line.push_back(c);
  ::close(pipe_fds[0]);
  INFO(line);
  const auto colon = line.rfind(':');
  REQUIRE(line.find("listening on http://127.0.0.1:") != std::string::npos);
  const int port = std::atoi(line.c_str() + colon + 1);
  auto res = torouter::test::http_call(port, "POST", "/v1/chat/completions", {},
                                       chat_body("router", "hi"));
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->header("X-Torouter-Expert") == "gemma-2-9b-it");
  // The model version /health reports, once it is `expected` (polled: the
  // signal is handled on the program's own thread).
  auto health_shows = [&](const std::string& expected) {
    for (int i = 0; i < 200; ++i) {
      auto health = torouter::test::http_call(port, "GET", "/health", {});
      if (health && health->body.find(expected) != std::string::npos) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  };
  const std::string default_version = version_of(kModel);
  std::ofstream(serving, std::ios::trunc) << "not a model";
  ::kill(child, SIGHUP);
  // The refusal is counted once the signal has been handled.
  bool refused = false;
  for (int i = 0; i < 200 && !refused; ++i) {
    auto metrics = torouter::test::http_call(port, "GET", "/metrics", {});
    refused = metrics && metrics->body.find("torouter_model_reloads_total{outcome=\"refused\"} 1") !=
                             std::string::npos;
    if (!refused) std::this_thread::sleep_for(50ms);
  }
  CHECK(refused);
  CHECK(health_shows(default_version));
  auto still = torouter::test::http_call(port, "POST", "/v1/chat/completions", {},
                                         chat_body("router", "hi"));
  REQUIRE(still);
  CHECK(still->status == 200);
  const std::string other = small_model(dir);
  std::filesystem::copy_file(other, serving, std::filesystem::copy_options::overwrite_existing);
  ::kill(child, SIGHUP);
  CHECK(health_shows(version_of(other)));
  ::kill(child, SIGTERM);
  int child_status = 0;
  ::waitpid(child, &child_status, 0);
  CHECK(WIFEXITED(child_status));
  CHECK(WEXITSTATUS(child_status) == 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("router server: a client that goes away cancels its upstream call, blaming no one",
          "[server]") {
  Fixture f;
  StandInBehaviour trickle;
  trickle.chunks = 100;
  trickle.chunk_gap = 50ms;
  for (auto& [name, u] : f.upstreams) u->set_behaviour(trickle);
  {
    RawHttpConnection connection(f.port, 10s);
    const std::string body = chat_body("router", kPrompt, true);
    REQUIRE(connection.send(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        "Content-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body));
    // The first piece of the stream, then the client goes.
    REQUIRE_FALSE(connection.read_until("data: ").empty());
  }
  std::size_t cut = 0;
  for (int i = 0; i < 400 && cut == 0; ++i) {
    std::this_thread::sleep_for(25ms);
    for (const auto& [name, u] : f.upstreams) cut += u->streams_cut();
  }
  CHECK(cut == 1);  // the upstream saw its call end, long before its 5 s stream
  auto metrics = f.get("/metrics");
  REQUIRE(metrics);
  std::istringstream lines(metrics->body);
  std::string line;
  int failure_lines = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("torouter_expert_failures_total{", 0) != 0) continue;
    ++failure_lines;
    CHECK(line.substr(line.size() - 2) == " 0");
  }
  CHECK(failure_lines > 0);
  auto health = f.get("/health");
  REQUIRE(health);
  CHECK_THAT(health->body, !Contains("\"in_flight\":1"));

  // A plain call: the client's departure is seen while the upstream is
  // still thinking, and the expert's slot frees long before its answer.
  StandInBehaviour thinking;
  thinking.delay = 4000ms;
  for (auto& [name, u] : f.upstreams) u->set_behaviour(thinking);
  const auto sent_at = std::chrono::steady_clock::now();
  {
    RawHttpConnection connection(f.port, 10s);
    const std::string body = chat_body("router", kPrompt);
    REQUIRE(connection.send(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        "Content-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body));
    bool calling = false;
    for (int i = 0; i < 200 && !calling; ++i) {
      std::this_thread::sleep_for(10ms);
      auto during = f.get("/health");
      calling = during && during->body.find("\"in_flight\":1") != std::string::npos;
    }
    REQUIRE(calling);
  }
  bool freed = false;
  while (!freed && std::chrono::steady_clock::now() - sent_at < 3s) {
    std::this_thread::sleep_for(10ms);
    auto after = f.get("/health");
    freed = after && after->body.find("\"in_flight\":1") == std::string::npos;
  }
  CHECK(freed);
  // The plain call is counted as nginx logs it, 499 "client closed
  // request"; the stream had sent its 200.
  bool counted = false;
  for (int i = 0; i < 100 && !counted; ++i) {
    if (i > 0) std::this_thread::sleep_for(20ms);
    auto m = f.get("/metrics");
    counted =
        m && m->body.find("torouter_http_responses_total{code=\"499\"} 1\n") != std::string::npos;
  }
  CHECK(counted);

  // The same after the client sent more: a line end after the body (RFC
  // 9112 section 2.2 lets a client send one) and a pipelined request. The
  // server keeps those bytes for later and still sees the client leave.
  const auto again_at = std::chrono::steady_clock::now();
  {
    RawHttpConnection connection(f.port, 10s);
    const std::string body = chat_body("router", kPrompt);
    REQUIRE(connection.send(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        "Content-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body + "\r\n"));
    bool calling = false;
    for (int i = 0; i < 200 && !calling; ++i) {
      std::this_thread::sleep_for(10ms);
      auto during = f.get("/health");
      calling = during && during->body.find("\"in_flight\":1") != std::string::npos;
    }
    REQUIRE(calling);
    REQUIRE(connection.send("GET /health HTTP/1.1\r\nHost: t\r\n\r\n"));
    std::this_thread::sleep_for(100ms);
  }
  freed = false;
  while (!freed && std::chrono::steady_clock::now() - again_at < 3s) {
    std::this_thread::sleep_for(10ms);
    auto after = f.get("/health");
    freed = after && after->body.find("\"in_flight\":1") == std::string::npos;
  }
  CHECK(freed);
  counted = false;
  for (int i = 0; i < 100 && !counted; ++i) {
    if (i > 0) std::this_thread::sleep_for(20ms);
    auto m = f.get("/metrics");
    counted =
        m && m->body.find("torouter_http_responses_total{code=\"499\"} 2\n") != std::string::npos;
  }
  CHECK(counted);
}

TEST_CASE("router server: answers on a kept-alive connection go out at once", "[server]") {
  // With Nagle's algorithm on, a write that follows another (a stream's
  // chunks after its head; a plain answer's body, when its head filled a
  // write of its own) waited for the client to acknowledge the first,
  // which a client delays by 40 ms or more: every answer after the first
  // on a kept-alive connection took that long. Compared with answers on
  // new connections (acknowledged at once), so that a slow machine or a
  // sanitizer slows both alike.
  Fixture f;
  const bool stream = GENERATE(false, true);
  const std::string body = chat_body("router", kPrompt, stream);
  const std::string request =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  const auto answered_in_ms = [&request](RawHttpConnection& connection) {
    const auto start = std::chrono::steady_clock::now();
    REQUIRE(connection.send(request));
    REQUIRE(connection.receive().status == 200);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
        .count();
  };
  RawHttpConnection kept(f.port, 10s);
  answered_in_ms(kept);  // its first answer
  std::vector<double> on_kept, on_new;
  for (int i = 0; i < 9; ++i) {
    on_kept.push_back(answered_in_ms(kept));
    RawHttpConnection fresh(f.port, 10s);
    on_new.push_back(answered_in_ms(fresh));
  }
  std::sort(on_kept.begin(), on_kept.end());
  std::sort(on_new.begin(), on_new.end());
  INFO((stream ? "streamed" : "plain")
       << " answers, median ms: kept-alive " << on_kept[4] << ", new connection " << on_new[4]);
  CHECK(on_kept[4] < on_new[4] + 20.0);
}

TEST_CASE("router server: one I/O thread serves thirty slow calls at once", "[server]") {
  Fixture f([](ServerConfig& c) { c.io_threads = 1; });
  StandInBehaviour slow;
  slow.delay = 300ms;
  for (auto& [name, u] : f.upstreams) u->set_behaviour(slow);
  std::atomic<int> answered{0};
  const auto begin = std::chrono::steady_clock::now();
  std::vector<std::thread> clients;
  for (int i = 0; i < 30; ++i) {
    clients.emplace_back([&] {
      auto res = f.post(chat_body("router", kPrompt));
      if (res && res->status == 200) ++answered;
    });
  }
  for (auto& c : clients) c.join();
  CHECK(answered == 30);
  // One thread holding a call at a time would take 30 rounds of 300 ms;
  // the stand-in's eight threads make four.
  CHECK(std::chrono::steady_clock::now() - begin < 3s);
}

TEST_CASE("router server: a stream to an HTTP/1.0 client runs to the close, unchunked",
          "[server]") {
  // HTTP/1.0 has no chunked coding (RFC 9112, section 6.1).
  Fixture f;
  const std::string body = chat_body("router", kPrompt, true);
  RawHttpConnection connection(f.port, 10s);
  REQUIRE(
      connection.send("POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\n"
                      "Content-Type: application/json\r\nContent-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n" + body));
  const auto reply = connection.receive();  // ends at the close, or fails at the timeout
  CHECK(reply.status == 200);
  CHECK_FALSE(reply.has_header("transfer-encoding"));
  CHECK(streamed_content(reply.body) ==
        "up-" + reply.header("X-Torouter-Expert") + " answers: " + kPrompt);
  CHECK(sse_data(reply.body).back() == "[DONE]");
}

TEST_CASE("router server: a kept-alive connection waits listen.idle_timeout_ms", "[server]") {
  // The default outlasts the idle timeouts of load balancers and clients,
  // whose next request would otherwise race the server's close.
  const std::string body = chat_body("router", kPrompt);
  const std::string request =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  SECTION("by default, longer than a client's own 5 s") {
    Fixture f;
    RawHttpConnection connection(f.port, 10s);
    REQUIRE(connection.send(request));
    REQUIRE(connection.receive().status == 200);
    std::this_thread::sleep_for(5500ms);
    REQUIRE(connection.send(request));
    CHECK(connection.receive().status == 200);
  }
  SECTION("a short one closes the connection") {
    Fixture f([](ServerConfig& c) { c.idle_timeout = 300ms; });
    RawHttpConnection connection(f.port, 10s);
    REQUIRE(connection.send(request));
    REQUIRE(connection.receive().status == 200);
    std::this_thread::sleep_for(1200ms);
    CHECK(connection.closed_by_server());
  }
}

TEST_CASE("router server: past max_requests_in_flight, 503 with Retry-After", "[server]") {
  Fixture f([](ServerConfig& c) { c.max_requests_in_flight = 2; });
  StandInBehaviour slow;
  slow.delay = 1500ms;
  for (auto& [name, u] : f.upstreams) u->set_behaviour(slow);
  std::vector<std::thread> busy;
  std::atomic<int> answered{0};
  for (int i = 0; i < 2; ++i) {
    busy.emplace_back([&] {
      auto res = f.post(chat_body("router", kPrompt));
      if (res && res->status == 200) ++answered;
    });
  }
  std::this_thread::sleep_for(500ms);  // both are being called
  auto refused = f.post(chat_body("router", kPrompt));
  REQUIRE(refused);
  CHECK(refused->status == 503);
  CHECK(refused->header("Retry-After") == "1");
  CHECK_THAT(refused->body, Contains("server_busy") && Contains("server_error"));
  for (auto& t : busy) t.join();
  CHECK(answered == 2);
  auto after = f.post(chat_body("router", kPrompt));  // room again
  REQUIRE(after);
  CHECK(after->status == 200);
}

// A loopback connection to `port` on a bare socket: one descriptor here
// (and one in the server), where a RawHttpConnection has its own I/O.
int connect_bare(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<std::uint16_t>(port));
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof(to)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Whether `fd` has bytes to read (or its end) within `wait`.
bool readable(int fd, std::chrono::milliseconds wait) {
  pollfd polled{fd, POLLIN, 0};
  return ::poll(&polled, 1, static_cast<int>(wait.count())) > 0;
}

// What the server sent on `fd` up to its close (at most 5 s).
std::string read_to_close(int fd) {
  std::string text;
  char piece[4096];
  while (readable(fd, 5s)) {
    const ssize_t n = ::read(fd, piece, sizeof(piece));
    if (n <= 0) break;
    text.append(piece, static_cast<std::size_t>(n));
  }
  return text;
}

TEST_CASE("router server: the connection cap stays within the limit on open files", "[server]") {
  using torouter::server::connections_within;
  // Two descriptors a connection, once the reserve is kept; at least one.
  CHECK(connections_within(224, 64) == 80);
  CHECK(connections_within(70, 64) == 3);
  CHECK(connections_within(66, 64) == 1);
  CHECK(connections_within(10, 64) == 1);
  CHECK(connections_within(0, 64) == 0);  // no limit known: no cap from it

  rlimit before{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &before) == 0);
  rlimit low = before;
  low.rlim_cur = 256;
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
  struct Restore {
    rlimit limit;
    ~Restore() { ::setrlimit(RLIMIT_NOFILE, &limit); }
  } restore{before};
  Fixture f([](ServerConfig& c) {
    c.max_connections = 10000;
    c.io_threads = 8;  // each opens descriptors after the server counts them
    for (auto& expert : c.experts) expert.upstream.max_idle_connections = 1;
  });
  // Idle clients until one is refused. Here each costs two descriptors of
  // this process (the client's end and the server's), so without the cap
  // this process would run out (socket() failing) or the server's accept
  // would, and the client past it would wait unanswered in the listen queue.
  // Each is taken (the server's end open here) or refused before the next.
  std::vector<int> held;
  bool refused = false;
  while (!refused) {
    const std::size_t open_before = torouter::server::open_descriptors();
    const int fd = connect_bare(f.port);
    REQUIRE(fd >= 0);
    held.push_back(fd);
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    bool taken = false;
    while (!refused && !taken && std::chrono::steady_clock::now() < deadline) {
      refused = readable(fd, 1ms);
      taken = torouter::server::open_descriptors() >= open_before + 2;
    }
    REQUIRE((refused || taken));
  }
  // The refused clients are the last ones (none left meanwhile): each has
  // its 503 on the way, where an idle one hears nothing for the server's
  // idle_timeout (75 s). The others are held open, idle.
  std::size_t first_refused = held.size();
  while (first_refused > 0 && readable(held[first_refused - 1], 2s)) --first_refused;
  const std::vector<int> turned_away(held.begin() + first_refused, held.end());
  std::vector<int> idle(held.begin(), held.begin() + first_refused);
  CHECK(!idle.empty());
  REQUIRE(!turned_away.empty());
  const std::string answer = read_to_close(turned_away.front());
  CHECK_THAT(answer, Catch::Matchers::StartsWith("HTTP/1.1 503"));
  CHECK_THAT(answer, Contains("Retry-After: 1"));
  for (const int fd : turned_away) ::close(fd);
  // Room again once an idle client leaves (its close seen by the server).
  ::close(idle.back());
  idle.pop_back();
  int status = 0;
  for (auto deadline = std::chrono::steady_clock::now() + 5s;
       status != 200 && std::chrono::steady_clock::now() < deadline;) {
    auto res = f.post(chat_body("router", kPrompt));
    REQUIRE(res);
    status = res->status;
    if (status != 200) std::this_thread::sleep_for(10ms);
  }
  CHECK(status == 200);
  for (const int fd : idle) ::close(fd);
}

// Sends `request` over HTTPS and reads to the end of the connection, as a
// client of an answer that ends at the close does; `answer` gets what was
// read, and the result says how the reading ended: eof after the server's
// close_notify, stream_truncated at a close without one.
boost::system::error_code read_https_to_close(int port, const std::string& ca_file,
                                              const std::string& request, std::string& answer) {
  namespace asio = boost::asio;
  asio::io_context io;
  asio::ssl::context tls(asio::ssl::context::tls_client);
  tls.load_verify_file(ca_file);
  asio::ssl::stream<asio::ip::tcp::socket> stream(io, tls);
  stream.set_verify_mode(asio::ssl::verify_peer);
  stream.next_layer().connect(
      {asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)});
  stream.handshake(asio::ssl::stream_base::client);
  asio::write(stream, asio::buffer(request));
  boost::system::error_code ec;
  char buffer[4096];
  while (!ec) answer.append(buffer, stream.read_some(asio::buffer(buffer), ec));
  return ec;
}

TEST_CASE("router server: an HTTPS answer that ends at the close ends with a close_notify",
          "[server][tls]") {
  const auto dir = torouter::testing::process_temp_dir("router_server_tls_close");
  const auto cert = torouter::testing::make_certificate(dir, "IP:127.0.0.1,DNS:localhost");
  Fixture f({}, &cert);
  const std::string requests[] = {
      "GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n",
      "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
      "POST /v1/chat/completions HTTP/1.0\r\nHost: localhost\r\nContent-Type: "
      "application/json\r\nContent-Length: " +
          std::to_string(chat_body("router", kPrompt, true).size()) + "\r\n\r\n" +
          chat_body("router", kPrompt, true)};
  for (const std::string& request : requests) {
    INFO(request.substr(0, request.find('\r')));
    std::string answer;
    const auto ended = read_https_to_close(f.port, cert.certificate, request, answer);
    CHECK(answer.rfind("HTTP/1.1 200 OK", 0) == 0);
    CHECK(ended == boost::asio::error::eof);
  }
  std::string answer;
  read_https_to_close(f.port, cert.certificate, requests[2], answer);
  CHECK_THAT(answer, Contains("data: [DONE]"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("router server: HTTPS both ways, with a certificate made at test time", "[server][tls]") {
  const auto dir = torouter::testing::process_temp_dir("router_server_tls");
  const auto cert = torouter::testing::make_certificate(dir, "IP:127.0.0.1,DNS:localhost");
  Fixture f({}, &cert);
  // A client of the server's own HTTPS: torouter::openai's, trusting the
  // test certificate, as a service in front of torouter-server would.
  torouter::openai::UpstreamOptions options;
  options.base_url = "https://127.0.0.1:" + std::to_string(f.port) + "/v1";
  options.model = "router";
  options.ca_file = cert.certificate;
  torouter::openai::Upstream client(options);
  torouter::Request request;
  request.prompt = kPrompt;
  request.timeout = 20s;
  const torouter::Response answer = client.complete(request);
  INFO(answer.error_message);
  REQUIRE(answer.ok());
  CHECK_THAT(answer.text, Contains(" answers: " + std::string(kPrompt)));
  std::string chunks;
  const torouter::Response streamed =
      client.stream(request, [&](std::string_view piece) { chunks.append(piece); });
  REQUIRE(streamed.ok());
  CHECK_THAT(chunks, Contains(" answers: " + std::string(kPrompt)));

  // Plain HTTP to the HTTPS port gets no answer, and a client that does not
  // trust the certificate cannot call.
  CHECK_FALSE(torouter::test::http_call(f.port, "GET", "/health", {}, {}, "", 3s));
  options.ca_file.clear();
  const torouter::Response untrusted = torouter::openai::Upstream(options).complete(request);
  CHECK_FALSE(untrusted.ok());
  CHECK_THAT(untrusted.error_message, Contains("certificate"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("the server's event loop drops a withdrawn timer at once, and runs the others") {
  auto io = std::make_shared<torouter::openai::IoThreads>(2);
  torouter::server::AsioEventLoop loop(io);
  auto held = std::make_shared<int>(0);
  std::atomic<int> ran{0};
  std::atomic<int> withdrawn_ran{0};
  auto withdraw_later =
      loop.post_after_withdrawable(1h, [held, &withdrawn_ran] { ++withdrawn_ran; });
  withdraw_later();
  // Withdrawn long before it falls due, even on a loaded machine.
  loop.post_after_withdrawable(500ms, [&withdrawn_ran] { ++withdrawn_ran; })();
  loop.post_after_withdrawable(10ms, [&ran] { ++ran; });
  // The hour's timer goes with its task and what that holds, not in an hour.
  const auto give_up = std::chrono::steady_clock::now() + 5s;
  while ((held.use_count() > 1 || ran == 0) && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(1ms);
  }
  CHECK(held.use_count() == 1);
  CHECK(ran == 1);
  std::this_thread::sleep_for(600ms);  // past the withdrawn 500 ms
  CHECK(withdrawn_ran == 0);
  withdraw_later();  // again: nothing
  io->stop();
}
