// The decision log (torouter/decision_log.hpp): one record per routed call
// through Router::set_decision_sink, its JSON lines, feedback, rotation, and
// a full queue that drops and counts.
#include "torouter/decision_log.hpp"

#include <fcntl.h>
#include <simdjson.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "json_text.hpp"
#include "support/temp_dir.hpp"
#include "support/test_scorer.hpp"
#include "torouter/error.hpp"
#include "torouter/router.hpp"

using Catch::Matchers::Contains;
using torouter::DecisionLog;
using torouter::DecisionLogOptions;
using torouter::ExpertRegistry;
using torouter::ExpertSpec;
using torouter::Router;
using torouter::testing::TableScorer;

namespace {

std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Two experts over a table scorer; "strong" answers every call.
std::unique_ptr<Router> answering_router() {
  ExpertRegistry registry;
  registry.add(ExpertSpec("cheap", 0.1, 0.1));
  registry.add(ExpertSpec("strong", 10, 10));
  auto scorer = std::make_shared<TableScorer>(std::vector<std::string>{"cheap", "strong"},
                                              std::vector<float>{0.5f, 0.9f});
  auto router = std::make_unique<Router>(registry, scorer);
  for (const char* name : {"cheap", "strong"}) {
    router->set_transport(name, torouter::Transport::sync([](const torouter::Request&) {
      return torouter::Response::answer("an answer", 12, 34);
    }));
  }
  return router;
}

std::string str(simdjson::dom::element e) {
  std::string_view s;
  return e.get(s) ? "<not a string>" : std::string(s);
}

}  // namespace

TEST_CASE("decision log: one line per routed call, and feedback lines") {
  const auto dir = torouter::testing::process_temp_dir("decision_log_test");
  DecisionLogOptions options;
  options.path = (dir / "calls.jsonl").string();
  auto log = std::make_shared<DecisionLog>(options);
  auto router = answering_router();
  router->set_decision_sink([log](const torouter::DecisionRecord& r) { log->record(r); });

  torouter::InvokeOptions named;
  named.request_id = "req-1";
  REQUIRE(router->invoke("Explain tides", named).ok());
  REQUIRE(router->invoke("Explain tides again").ok());
  log->record_feedback("req-1", 0.75);
  log->record_feedback("req-1", 0.5);  // a later verdict replaces it
  CHECK_THROWS_WITH(log->record_feedback("req-1", 1.5), Contains("[0, 1]"));
  log->flush();
  CHECK(log->written() == 4);
  CHECK(log->dropped() == 0);

  const auto lines = lines_of(options.path);
  REQUIRE(lines.size() == 4);
  simdjson::dom::parser parser;
  simdjson::dom::element first = parser.parse(lines[0]);
  CHECK(str(first["type"]) == "decision");
  CHECK(str(first["id"]) == "req-1");
  CHECK(str(first["prompt"]) == "Explain tides");
  CHECK(str(first["prompt_hash"]) == torouter::prompt_hash("Explain tides"));
  CHECK(str(first["model_version"]) == "table-scorer-1");
  CHECK(double(first["propensity"]) == 1.0);
  CHECK(first["pinned_expert"].is_null());
  CHECK(str(first["decision"]["pick"]) == "strong");
  CHECK(str(first["decision"]["reason"]) == "highest_utility");
  CHECK(simdjson::dom::array(first["decision"]["candidates"]).size() == 2);
  CHECK(str(first["attempts"].at(0)["outcome"]) == "answered");
  CHECK(str(first["expert"]) == "strong");
  CHECK(first["error"].is_null());
  CHECK(int64_t(first["input_tokens"]) == 12);
  CHECK(int64_t(first["output_tokens"]) == 34);
  CHECK(double(first["cost_usd"]) > 0);
  CHECK(double(first["time"]) > 1.7e9);

  simdjson::dom::element second = parser.parse(lines[1]);
  CHECK_FALSE(str(second["id"]).empty());  // made by the router
  CHECK(str(second["id"]) != "req-1");

  // A call to an expert the caller named says so.
  torouter::InvokeOptions pinned;
  pinned.expert = "cheap";
  REQUIRE(router->invoke("Explain tides once more", pinned).ok());
  log->flush();
  const auto more = lines_of(options.path);
  REQUIRE(more.size() == 5);
  CHECK(str(parser.parse(more[4])["pinned_expert"]) == "cheap");

  simdjson::dom::element feedback = parser.parse(lines[3]);
  CHECK(str(feedback["type"]) == "feedback");
  CHECK(str(feedback["id"]) == "req-1");
  CHECK(double(feedback["quality"]) == 0.5);
  std::filesystem::remove_all(dir);
}

