// Data preparation end to end with in-process transports: the dataset it
// writes, the per-expert cap, retries and failures, resuming after an
// interruption, the metrics on hand-computed cases, and `torouter collect`.
#include "torouter/collect.hpp"

#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "torouter/cost_model.hpp"
#include "torouter/dataset.hpp"
#include "torouter/error.hpp"

using Catch::Matchers::Contains;
using torouter::CollectOptions;
using torouter::CollectPrompt;
using torouter::CollectSummary;
using torouter::ExpertRegistry;
using torouter::ExpertSpec;
using torouter::FailureKind;
using torouter::Request;
using torouter::Response;
using torouter::Transport;

namespace {

namespace fs = std::filesystem;

// A folder of this process (ctest may run test cases of several build
// folders at once), emptied on entry and removed when the test case ends.
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() / ("torouter_collect_test_" + std::to_string(::getpid())) /
              name) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
    fs::remove(path_.parent_path(), ec);  // only once empty
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::vector<CollectPrompt> make_prompts(std::size_t n) {
  std::vector<CollectPrompt> prompts;
  for (std::size_t i = 0; i < n; ++i) {
    CollectPrompt p;
    p.id = "q" + std::to_string(i);
    p.prompt = "What is " + std::to_string(i) + " plus one?";
    p.reference = std::to_string(i + 1);
    p.task = i % 2 == 0 ? "even" : "odd";
    prompts.push_back(p);
  }
  return prompts;
}

// Counts calls per (prompt, expert) and the most calls in flight per expert.
class CallLog {
 public:
  void begin(const Request& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++calls_[{r.prompt, r.expert}];
    if (r.attempt == 1) ++first_attempts_[{r.prompt, r.expert}];
    const int now = ++in_flight_[r.expert];
    max_in_flight_[r.expert] = std::max(max_in_flight_[r.expert], now);
  }
  void end(const Request& r) {
    std::lock_guard<std::mutex> lock(mutex_);
    --in_flight_[r.expert];
  }
  int calls(const std::string& prompt, const std::string& expert) {
    std::lock_guard<std::mutex> lock(mutex_);
    return calls_[{prompt, expert}];
  }
  int first_attempts(const std::string& prompt, const std::string& expert) {
    std::lock_guard<std::mutex> lock(mutex_);
    return first_attempts_[{prompt, expert}];
  }
  int max_in_flight(const std::string& expert) {
    std::lock_guard<std::mutex> lock(mutex_);
    return max_in_flight_[expert];
  }

 private:
  std::mutex mutex_;
  std::map<std::pair<std::string, std::string>, int> calls_, first_attempts_;
  std::map<std::string, int> in_flight_, max_in_flight_;
};

// The reference of each prompt, so that the "right" expert can answer it.
std::map<std::string, std::string> references(const std::vector<CollectPrompt>& prompts) {
  std::map<std::string, std::string> out;
  for (const auto& p : prompts) out[p.prompt] = p.reference;
  return out;
}

// Wraps `answer` so that every call is counted, with a short sleep so that
// calls overlap and a cap violation would show.
Transport counted(CallLog& log, std::function<Response(const Request&)> answer,
                  std::chrono::milliseconds pause = std::chrono::milliseconds(2)) {
  return Transport::sync([&log, answer, pause](const Request& r) {
    log.begin(r);
    std::this_thread::sleep_for(pause);
    Response response = answer(r);
    log.end(r);
    return response;
  });
}

CollectOptions fast_options() {
  CollectOptions o;
  o.threads = 6;
  o.default_max_concurrent_calls = 3;
  o.initial_backoff = std::chrono::milliseconds(1);
  o.max_backoff = std::chrono::milliseconds(5);
  o.max_attempts = 3;
  return o;
}

}  // namespace

TEST_CASE("metrics on hand-computed cases") {
  using namespace torouter;
  SECTION("exact match normalises case and whitespace only") {
    CHECK(normalize_answer("  The   Cat\n\tSat ") == "the cat sat");
    CHECK(exact_match_score("  The   Cat\n", "the cat") == 1.0);
    CHECK(exact_match_score("the cat.", "the cat") == 0.0);
    CHECK(exact_match_score("", "   ") == 1.0);
    CHECK(exact_match_score("dog", "cat") == 0.0);
  }
  SECTION("token F1, SQuAD style") {
    // Articles and punctuation go: {cat, sat, on, mat} vs {cat, on, mat};
    // 3 shared, P = 3/4, R = 1, F1 = 2 * 3/4 / (7/4) = 6/7.
    CHECK(token_f1_score("The cat sat on the mat.", "a cat on a mat") == Approx(6.0 / 7.0));
    // Multisets: {cat, cat, dog} vs {cat, dog, dog} share one cat and one dog.
    CHECK(token_f1_score("cat cat dog", "cat dog dog") == Approx(2.0 / 3.0));
    CHECK(token_f1_score("Paris!", "paris") == 1.0);
    CHECK(token_f1_score("London", "Paris") == 0.0);
    CHECK(token_f1_score("the", "") == 1.0);  // both empty once articles go
    CHECK(token_f1_score("cat", "") == 0.0);
  }
  SECTION("ROUGE-L F-measure") {
    // LCS of [police killed the gunman] and [the police kill the gunman] is
    // [police the gunman]: P = 3/4, R = 3/5, F = 2 * 0.45 / 1.35 = 2/3.
    CHECK(rouge_l_score("police killed the gunman", "the police kill the gunman") ==
          Approx(2.0 / 3.0));
    // Reversed order: the LCS is one token; P = R = 1/4.
    CHECK(rouge_l_score("a b c d", "d c b a") == Approx(0.25));
    CHECK(rouge_l_score("A, B; C", "a b c") == 1.0);
    // [a x b] vs [a b]: LCS 2, P = 2/3, R = 1, F = 2 * (2/3) / (5/3) = 4/5.
    CHECK(rouge_l_score("a x b", "a b") == Approx(0.8));
    CHECK(rouge_l_score("", "") == 1.0);
    CHECK(rouge_l_score("word", "...") == 0.0);
  }
  SECTION("metric names") {
    CHECK(parse_metric("exact") == Metric::ExactMatch);
    CHECK(parse_metric("f1") == Metric::TokenF1);
    CHECK(parse_metric("rougeL") == Metric::RougeL);
    CHECK_THROWS_WITH(parse_metric("bleu"), Contains("unknown metric \"bleu\""));
    CollectPrompt p;
    p.reference = "a b";
    CHECK(make_metric_scorer(Metric::RougeL)(p, "a x b") == Approx(0.8));
  }
}

TEST_CASE("prompt files parse and their errors name the file line and field") {
  using torouter::parse_prompts;
  const auto ok = parse_prompts(
      "{\"id\": \"a\", \"prompt\": \"P1\", \"reference\": \"R1\", \"task\": \"t\", \"extra\": 1}\n"
      "{\"prompt\": \"P2 \u2028 sep\", \"reference\": \"R2\"}\n"
      "{\"id\": 7, \"prompt\": \"P3\", \"reference\": \"\"}\n\n",
      "p.jsonl");
  REQUIRE(ok.size() == 3);
  CHECK(ok[0].id == "a");
  CHECK(ok[0].task == "t");
  CHECK(ok[1].id == "line-2");
  CHECK(ok[1].prompt == "P2 \u2028 sep");
  CHECK(ok[2].id == "7");
  CHECK(ok[2].reference.empty());

  CHECK_THROWS_WITH(
      parse_prompts("{\"prompt\": \"x\", \"reference\": \"y\"}\n{\"reference\": \"y\"}\n",
                    "p.jsonl"),
      Contains("p.jsonl:2: prompt: missing"));
  CHECK_THROWS_WITH(parse_prompts("{\"prompt\": \"x\"}\n", "p.jsonl"),
                    Contains("p.jsonl:1: reference: missing"));
  CHECK(parse_prompts("{\"prompt\": \"x\"}\n", "p.jsonl", /*require_reference=*/false).size() == 1);
  CHECK_THROWS_WITH(parse_prompts("{\"prompt\": 3, \"reference\": \"y\"}\n", "p.jsonl"),
                    Contains("p.jsonl:1: prompt: expected a string, got a number"));
  CHECK_THROWS_WITH(
      parse_prompts("{\"id\": true, \"prompt\": \"x\", \"reference\": \"y\"}\n", "p.jsonl"),
      Contains("p.jsonl:1: id: expected a string"));
  CHECK_THROWS_WITH(parse_prompts("{\"prompt\": \"x\", \"reference\": [1]}\n", "p.jsonl"),
                    Contains("p.jsonl:1: reference: expected a string, got an array"));
  CHECK_THROWS_WITH(parse_prompts("{\"prompt\": \"x\",\n", "p.jsonl"),
                    Contains("p.jsonl:1: not valid JSON"));
  CHECK_THROWS_WITH(parse_prompts("[1]\n", "p.jsonl"),
                    Contains("p.jsonl:1: expected a JSON object"));
  CHECK_THROWS_WITH(parse_prompts("{\"id\": \"a\", \"prompt\": \"x\", \"reference\": \"y\"}\n"
                                  "{\"id\": \"a\", \"prompt\": \"z\", \"reference\": \"y\"}\n",
                                  "p.jsonl"),
                    Contains("p.jsonl:2: id: \"a\" already used on line 1"));
  CHECK_THROWS_WITH(parse_prompts("{\"prompt\": \"x\", \"reference\": \"y\"}\n\n"
                                  "{\"prompt\": \"z\", \"reference\": \"y\"}\n",
                                  "p.jsonl"),
                    Contains("p.jsonl:2: empty line"));
  CHECK_THROWS_WITH(torouter::load_prompts("/nonexistent/prompts.jsonl"),
                    Contains("/nonexistent/prompts.jsonl: cannot open file"));
}