TEST_CASE("decision log: bytes that are not UTF-8 become U+FFFD, so every line is JSON") {
  CHECK(torouter::detail::json_string("ok \xff\xfe!") == "\"ok \xEF\xBF\xBD\xEF\xBF\xBD!\"");
  CHECK(torouter::detail::json_string("\xed\xa0\x80") ==  // a surrogate, encoded
        "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"");
  CHECK(torouter::detail::json_string("caf\xc3\xa9 \xf0\x9f\x98\x80") ==
        "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"");  // valid: as it is

  const auto dir = torouter::testing::process_temp_dir("decision_log_utf8_test");
  DecisionLogOptions options;
  options.path = (dir / "calls.jsonl").string();
  auto log = std::make_shared<DecisionLog>(options);
  auto router = answering_router();
  router->set_transport("strong", torouter::Transport::sync([](const torouter::Request&) {
                          return torouter::Response::failed(torouter::FailureKind::ServerError,
                                                            "malformed answer: \xff\xfe");
                        }));
  router->set_decision_sink([log](const torouter::DecisionRecord& r) { log->record(r); });
  CHECK(router->invoke("Explain tides \xc3").ok());  // "cheap" answers
  log->flush();
  const auto lines = lines_of(options.path);
  REQUIRE(lines.size() == 1);
  simdjson::dom::parser parser;
  simdjson::dom::element line;
  REQUIRE_FALSE(parser.parse(lines[0]).get(line));  // simdjson checks UTF-8
  CHECK(str(line["prompt"]) == "Explain tides \xEF\xBF\xBD");
  CHECK(str(line["attempts"].at(0)["detail"]) == "malformed answer: \xEF\xBF\xBD\xEF\xBF\xBD");
  std::filesystem::remove_all(dir);
}

TEST_CASE("prompt_hash is FNV-1a-64") {
  CHECK(torouter::prompt_hash("") == "cbf29ce484222325");
  CHECK(torouter::prompt_hash("a") == "af63dc4c8601ec8c");
}

TEST_CASE("decision log: redacted prompts keep only their hash") {
  const auto dir = torouter::testing::process_temp_dir("decision_log_redact");
  DecisionLogOptions options;
  options.path = (dir / "calls.jsonl").string();
  options.redact_prompts = true;
  auto log = std::make_shared<DecisionLog>(options);
  auto router = answering_router();
  router->set_decision_sink([log](const torouter::DecisionRecord& r) { log->record(r); });
  REQUIRE(router->invoke("my secret prompt").ok());
  log->flush();
  const auto lines = lines_of(options.path);
  REQUIRE(lines.size() == 1);
  CHECK_THAT(lines[0], !Contains("secret"));
  simdjson::dom::parser parser;
  simdjson::dom::element line = parser.parse(lines[0]);
  CHECK(line["prompt"].is_null());
  CHECK(str(line["prompt_hash"]) == torouter::prompt_hash("my secret prompt"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("decision log: the file rotates by size and keeps max_files") {
  const auto dir = torouter::testing::process_temp_dir("decision_log_rotate");
  DecisionLogOptions options;
  options.path = (dir / "calls.jsonl").string();
  options.max_bytes = 4000;
  options.max_files = 2;
  auto log = std::make_shared<DecisionLog>(options);
  for (int i = 0; i < 200; ++i) log->record_feedback("req-" + std::to_string(i), 0.5);
  log->flush();
  CHECK(log->written() == 200);
  CHECK(std::filesystem::exists(options.path));
  CHECK(std::filesystem::exists(options.path + ".1"));
  CHECK(std::filesystem::exists(options.path + ".2"));
  CHECK_FALSE(std::filesystem::exists(options.path + ".3"));
  for (const std::string suffix : {"", ".1", ".2"}) {
    CHECK(std::filesystem::file_size(options.path + suffix) <= options.max_bytes);
  }
  // The newest lines are in the file itself, whole.
  const auto lines = lines_of(options.path);
  REQUIRE_FALSE(lines.empty());
  CHECK_THAT(lines.back(), Contains("\"req-199\""));
  std::filesystem::remove_all(dir);
}

TEST_CASE("decision log: a full queue drops lines and counts them") {
  // The log writes into a pipe nobody reads: once the pipe's buffer is full
  // the writer blocks, the queue fills, and further lines are dropped.
  const auto dir = torouter::testing::process_temp_dir("decision_log_full");
  const std::string fifo = (dir / "calls.fifo").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  REQUIRE(reader >= 0);
  DecisionLogOptions options;
  options.path = fifo;
  options.max_bytes = 0;
  options.queue_lines = 8;
  std::uint64_t total = 0;
  {
    DecisionLog log(options);
    const std::string id(1000, 'x');  // about 1 KB a line: the pipe's 64 KB fill fast
    for (int i = 0; i < 400; ++i, ++total) log.record_feedback(id, 0.5);
    CHECK(log.dropped() > 0);
    // Drain the pipe so the writer finishes what it holds.
    char buffer[65536];
    while (log.written() + log.dropped() < total) {
      if (::read(reader, buffer, sizeof buffer) <= 0) ::usleep(1000);
    }
    CHECK(log.written() + log.dropped() == total);
    CHECK(log.written() >= 8);
  }
  ::close(reader);
  std::filesystem::remove_all(dir);
}

TEST_CASE("decision log: options are checked") {
  DecisionLogOptions options;
  CHECK_THROWS_WITH(DecisionLog(options), Contains("path"));
  options.path = "/nonexistent-dir/calls.jsonl";
  CHECK_THROWS_WITH(DecisionLog(options), Contains("/nonexistent-dir/calls.jsonl"));
  options.path = "x.jsonl";
  options.queue_lines = 0;
  CHECK_THROWS_WITH(DecisionLog(options), Contains("queue_lines"));
}