TEST_CASE("collect writes qualities tokens and costs within the caps and reports failures") {
  const TempDir dir_tmp("end_to_end");
  const fs::path& dir = dir_tmp.path();
  const auto prompts = make_prompts(12);
  const auto answers = references(prompts);

  ExpertRegistry registry;
  registry.add(ExpertSpec("right", 1.0, 2.0));
  registry.add(ExpertSpec("wrong", 0.5, 0.5));
  ExpertSpec slow("slow", 3.0, 4.0);
  slow.max_concurrent_calls = 2;
  registry.add(slow);
  registry.add(ExpertSpec("flaky", 0.0, 10.0));
  registry.add(ExpertSpec("broken", 1.0, 1.0));
  ExpertSpec off("off", 1.0, 1.0);
  off.enabled = false;
  registry.add(off);

  CallLog log;
  std::map<std::string, Transport> transports;
  transports["right"] = counted(
      log, [&answers](const Request& r) { return Response::answer(answers.at(r.prompt), 10, 2); });
  transports["wrong"] = counted(log, [](const Request&) { return Response::answer("nope"); });
  // Streamed in chunks, with pauses long enough for calls to overlap.
  transports["slow"] = Transport::streaming(
      [&log, &answers](const Request& r, const torouter::ChunkCallback& on_chunk) {
        log.begin(r);
        std::this_thread::sleep_for(std::chrono::milliseconds(15));
        const std::string& text = answers.at(r.prompt);
        on_chunk(std::string_view(text).substr(0, 1));
        on_chunk(std::string_view(text).substr(1));
        log.end(r);
        Response response;
        response.latency = std::chrono::milliseconds(1234);
        return response;
      });
  transports["flaky"] = counted(log, [&answers](const Request& r) {
    if (r.attempt == 1) return Response::failed(FailureKind::ServerError, "HTTP 503");
    return Response::answer(answers.at(r.prompt) + " ", 0, 7);
  });
  transports["broken"] = counted(log, [](const Request&) {
    return Response::failed(FailureKind::ServerError, "HTTP 500: down");
  });

  CollectOptions options = fast_options();
  options.test_fraction = 0.25;
  options.seed = 42;
  // Called one at a time, but from worker threads, where Catch2 may not assert.
  std::size_t progress_calls = 0, progress_total = 0;
  options.on_progress = [&](const torouter::CollectProgress& p) {
    ++progress_calls;
    progress_total = p.total;
  };
  const CollectSummary s = torouter::collect_dataset(
      prompts, registry, transports, torouter::make_metric_scorer(torouter::Metric::ExactMatch),
      dir.string(), options);

  CHECK_FALSE(s.cancelled);
  CHECK(s.prompts == 12);
  CHECK(s.experts == 5);  // "off" is disabled
  CHECK(s.calls_made == 60);
  CHECK(progress_calls == 60);
  CHECK(progress_total == 60);
  CHECK(s.skipped_done == 0);
  CHECK(s.failed == 12);
  CHECK(s.attempts ==
        12 * 3 + 12 * 2 + 12 * 3);  // right, wrong, slow once; flaky twice; broken thrice
  REQUIRE(s.failures.size() == 12);
  for (const auto& f : s.failures) {
    CHECK(f.expert == "broken");
    CHECK(f.failure == "server_error");
    CHECK(f.message == "HTTP 500: down");
    CHECK(f.attempts == 3);
    CHECK(f.this_run);
  }
  CHECK(s.train_rows == 9);
  CHECK(s.test_rows == 3);

  // Caps: "slow" at its own 2, the others at the default 3.
  CHECK(log.max_in_flight("slow") <= 2);
  CHECK(log.max_in_flight("slow") >= 1);
  for (const char* e : {"right", "wrong", "flaky", "broken"}) CHECK(log.max_in_flight(e) <= 3);
  for (const auto& p : prompts) {
    CHECK(log.calls(p.prompt, "right") == 1);
    CHECK(log.calls(p.prompt, "flaky") == 2);
    CHECK(log.calls(p.prompt, "broken") == 3);
    CHECK(log.calls(p.prompt, "off") == 0);
  }

  // The folder loads with the library's own reader.
  const torouter::RoutingDataset data = torouter::load_routing_dataset(dir.string());
  REQUIRE(data.experts == std::vector<std::string>{"right", "wrong", "slow", "flaky", "broken"});
  CHECK(data.registry[2].input_usd_per_mtok == 3.0);
  CHECK(data.registry[2].max_concurrent_calls == 2);
  CHECK(data.registry[3].output_usd_per_mtok == 10.0);
  REQUIRE(data.train.size() + data.test.size() == 12);
  double expected_total = 0;
  std::size_t seen = 0;
  for (const auto* rows : {&data.train, &data.test}) {
    for (const auto& row : *rows) {
      ++seen;
      const std::size_t i = std::stoul(row.id.substr(1));
      CHECK(row.prompt == prompts[i].prompt);
      CHECK(row.task == prompts[i].task);
      CHECK_FALSE(row.complete());
      CHECK_FALSE(row.outcomes[4].present);  // broken
      const auto in_estimate = static_cast<double>(torouter::estimate_tokens(row.prompt));
      // right: exact, reported tokens 10 in, 2 out at $1/$2 per million.
      CHECK(row.outcomes[0].quality == 1.0);
      CHECK(*row.outcomes[0].cost_usd == Approx(14e-6));
      CHECK(*row.outcomes[0].output_chars == prompts[i].reference.size());
      // wrong: quality 0, tokens estimated: the prompt's and ceil(4 / 4) = 1.
      CHECK(row.outcomes[1].quality == 0.0);
      CHECK(*row.outcomes[1].cost_usd == Approx((in_estimate * 0.5 + 1 * 0.5) / 1e6));
      CHECK(*row.outcomes[1].output_chars == 4);
      // slow: the chunks joined into the right answer.
      CHECK(row.outcomes[2].quality == 1.0);
      CHECK(*row.outcomes[2].cost_usd ==
            Approx((in_estimate * 3.0 +
                    static_cast<double>(torouter::estimate_tokens(prompts[i].reference)) * 4.0) /
                   1e6));
      // flaky: answered on its retry; the trailing space is normalised away.
      CHECK(row.outcomes[3].quality == 1.0);
      CHECK(*row.outcomes[3].cost_usd == Approx(7 * 10.0 / 1e6));
      for (std::size_t e = 0; e < 4; ++e) expected_total += *row.outcomes[e].cost_usd;
    }
  }
  CHECK(seen == 12);
  CHECK(s.total_cost_usd == Approx(expected_total));
  CHECK(s.cost_usd == Approx(expected_total));

  // Tokens and latency are recorded beside the shared fields.
  const std::string train = read_text(dir / "train.jsonl");
  CHECK_THAT(train, Contains("\"input_tokens\": 10, \"output_tokens\": 2"));
  CHECK_THAT(train, Contains("\"latency_ms\": 1234"));

  // The same seed splits the same way.
  const TempDir again_tmp("end_to_end_again");
  const fs::path& again = again_tmp.path();
  CallLog log2;
  std::map<std::string, Transport> simple;
  simple["right"] = counted(log2, [](const Request&) { return Response::answer("x"); });
  ExpertRegistry one;
  one.add(ExpertSpec("right", 1.0, 1.0));
  CollectOptions split = fast_options();
  split.test_fraction = 0.25;
  split.seed = 42;
  torouter::collect_dataset(prompts, one, simple,
                            torouter::make_metric_scorer(torouter::Metric::TokenF1), again.string(),
                            split);
  const auto data2 = torouter::load_routing_dataset(again.string());
  REQUIRE(data2.test.size() == data.test.size());
  for (std::size_t i = 0; i < data.test.size(); ++i) CHECK(data2.test[i].id == data.test[i].id);
}

TEST_CASE("collect resumes after an interruption without calling a pair twice") {
  const TempDir dir_tmp("resume");
  const fs::path& dir = dir_tmp.path();
  const auto prompts = make_prompts(20);
  const auto answers = references(prompts);
  ExpertRegistry registry;
  registry.add(ExpertSpec("right", 1.0, 1.0));
  ExpertSpec slow("slow", 1.0, 1.0);
  slow.max_concurrent_calls = 2;
  registry.add(slow);
  registry.add(ExpertSpec("flaky", 1.0, 1.0));

  CallLog log;
  std::map<std::string, Transport> transports;
  transports["right"] =
      counted(log, [&answers](const Request& r) { return Response::answer(answers.at(r.prompt)); });
  transports["slow"] = counted(
      log, [](const Request&) { return Response::answer("slow answer"); },
      std::chrono::milliseconds(5));
  transports["flaky"] = counted(log, [&answers](const Request& r) {
    if (r.attempt == 1)
      return Response::failed(FailureKind::RateLimited, "429", std::chrono::milliseconds(1));
    return Response::answer(answers.at(r.prompt));
  });

  // First run: cancelled once 15 pairs are done (in-flight pairs finish).
  std::atomic<bool> stop{false};
  CollectOptions first = fast_options();
  first.cancel = &stop;
  first.test_fraction = 0.2;
  first.on_progress = [&stop](const torouter::CollectProgress& p) {
    if (p.done >= 15) stop.store(true);
  };
  const auto scorer = torouter::make_metric_scorer(torouter::Metric::ExactMatch);
  const CollectSummary s1 =
      torouter::collect_dataset(prompts, registry, transports, scorer, dir.string(), first);
  CHECK(s1.cancelled);
  CHECK(s1.calls_made >= 15);
  CHECK(s1.calls_made < 60);
  CHECK_FALSE(fs::exists(dir / "train.jsonl"));
  CHECK_FALSE(fs::exists(dir / "experts.json"));
  REQUIRE(fs::exists(dir / "collect_journal.jsonl"));

  // A crash mid-write leaves a torn last line: it is dropped, not fatal.
  {
    std::ofstream journal(dir / "collect_journal.jsonl", std::ios::app | std::ios::binary);
    journal << "{\"id\":\"q19\",\"expert\":\"right\",\"prompt_ha";
  }

  CollectOptions second = fast_options();
  second.test_fraction = 0.2;
  const CollectSummary s2 =
      torouter::collect_dataset(prompts, registry, transports, scorer, dir.string(), second);
  CHECK_FALSE(s2.cancelled);
  CHECK(s2.skipped_done == s1.calls_made);
  CHECK(s1.calls_made + s2.calls_made == 60);
  CHECK(s2.failed == 0);
  for (const auto& p : prompts) {
    CHECK(log.first_attempts(p.prompt, "right") == 1);
    CHECK(log.first_attempts(p.prompt, "slow") == 1);
    CHECK(log.first_attempts(p.prompt, "flaky") == 1);
    CHECK(log.calls(p.prompt, "right") == 1);
    CHECK(log.calls(p.prompt, "flaky") == 2);
  }
  CHECK(log.max_in_flight("slow") <= 2);

  const auto data = torouter::load_routing_dataset(dir.string());
  CHECK(data.train.size() == 16);
  CHECK(data.test.size() == 4);
  for (const auto* rows : {&data.train, &data.test}) {
    for (const auto& row : *rows) {
      REQUIRE(row.complete());
      CHECK(row.outcomes[0].quality == 1.0);
      CHECK(row.outcomes[1].quality == 0.0);
      CHECK(row.outcomes[2].quality == 1.0);
    }
  }

  // A third run has nothing to call and rewrites the same dataset.
  const std::string before = read_text(dir / "train.jsonl");
  const CollectSummary s3 =
      torouter::collect_dataset(prompts, registry, transports, scorer, dir.string(), second);
  CHECK(s3.calls_made == 0);
  CHECK(s3.skipped_done == 60);
  CHECK(read_text(dir / "train.jsonl") == before);
  CHECK(s3.total_cost_usd == Approx(s2.total_cost_usd));
  CHECK(s3.total_cost_usd == Approx(s1.cost_usd + s2.cost_usd));

  // An edited prompt under an old id is refused rather than given an old answer.
  auto edited = prompts;
  edited[3].prompt = "something else";
  CHECK_THROWS_WITH(
      torouter::collect_dataset(edited, registry, transports, scorer, dir.string(), second),
      Contains("prompt \"q3\" was recorded with a different prompt text"));
}

TEST_CASE("failed pairs stay reported across runs and are retried only on request") {
  const TempDir dir_tmp("failed");
  const fs::path& dir = dir_tmp.path();
  const auto prompts = make_prompts(3);
  ExpertRegistry registry;
  registry.add(ExpertSpec("ok", 1.0, 1.0));
  registry.add(ExpertSpec("down", 1.0, 1.0));
  CallLog log;
  bool down_is_up = false;
  std::map<std::string, Transport> transports;
  transports["ok"] = counted(log, [](const Request&) { return Response::answer("fine"); });
  transports["down"] = counted(log, [&down_is_up](const Request&) {
    if (down_is_up) return Response::answer("fine");
    return Response::failed(FailureKind::BadRequest, "HTTP 400: no");
  });
  // A custom scorer (an LLM judge would sit here): the answer's length.
  const torouter::AnswerScorer judge = [](const CollectPrompt&, std::string_view answer) {
    return answer.size() >= 4 ? 0.75 : 0.25;
  };
  CollectOptions options = fast_options();
  const CollectSummary s1 =
      torouter::collect_dataset(prompts, registry, transports, judge, dir.string(), options);
  CHECK(s1.failed == 3);
  REQUIRE(s1.failures.size() == 3);
  CHECK(s1.failures[0].failure == "bad_request");
  CHECK(s1.failures[0].attempts == 1);  // not retryable
  for (const auto& p : prompts) CHECK(log.calls(p.prompt, "down") == 1);

  const auto rows = torouter::load_dataset_rows((dir / "train.jsonl").string(), {"ok", "down"});
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].outcomes[0].quality == 0.75);
  CHECK_FALSE(rows[0].outcomes[1].present);
  CHECK_FALSE(fs::exists(dir / "test.jsonl"));

  // A rerun calls nothing and still reports the failures, as earlier ones.
  down_is_up = true;
  const CollectSummary s2 =
      torouter::collect_dataset(prompts, registry, transports, judge, dir.string(), options);
  CHECK(s2.calls_made == 0);
  REQUIRE(s2.failures.size() == 3);
  CHECK_FALSE(s2.failures[0].this_run);

  options.retry_failed = true;
  const CollectSummary s3 =
      torouter::collect_dataset(prompts, registry, transports, judge, dir.string(), options);
  CHECK(s3.calls_made == 3);
  CHECK(s3.failures.empty());
  for (const auto& p : prompts) {
    CHECK(log.calls(p.prompt, "down") == 2);
    CHECK(log.calls(p.prompt, "ok") == 1);
  }
  const auto complete = torouter::load_dataset_rows((dir / "train.jsonl").string(), {"ok", "down"});
  for (const auto& row : complete) CHECK(row.complete());
}

TEST_CASE("a rate limit's retry_after is waited out within the limit and not past it") {
  const TempDir dir_tmp("retry_after");
  const fs::path& dir = dir_tmp.path();
  const auto prompts = make_prompts(2);
  ExpertRegistry registry;
  registry.add(ExpertSpec("soon", 1.0, 1.0));
  registry.add(ExpertSpec("later", 1.0, 1.0));
  CallLog log;
  std::map<std::string, Transport> transports;
  // "soon" asks for 30 ms twice, within the limit: waited out exactly (not
  // the 3 s backoff), then answered.
  transports["soon"] = counted(log, [](const Request& r) {
    if (r.attempt <= 2)
      return Response::failed(FailureKind::RateLimited, "429", std::chrono::milliseconds(30));
    return Response::answer("fine");
  });
  // "later" asks for an hour, past the limit: failed at once, not waited.
  transports["later"] = counted(log, [](const Request&) {
    return Response::failed(FailureKind::RateLimited, "429", std::chrono::hours(1));
  });
  CollectOptions options = fast_options();
  options.max_retry_after = std::chrono::milliseconds(200);
  options.initial_backoff = std::chrono::seconds(3);
  options.max_backoff = std::chrono::seconds(3);
  const auto start = std::chrono::steady_clock::now();
  const CollectSummary s = torouter::collect_dataset(
      prompts, registry, transports, torouter::make_metric_scorer(torouter::Metric::ExactMatch),
      dir.string(), options);
  // Neither expert waited a backoff, nor "later" its hour.
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(3));
  REQUIRE(s.failures.size() == 2);
  for (const auto& f : s.failures) {
    CHECK(f.expert == "later");
    CHECK(f.failure == "rate_limited");
    CHECK(f.attempts == 1);
    CHECK_THAT(f.message, Contains("exceeds max_retry_after 200 ms"));
  }
  for (const auto& p : prompts) {
    CHECK(log.calls(p.prompt, "soon") == 3);
    CHECK(log.calls(p.prompt, "later") == 1);
  }
}

TEST_CASE("scorer failures and async timeouts are recorded and bad setups refused") {
  const TempDir dir_tmp("errors");
  const fs::path& dir = dir_tmp.path();
  const auto prompts = make_prompts(2);
  ExpertRegistry registry;
  registry.add(ExpertSpec("a", 1.0, 1.0));
  std::map<std::string, Transport> transports;
  transports["a"] = Transport::sync([](const Request&) { return Response::answer("x"); });
  const torouter::AnswerScorer bad_judge = [](const CollectPrompt& p, std::string_view) -> double {
    if (p.id == "q0") throw std::runtime_error("judge unavailable");
    return 1.5;
  };
  CollectOptions options = fast_options();
  const CollectSummary s =
      torouter::collect_dataset(prompts, registry, transports, bad_judge, dir.string(), options);
  REQUIRE(s.failures.size() == 2);
  CHECK(s.failures[0].failure == "scoring_error");
  CHECK_THAT(s.failures[0].message, Contains("judge unavailable"));
  CHECK_THAT(s.failures[1].message, Contains("outside [0, 1]"));

  // An asynchronous transport that never completes times out on each attempt.
  const TempDir dir2_tmp("async_timeout");
  const fs::path& dir2 = dir2_tmp.path();
  std::map<std::string, Transport> silent;
  silent["a"] = Transport::async([](const Request&, torouter::CompletionCallback) {});
  options.attempt_timeout = std::chrono::milliseconds(20);
  options.max_attempts = 2;
  const CollectSummary t = torouter::collect_dataset(
      prompts, registry, silent, torouter::make_metric_scorer(torouter::Metric::ExactMatch),
      dir2.string(), options);
  REQUIRE(t.failures.size() == 2);
  CHECK(t.failures[0].failure == "timeout");
  CHECK(t.failures[0].attempts == 2);

  const auto scorer = torouter::make_metric_scorer(torouter::Metric::ExactMatch);
  std::map<std::string, Transport> none;
  CHECK_THROWS_WITH(
      torouter::collect_dataset(prompts, registry, none, scorer, dir.string(), options),
      Contains("no transport for expert \"a\""));
  auto duplicated = prompts;
  duplicated[1].id = "q0";
  CHECK_THROWS_WITH(
      torouter::collect_dataset(duplicated, registry, transports, scorer, dir.string(), options),
      Contains("duplicate prompt id \"q0\""));
  CollectOptions bad = fast_options();
  bad.test_fraction = 0.5;
  bad.output_file = "test.jsonl";
  CHECK_THROWS_WITH(
      torouter::collect_dataset(prompts, registry, transports, scorer, dir.string(), bad),
      Contains("output_file cannot be test.jsonl"));
  bad = fast_options();
  bad.threads = 0;
  CHECK_THROWS_WITH(
      torouter::collect_dataset(prompts, registry, transports, scorer, dir.string(), bad),
      Contains("threads must be >= 1"));

  // A journal that is not one is refused, naming the file and line.
  const TempDir dir3_tmp("bad_journal");
  const fs::path& dir3 = dir3_tmp.path();
  write_text(dir3 / "collect_journal.jsonl", "{\"something\": 1}\n");
  CHECK_THROWS_WITH(
      torouter::collect_dataset(prompts, registry, transports, scorer, dir3.string(), options),
      Contains("collect_journal.jsonl:1: not a torouter collect journal"));
  write_text(dir3 / "collect_journal.jsonl",
             "{\"torouter_collect_journal\":1}\n{\"id\":\"q0\",\"expert\":\"a\",\"ok\":true}\n");
  CHECK_THROWS_WITH(
      torouter::collect_dataset(prompts, registry, transports, scorer, dir3.string(), options),
      Contains("collect_journal.jsonl:2: prompt_hash: missing"));
}

namespace {

struct Run {
  int status = 0;
  std::string output;
};

Run run_cli(const std::string& arguments, const fs::path& dir) {
  const auto out = dir / "cli.out";
  const std::string command =
      std::string("'") + TOROUTER_CLI + "' " + arguments + " > '" + out.string() + "' 2>&1";
  const int raw = std::system(command.c_str());
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, read_text(out)};
}

}  // namespace

TEST_CASE("torouter collect with a command transport") {
  const TempDir dir_tmp("cli");
  const fs::path& dir = dir_tmp.path();
  // echo repeats the prompt, four always says "four", bad fails on stderr.
  const fs::path script = dir / "client.sh";
  write_text(script,
             "#!/bin/sh\n"
             "prompt=$(cat)\n"
             "case \"$1\" in\n"
             "  echo) printf '%s\\n' \"$prompt\" ;;\n"
             "  four) echo four ;;\n"
             "  *) echo \"no such model: $1\" >&2; exit 3 ;;\n"
             "esac\n");
  fs::permissions(script, fs::perms::owner_all);
  write_text(dir / "experts.json",
             "{\"experts\": {\"echo\": {\"input_usd_per_mtok\": 1, \"output_usd_per_mtok\": 2},"
             " \"four\": {\"input_usd_per_mtok\": 0.5}, \"bad\": {}}}\n");
  write_text(dir / "prompts.jsonl",
             "{\"id\": \"p1\", \"prompt\": \"four\", \"reference\": \"four\", \"task\": \"t\"}\n"
             "{\"id\": \"p2\", \"prompt\": \"two words\", \"reference\": \"two words\"}\n"
             "{\"id\": \"p3\", \"prompt\": \"The cat\", \"reference\": \"a cat\"}\n"
             "{\"id\": \"p4\", \"prompt\": \"x\", \"reference\": \"four x\"}\n");
  const fs::path out = dir / "data";
  const std::string common = "--prompts '" + (dir / "prompts.jsonl").string() + "' --experts '" +
                             (dir / "experts.json").string() + "' --out '" + out.string() +
                             "' --transport 'command:" + script.string() + "'";
  const Run r = run_cli(
      "collect " + common + " --metric f1 --threads 3 --attempts 1 --test-fraction 0.25 --seed 1",
      dir);
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK_THAT(r.output, Contains("12 calls made") && Contains("4 failed") &&
                           Contains("expert \"bad\": server_error") &&
                           Contains("no such model: bad") && Contains("(3 rows)") &&
                           Contains("(1 rows)"));

  const auto data = torouter::load_routing_dataset(out.string());
  REQUIRE(data.experts == std::vector<std::string>{"echo", "four", "bad"});
  std::map<std::string, torouter::DatasetRow> by_id;
  for (const auto* rows : {&data.train, &data.test}) {
    for (const auto& row : *rows) by_id[row.id] = row;
  }
  REQUIRE(by_id.size() == 4);
  CHECK(by_id["p1"].task == "t");
  CHECK(by_id["p1"].outcomes[0].quality == 1.0);
  CHECK(by_id["p1"].outcomes[1].quality == 1.0);
  CHECK_FALSE(by_id["p1"].outcomes[2].present);
  CHECK(by_id["p3"].outcomes[0].quality == 1.0);                // F1 drops the articles
  CHECK(by_id["p4"].outcomes[1].quality == Approx(2.0 / 3.0));  // {four} vs {four, x}
  CHECK(*by_id["p2"].outcomes[0].output_chars == 9);            // the trailing newline removed
  // echo on p2: ceil(9 / 4) = 3 tokens in and out at $1 and $2 per million.
  CHECK(*by_id["p2"].outcomes[0].cost_usd == Approx(9e-6));

  // A rerun finds everything done.
  const Run again =
      run_cli("collect " + common + " --metric f1 --test-fraction 0.25 --seed 1", dir);
  INFO(again.output);
  CHECK(again.status == 0);
  CHECK_THAT(again.output, Contains("0 calls made") && Contains("12 skipped as already done") &&
                               Contains("failed (earlier run)"));

  const Run wrong = run_cli("collect " + common + " --transport http://x", dir);
  CHECK(wrong.status == 1);
  CHECK_THAT(wrong.output, Contains("--transport: expected command:PROGRAM"));
  const Run metric = run_cli("collect " + common + " --metric bleu", dir);
  CHECK(metric.status == 1);
  CHECK_THAT(metric.output, Contains("unknown metric \"bleu\""));
  write_text(dir / "bad_prompts.jsonl", "{\"id\": \"p1\", \"prompt\": \"x\"}\n");
  const Run malformed =
      run_cli("collect --prompts '" + (dir / "bad_prompts.jsonl").string() + "' --experts '" +
                  (dir / "experts.json").string() + "' --out '" + (dir / "other").string() +
                  "' --transport command:/bin/cat",
              dir);
  CHECK(malformed.status == 1);
  CHECK_THAT(malformed.output, Contains("bad_prompts.jsonl:1: reference: missing"));
}
