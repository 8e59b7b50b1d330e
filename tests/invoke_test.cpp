#include <catch2/catch.hpp>

#include <any>
#include <atomic>
#include <chrono>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/invoke_mode.hpp"
#include "torouter/error.hpp"
#include "support/test_scorer.hpp"
#include "torouter/router.hpp"

using namespace std::chrono_literals;
using torouter::AttemptOutcome;
using torouter::ExpertRegistry;
using torouter::ExpertSpec;
using torouter::FailureKind;
using torouter::InvokeError;
using torouter::InvokeOptions;
using torouter::InvokeResult;
using torouter::Request;
using torouter::Response;
using torouter::Router;
using torouter::RouterOptions;
using torouter::Transport;
using torouter::testing::TableScorer;
using torouter::testing::invoke;
using Catch::Matchers::Contains;

namespace {

// Experts ranked strong > mid > cheap at lambda 0.
ExpertRegistry experts() {
  ExpertRegistry registry;
  registry.add(ExpertSpec("cheap", 0.1, 0.1));
  registry.add(ExpertSpec("mid", 1.0, 1.0));
  registry.add(ExpertSpec("strong", 10.0, 10.0));
  return registry;
}

std::shared_ptr<TableScorer> scorer() {
  auto s = std::make_shared<TableScorer>(std::vector<std::string>{"cheap", "mid", "strong"},
                                         std::vector<float>{0.5f, 0.7f, 0.9f});
  s->predict_output_tokens({100, 100, 100});
  return s;
}

// Fast timings so failure paths run in milliseconds.
RouterOptions fast_options() {
  RouterOptions o;
  o.initial_backoff = 5ms;
  o.max_backoff = 20ms;
  o.max_retry_after = 100ms;
  o.attempt_timeout = 200ms;
  o.cooldown = 10s;
  o.capacity_wait = 20ms;
  return o;
}

// A synchronous transport that answers from a script, then repeats its last
// entry; it counts its calls.
struct Scripted {
  std::deque<Response> script;
  Response last = Response::answer("ok", 10, 20);
  int calls = 0;
  std::mutex mutex;

  Transport transport() {
    return Transport::sync([this](const Request& r) {
      std::lock_guard<std::mutex> lock(mutex);
      ++calls;
      if (!script.empty()) {
        last = script.front();
        script.pop_front();
      }
      Response out = last;
      if (out.ok()) out.text = r.expert + ": " + out.text;
      return out;
    });
  }
};

Response fails(FailureKind kind, std::chrono::milliseconds retry_after = 0ms) {
  return Response::failed(kind, std::string(torouter::to_string(kind)), retry_after);
}

std::vector<std::string> trace(const InvokeResult& r) {
  std::vector<std::string> out;
  for (const auto& a : r.attempts) {
    out.push_back(a.expert + ":" + std::string(torouter::to_string(a.outcome)) +
                  (a.outcome == AttemptOutcome::Failed
                       ? ":" + std::string(torouter::to_string(a.failure)) : ""));
  }
  return out;
}

using Trace = std::vector<std::string>;

// The in-process store, recording every settlement it is sent.
class RecordingStore : public torouter::StateStore {
 public:
  void configure(const ExpertRegistry& experts,
                 std::vector<torouter::BudgetRule> budgets) override {
    store_.configure(experts, std::move(budgets));
  }
  void admit(const torouter::Admission& admission,
             std::function<void(const torouter::AdmissionResult&)> done) override {
    store_.admit(admission, std::move(done));
  }
  void settle(const torouter::Settlement& settlement) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      settlements_.push_back(settlement);
    }
    store_.settle(settlement);
  }
  int in_flight(std::size_t expert) const override { return store_.in_flight(expert); }
  double spent_usd() const override { return store_.spent_usd(); }

  std::vector<torouter::Settlement> settlements() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return settlements_;
  }

 private:
  torouter::InProcessStateStore store_;
  mutable std::mutex mutex_;
  std::vector<torouter::Settlement> settlements_;
};

// A router over the three experts with scripted transports.
struct Rig {
  Scripted cheap, mid, strong;
  Router router;

  explicit Rig(RouterOptions options = fast_options())
      : router(experts(), scorer(), nullptr, options) {
    router.set_transport("cheap", cheap.transport());
    router.set_transport("mid", mid.transport());
    router.set_transport("strong", strong.transport());
  }
};

}  // namespace

TEST_CASE("invoke calls the pick and charges what it billed") {
  Rig rig;
  const InvokeResult r = invoke(rig.router, "hi");
  REQUIRE(r.ok());
  CHECK(r.expert == "strong");
  CHECK(r.response.text == "strong: ok");
  CHECK(trace(r) == Trace{"strong:answered"});
  // 10 tokens in, 20 out at $10 per million each.
  CHECK(r.cost_usd == Approx(30 * 10.0 / 1e6));
  CHECK(r.attempts[0].cost_usd == r.cost_usd);
  CHECK_FALSE(r.attempts[0].usage_capped);
  CHECK(rig.router.spent_usd() == Approx(r.cost_usd));
  CHECK(rig.router.status("strong").calls == 1);
  CHECK(rig.router.status("strong").in_flight == 0);
}

TEST_CASE("a usage count past what an expert can take is billed at that bound") {
  Rig rig;
  rig.strong.last = Response::answer("ok", 1'000'000'000'000'000, 1'000'000'000'000'000);
  SECTION("no context window: ten million tokens each way at most") {
    const InvokeResult r = invoke(rig.router, "hi");
    REQUIRE(r.ok());
    CHECK(r.cost_usd == Approx(2e7 * 10.0 / 1e6));
    CHECK(r.attempts[0].usage_capped);
    CHECK_THAT(r.attempts[0].detail, Contains("usage not believed"));
  }
  SECTION("the call's max_output_tokens bounds its output, per answer asked for") {
    InvokeOptions options;
    options.max_output_tokens = 100;
    const InvokeResult r = invoke(rig.router, "hi", options);
    REQUIRE(r.ok());
    CHECK(r.cost_usd == Approx((1e7 + 100) * 10.0 / 1e6));
    // The result shows the counts billed, not the ones reported.
    CHECK(r.response.input_tokens == 10'000'000);
    CHECK(r.response.output_tokens == 100);
    options.answers = 3;  // OpenAI's n: three answers of up to 100 tokens each
    const InvokeResult three = invoke(rig.router, "hi", options);
    CHECK(three.cost_usd == Approx((1e7 + 300) * 10.0 / 1e6));
    CHECK(three.response.output_tokens == 300);
  }
  SECTION("a believable count is billed as reported") {
    rig.strong.last = Response::answer("ok", 10, 20);
    const InvokeResult r = invoke(rig.router, "hi");
    CHECK(r.cost_usd == Approx(30 * 10.0 / 1e6));
    CHECK(r.attempts[0].detail.empty());
  }
}

TEST_CASE("a timeout is retried on the same expert after a backoff") {
  Rig rig;
  rig.strong.script = {fails(FailureKind::Timeout), Response::answer("ok", 1, 1)};
  const InvokeResult r = invoke(rig.router, "hi");
  REQUIRE(r.ok());
  CHECK(trace(r) == Trace{"strong:failed:timeout", "strong:answered"});
  CHECK(r.attempts[1].number == 2);
  CHECK(r.attempts[1].waited == 5ms);
  CHECK(rig.router.status("strong").consecutive_failures == 0);  // reset by the answer
  CHECK(rig.router.status("strong").failures == 1);
}

TEST_CASE("a 429's retry-after is honoured") {
  Rig rig;
  rig.strong.script = {fails(FailureKind::RateLimited, 40ms), Response::answer("ok", 1, 1)};
  const auto start = std::chrono::steady_clock::now();
  const InvokeResult r = invoke(rig.router, "hi");
  REQUIRE(r.ok());
  CHECK(std::chrono::steady_clock::now() - start >= 40ms);
  CHECK(trace(r) == Trace{"strong:failed:rate_limited", "strong:answered"});
  CHECK(r.attempts[1].waited == 40ms);
}

TEST_CASE("a retry-after longer than allowed fails over at once") {
  Rig rig;
  rig.strong.script = {fails(FailureKind::RateLimited, 60s)};
  const auto start = std::chrono::steady_clock::now();
  const InvokeResult r = invoke(rig.router, "hi");
  REQUIRE(r.ok());
  CHECK(std::chrono::steady_clock::now() - start < 1s);
  CHECK(trace(r) == Trace{"strong:failed:rate_limited", "mid:answered"});
}

TEST_CASE("an expert's rate is charged for the calls it was sent, not the retries given up") {
  auto store = std::make_shared<RecordingStore>();
  RouterOptions options = fast_options();
  options.state_store = store;
  Rig rig(options);
  // strong: a retry-after past the limit, so its retry is never sent; mid:
  // a server error, then an answer on the retry.
  rig.strong.script = {fails(FailureKind::RateLimited, 60s)};
  rig.mid.script = {fails(FailureKind::ServerError), Response::answer("ok", 10, 20)};
  const InvokeResult r = invoke(rig.router, "hi");
  REQUIRE(r.ok());
  CHECK(trace(r) == Trace{"strong:failed:rate_limited", "mid:failed:server_error", "mid:answered"});
  const double prompt = static_cast<double>(r.decision.input_tokens);
  REQUIRE(prompt > 0);
  const auto settled = store->settlements();
  REQUIRE(settled.size() == 2);
  CHECK(settled[0].expert == 2);  // strong: one call, one prompt
  CHECK(settled[0].extra_requests == 0);
  CHECK(settled[0].used_tokens == Approx(prompt));
  CHECK(settled[1].expert == 1);  // mid: two calls, the failed one's prompt too
  CHECK(settled[1].extra_requests == 1);
  CHECK(settled[1].used_tokens == Approx(prompt + 10 + 20));
}

TEST_CASE("server errors exhaust the retries, then fail over by utility") {
  Rig rig;
  rig.strong.script = {fails(FailureKind::ServerError)};
  const InvokeResult r = invoke(rig.router, "hi");
  REQUIRE(r.ok());
  CHECK(r.expert == "mid");
  CHECK(trace(r) == Trace{"strong:failed:server_error", "strong:failed:server_error",
                          "mid:answered"});
  CHECK(r.attempts[1].detail == "server_error");
}

TEST_CASE("a bad request or a context overflow is not retried on the same expert") {
  Rig rig;
  rig.strong.script = {fails(FailureKind::BadRequest)};
  rig.mid.script = {fails(FailureKind::ContextTooLong)};
  const InvokeResult r = invoke(rig.router, "hi");
  REQUIRE(r.ok());
  CHECK(trace(r) == Trace{"strong:failed:bad_request", "mid:failed:context_too_long",
                          "cheap:answered"});
}

TEST_CASE("bad requests and context overflows never cool an expert down") {
  RouterOptions options = fast_options();
  options.failures_before_cooldown = 1;
  Rig rig(options);
  rig.strong.script = {fails(FailureKind::BadRequest), fails(FailureKind::ContextTooLong),
                       fails(FailureKind::ServerError)};
  for (int i = 0; i < 2; ++i) {
    invoke(rig.router, "a request the experts refuse");
    const auto status = rig.router.status("strong");
    CHECK_FALSE(status.cooling_down);
    CHECK(status.consecutive_failures == 0);
    CHECK(status.failures ==
          static_cast<std::uint64_t>(i + 1));  // still counted as failures, by kind
  }
  // A failure of the expert's own does count.
  invoke(rig.router, "hi");
  CHECK(rig.router.status("strong").cooling_down);
}

TEST_CASE("a transport that throws is a failure, not a crash") {
  Rig rig;
  rig.router.set_transport("strong", Transport::sync([](const Request&) -> Response {
                             throw std::runtime_error("socket closed");
                           }));
  const InvokeResult r = invoke(rig.router, "hi");
  REQUIRE(r.ok());
  CHECK(trace(r) == Trace{"strong:failed:transport_error", "strong:failed:transport_error",
                          "mid:answered"});
  CHECK_THAT(r.attempts[0].detail, Contains("socket closed"));
}

TEST_CASE("when every expert fails, invoke says so with the full trace") {
  Rig rig;
  rig.strong.script = {fails(FailureKind::ServerError)};
  rig.mid.script = {fails(FailureKind::Timeout)};
  rig.cheap.script = {fails(FailureKind::BadRequest)};
  const InvokeResult r = invoke(rig.router, "hi");
  CHECK_FALSE(r.ok());
  CHECK(r.error == InvokeError::AllFailed);
  CHECK_THAT(r.error_message, Contains("3 expert(s)"));
  CHECK(trace(r) == Trace{"strong:failed:server_error", "strong:failed:server_error",
                          "mid:failed:timeout", "mid:failed:timeout", "cheap:failed:bad_request"});
  CHECK(r.expert.empty());
  CHECK(rig.router.spent_usd() == 0.0);
}

TEST_CASE("max_experts_tried bounds the failover") {
  RouterOptions options = fast_options();
  options.max_experts_tried = 1;
  options.max_attempts_per_expert = 1;
  Rig rig(options);
  rig.strong.script = {fails(FailureKind::ServerError)};
  const InvokeResult r = invoke(rig.router, "hi");
  CHECK(r.error == InvokeError::AllFailed);
  CHECK(trace(r) == Trace{"strong:failed:server_error"});
}

TEST_CASE("an expert that fails N times in a row cools down, then comes back") {
  RouterOptions options = fast_options();
  options.failures_before_cooldown = 3;
  options.cooldown = 150ms;
  Rig rig(options);
  rig.strong.script = {fails(FailureKind::ServerError), fails(FailureKind::ServerError),
                       fails(FailureKind::ServerError), Response::answer("back", 1, 1)};
  // Invoke 1: two failures (the retry budget), then mid answers.
  CHECK(trace(invoke(rig.router, "a")) ==
        Trace{"strong:failed:server_error", "strong:failed:server_error", "mid:answered"});
  CHECK(rig.router.status("strong").consecutive_failures == 2);
  // Invoke 2: the third failure in a row sends strong to cool down at once.
  CHECK(trace(invoke(rig.router, "b")) == Trace{"strong:failed:server_error", "mid:answered"});
  CHECK(rig.router.status("strong").cooling_down);
  // While it cools, routing leaves it out.
  const auto d = rig.router.route("c");
  CHECK(d.find("strong")->exclusion == torouter::Exclusion::CoolingDown);
  CHECK(invoke(rig.router, "c").expert == "mid");
  CHECK(rig.strong.calls == 3);
  // Afterwards it is tried again.
  std::this_thread::sleep_for(200ms);
  CHECK_FALSE(rig.router.status("strong").cooling_down);
  const InvokeResult back = invoke(rig.router, "d");
  CHECK(back.expert == "strong");
  CHECK(back.response.text == "strong: back");
}

TEST_CASE("when every expert cools down, invoke still tries them, best first") {
  RouterOptions options = fast_options();
  options.failures_before_cooldown = 1;
  options.max_attempts_per_expert = 1;
  Rig rig(options);
  for (Scripted* s : {&rig.strong, &rig.mid, &rig.cheap}) {
    s->script = {fails(FailureKind::ServerError), Response::answer("recovered", 1, 1)};
  }
  const InvokeResult first = invoke(rig.router, "a");
  CHECK(first.error == InvokeError::AllFailed);
  CHECK_FALSE(first.last_resort);
  for (const char* name : {"strong", "mid", "cheap"}) CHECK(rig.router.status(name).cooling_down);
  CHECK(rig.router.route("b").pick() == nullptr);  // routing shows them all resting
  const InvokeResult second = invoke(rig.router, "b");
  REQUIRE(second.ok());
  CHECK(second.last_resort);
  CHECK(second.expert == "strong");
  CHECK(second.response.text == "strong: recovered");
}

TEST_CASE("a hard budget refuses what it cannot cover") {
  RouterOptions options = fast_options();
  // strong: (1*10 + 100*10)/1e6 = 1.01e-3 predicted; mid 1.01e-4; cheap 1.01e-5.
  options.budget_usd = 5e-4;
  options.budget_mode = torouter::BudgetMode::Refuse;
  Rig rig(options);
  rig.strong.last = rig.mid.last = rig.cheap.last = Response::answer("ok", 1, 100);
  const InvokeResult first = invoke(rig.router, "h");  // "h" is 1 token
  REQUIRE(first.ok());
  CHECK(first.expert == "mid");
  CHECK(trace(first) == Trace{"strong:skipped", "mid:answered"});
  CHECK_THAT(first.attempts[0].detail, Contains("over budget"));
  // Spend mid four times (1.01e-4 each): 5.05e-4 > 5e-4 after the fourth... the
  // fifth mid call would not fit, so it downgrades to cheap while cheap fits.
  for (int i = 0; i < 3; ++i) REQUIRE(invoke(rig.router, "h").expert == "mid");
  CHECK(rig.router.spent_usd() == Approx(4 * 1.01e-4));
  CHECK(invoke(rig.router, "h").expert == "cheap");
  // Fill the rest with cheap calls until nothing fits.
  InvokeResult r;
  for (int i = 0; i < 20 && (r = invoke(rig.router, "h")).ok(); ++i) {
  }
  CHECK(r.error == InvokeError::BudgetExhausted);
  CHECK_THAT(r.error_message, Contains("budget"));
  CHECK(rig.router.spent_usd() <= 5e-4);
}

TEST_CASE("a soft budget downgrades to the cheapest expert once spent") {
  RouterOptions options = fast_options();
  options.budget_usd = 0;
  options.budget_mode = torouter::BudgetMode::Downgrade;
  Rig rig(options);
  const InvokeResult r = invoke(rig.router, "hello");
  REQUIRE(r.ok());
  CHECK(r.expert == "cheap");
  CHECK(trace(r) == Trace{"strong:skipped", "mid:skipped", "cheap:skipped", "cheap:answered"});
  CHECK(rig.router.spent_usd() > 0);
}

TEST_CASE("an expert with no transport is skipped") {
  Router router(experts(), scorer(), nullptr, fast_options());
  Scripted mid;
  router.set_transport("mid", mid.transport());
  const InvokeResult r = invoke(router, "hi");
  REQUIRE(r.ok());
  CHECK(trace(r) == Trace{"strong:skipped", "mid:answered"});
  CHECK(r.attempts[0].detail == "no transport set");
}

TEST_CASE("no eligible expert is an error that lists the exclusions") {
  Rig rig;
  InvokeOptions options;
  options.route.policy.required_tags = {"vision"};
  const InvokeResult r = invoke(rig.router, "hi", options);
  CHECK(r.error == InvokeError::NoEligibleExpert);
  CHECK_THAT(r.error_message, Contains("strong (missing_tag)"));
  CHECK(r.attempts.empty());
}

TEST_CASE("asynchronous transports: answers, timeouts and late completions") {
  Router router(experts(), scorer(), nullptr, fast_options());
  std::vector<std::thread> pending;
  std::mutex pending_mutex;
  // strong never completes in time: it completes 300 ms later, after the
  // router has moved on, which must be harmless.
  router.set_transport("strong", Transport::async([&](const Request&, torouter::CompletionCallback done) {
                         std::lock_guard<std::mutex> lock(pending_mutex);
                         pending.emplace_back([done] {
                           std::this_thread::sleep_for(300ms);
                           done(Response::answer("too late"));
                         });
                       }));
  router.set_transport("mid", Transport::async([&](const Request& r, torouter::CompletionCallback done) {
                         std::lock_guard<std::mutex> lock(pending_mutex);
                         pending.emplace_back([done, prompt = r.prompt] {
                           std::this_thread::sleep_for(5ms);
                           done(Response::answer("async " + prompt, 2, 3));
                           done(Response::answer("a second completion is ignored"));
                         });
                       }));
  RouterOptions o = fast_options();
  const InvokeResult r = invoke(router, "hi");
  REQUIRE(r.ok());
  CHECK(r.response.text == "async hi");
  CHECK(trace(r) == Trace{"strong:failed:timeout", "strong:failed:timeout", "mid:answered"});
  CHECK(r.attempts[0].latency >= o.attempt_timeout);
  for (auto& t : pending) t.join();
}

TEST_CASE("streaming: chunks reach the caller; failover only before the first chunk") {
  Router router(experts(), scorer(), nullptr, fast_options());
  int strong_calls = 0;
  bool strong_fails_midway = false;
  router.set_transport("strong", Transport::streaming([&](const Request&, const torouter::ChunkCallback& on_chunk) {
                         ++strong_calls;
                         if (!strong_fails_midway) return fails(FailureKind::ServerError);
                         on_chunk("The answer ");
                         return fails(FailureKind::ServerError);
                       }));
  router.set_transport("mid", Transport::streaming([](const Request&, const torouter::ChunkCallback& on_chunk) {
                         on_chunk("Hello, ");
                         on_chunk("world");
                         return Response::answer("", 2, 2);
                       }));
  Scripted cheap;
  router.set_transport("cheap", cheap.transport());

  std::string received;
  InvokeOptions options;
  options.on_chunk = [&](std::string_view chunk) { received.append(chunk); };

  SECTION("failure before any chunk fails over") {
    const InvokeResult r = invoke(router, "hi", options);
    REQUIRE(r.ok());
    CHECK(r.expert == "mid");
    CHECK(received == "Hello, world");
    CHECK(r.response.text == "Hello, world");
  }
  SECTION("failure after a chunk ends the invoke with a clear error") {
    strong_fails_midway = true;
    const InvokeResult r = invoke(router, "hi", options);
    CHECK(r.error == InvokeError::StreamBroken);
    CHECK(received == "The answer ");
    CHECK(strong_calls == 1);
    CHECK(trace(r) == Trace{"strong:failed:server_error"});
    CHECK_THAT(r.error_message, Contains("after its answer had started streaming"));
    // What was sent is billed: the reservation, the whole answer's predicted cost.
    CHECK(r.cost_usd > 0.0);
    CHECK(r.attempts.back().cost_usd == r.cost_usd);
    CHECK(router.spent_usd() == Approx(r.cost_usd));
  }
  SECTION("a streaming transport without a chunk callback just joins the chunks") {
    strong_fails_midway = true;  // no caller callback: nothing reached the caller, so it may fail over
    const InvokeResult r = invoke(router, "hi");
    REQUIRE(r.ok());
    CHECK(r.expert == "mid");
    CHECK(r.response.text == "Hello, world");
  }
  SECTION("a non-streaming transport delivers its answer as one chunk") {
    router.set_enabled("strong", false);
    router.set_enabled("mid", false);
    const InvokeResult r = invoke(router, "hi", options);
    REQUIRE(r.ok());
    CHECK(received == "cheap: ok");
  }
}

TEST_CASE("the in-flight cap sends a concurrent call elsewhere") {
  ExpertRegistry registry;
  ExpertSpec cheap("cheap", 0.1, 0.1);
  ExpertSpec mid("mid", 1, 1);
  ExpertSpec strong("strong", 10, 10);
  strong.max_concurrent_calls = 1;
  registry.add(cheap);
  registry.add(mid);
  registry.add(strong);
  Router router(registry, scorer(), nullptr, fast_options());
  InvokeResult nested;
  // While strong's one slot is taken, a call made from inside its transport
  // must go elsewhere.
  router.set_transport("strong", Transport::sync([&](const Request& r) {
                         if (r.prompt == "outer") nested = invoke(router, "inner");
                         return Response::answer("strong");
                       }));
  Scripted other;
  router.set_transport("mid", other.transport());
  router.set_transport("cheap", other.transport());
  const InvokeResult outer = invoke(router, "outer");
  REQUIRE(outer.ok());
  CHECK(outer.expert == "strong");
  REQUIRE(nested.ok());
  CHECK(nested.expert == "mid");
  CHECK(trace(nested) == Trace{"strong:skipped", "mid:answered"});
  CHECK_THAT(nested.attempts[0].detail, Contains("concurrency cap"));
  CHECK(router.status("strong").in_flight == 0);
}

TEST_CASE("at capacity everywhere, invoke waits, then fails with at_capacity") {
  ExpertRegistry registry;
  ExpertSpec only("strong", 1, 1);
  only.max_concurrent_calls = 1;
  registry.add(only);
  auto s = std::make_shared<TableScorer>(std::vector<std::string>{"strong"}, std::vector<float>{0.9f});
  Router router(registry, s, nullptr, fast_options());
  InvokeResult nested;
  router.set_transport("strong", Transport::sync([&](const Request& r) {
                         if (r.prompt == "outer") nested = invoke(router, "inner");
                         return Response::answer("ok");
                       }));
  const auto start = std::chrono::steady_clock::now();
  REQUIRE(invoke(router, "outer").ok());
  CHECK(nested.error == InvokeError::AtCapacity);
  CHECK(std::chrono::steady_clock::now() - start >= fast_options().capacity_wait);
}

TEST_CASE("the invoke deadline bounds retries and waits") {
  RouterOptions options = fast_options();
  options.invoke_timeout = 60ms;
  options.max_attempts_per_expert = 100;
  options.initial_backoff = 10ms;
  options.max_backoff = 10ms;
  options.failures_before_cooldown = 1000;
  Rig rig(options);
  rig.strong.script = {fails(FailureKind::ServerError)};
  const auto start = std::chrono::steady_clock::now();
  const InvokeResult r = invoke(rig.router, "hi");
  CHECK(std::chrono::steady_clock::now() - start < 500ms);
  CHECK(r.error == InvokeError::Timeout);
  CHECK(rig.strong.calls >= 2);
  CHECK(rig.mid.calls == 0);
}

namespace {

// Per-invoke state the context tests' transports write to, through the
// shared_ptr the invoke's context holds.
struct CallLog {
  std::mutex mutex;
  std::vector<std::string> calls;

  void add(std::string call) {
    std::lock_guard<std::mutex> lock(mutex);
    calls.push_back(std::move(call));
  }
};
using CallLogPtr = std::shared_ptr<CallLog>;

CallLogPtr call_log_of(const Request& r) {
  const CallLogPtr* held = std::any_cast<CallLogPtr>(r.context);
  return held != nullptr ? *held : nullptr;
}

}  // namespace

TEST_CASE("the invoke's context reaches every attempt, retry and failover, unchanged") {
  // strong (synchronous) and mid (asynchronous) fail twice each, cheap
  // (streaming) answers: one invoke through all three transport shapes.
  Router router(experts(), scorer(), nullptr, fast_options());
  std::mutex seen_mutex;
  std::vector<const std::any*> seen;
  auto note = [&](const Request& r) {
    std::lock_guard<std::mutex> lock(seen_mutex);
    seen.push_back(r.context);
  };
  router.set_transport("strong", Transport::sync([&](const Request& r) {
                         note(r);
                         call_log_of(r)->add("strong#" + std::to_string(r.attempt));
                         return fails(FailureKind::ServerError);
                       }));
  std::vector<std::thread> completions;
  router.set_transport("mid", Transport::async([&](const Request& r, torouter::CompletionCallback done) {
                         note(r);
                         // The request is gone once this returns: the
                         // completion keeps its own copy of the context.
                         completions.emplace_back([done, log = call_log_of(r), n = r.attempt] {
                           log->add("mid#" + std::to_string(n));
                           done(fails(FailureKind::ServerError));
                         });
                       }));
  router.set_transport("cheap", Transport::streaming([&](const Request& r, const torouter::ChunkCallback& on_chunk) {
                         note(r);
                         call_log_of(r)->add("cheap#" + std::to_string(r.attempt));
                         on_chunk("from cheap");
                         return Response::answer("", 1, 1);
                       }));

  auto log = std::make_shared<CallLog>();
  InvokeOptions options;
  options.context = log;
  std::string received;
  options.on_chunk = [&](std::string_view chunk) { received.append(chunk); };
  const InvokeResult r = invoke(router, "hi", options);
  for (auto& t : completions) t.join();

  REQUIRE(r.ok());
  CHECK(trace(r) == Trace{"strong:failed:server_error", "strong:failed:server_error",
                          "mid:failed:server_error", "mid:failed:server_error", "cheap:answered"});
  CHECK(received == "from cheap");
  CHECK(log->calls == std::vector<std::string>{"strong#1", "strong#2", "mid#1", "mid#2", "cheap#1"});
  REQUIRE(seen.size() == 5);
  for (const std::any* context : seen) {
    // The blocking invoke borrows the caller's options; the non-blocking one
    // keeps a copy, the same object on every attempt.
    CHECK(context == (torouter::testing::async_invoke() ? seen.front() : &options.context));
  }
}

TEST_CASE("without a context, or asked for the wrong type, a transport gets nullptr") {
  Router router(experts(), scorer(), nullptr, fast_options());
  bool had_context = true;
  const CallLogPtr* as_log = nullptr;
  const int* as_int = nullptr;
  int value = 0;
  router.set_transport("strong", Transport::sync([&](const Request& r) {
                         had_context = r.context != nullptr && r.context->has_value();
                         as_log = std::any_cast<CallLogPtr>(r.context);
                         as_int = std::any_cast<int>(r.context);
                         if (as_int != nullptr) value = *as_int;
                         return Response::answer("ok");
                       }));
  REQUIRE(invoke(router, "hi").ok());
  CHECK_FALSE(had_context);
  CHECK(as_log == nullptr);
  CHECK(as_int == nullptr);

  InvokeOptions options;
  options.context = 42;
  REQUIRE(invoke(router, "hi", options).ok());
  CHECK(had_context);
  CHECK(as_log == nullptr);
  CHECK(value == 42);

  // A transport called directly, outside an invoke, has no context at all.
  CHECK(std::any_cast<int>(Request().context) == nullptr);
}

TEST_CASE("an asynchronous completion that outlives its invoke keeps the context it copied") {
  RouterOptions o = fast_options();
  o.max_attempts_per_expert = 1;
  Router router(experts(), scorer(), nullptr, o);
  std::thread late;
  std::promise<void> release;
  const std::shared_future<void> released = release.get_future().share();
  std::atomic<std::size_t> logged{0};
  router.set_transport("strong", Transport::async([&](const Request& r, torouter::CompletionCallback done) {
                         late = std::thread([done, log = call_log_of(r), released, &logged] {
                           released.wait();
                           log->add("strong, after the invoke");
                           logged = log->calls.size();
                           done(Response::answer("too late"));
                         });
                       }));
  Scripted mid;
  router.set_transport("mid", mid.transport());
  std::weak_ptr<CallLog> watch;
  {
    auto log = std::make_shared<CallLog>();
    watch = log;
    InvokeOptions options;
    options.context = std::move(log);
    const InvokeResult r = invoke(router, "hi", options);
    CHECK(trace(r) == Trace{"strong:failed:timeout", "mid:answered"});
  }  // the invoke's options, and their context, are gone
  CHECK_FALSE(watch.expired());  // the pending completion still holds it
  release.set_value();
  late.join();
  CHECK(logged == 1);
  // The non-blocking invoke lets go of its own copy on a loop thread just
  // after it handed over its result; wait for that (bounded).
  for (int i = 0; i < 400 && !watch.expired(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  CHECK(watch.expired());
}

TEST_CASE("a streamed call gets the attempt timeout per chunk and the stream cap in all") {
  RouterOptions o = fast_options();
  o.stream_timeout = 5s;
  Router router(experts(), scorer(), nullptr, o);
  std::chrono::milliseconds per_chunk{0}, whole{0};
  router.set_transport("strong", Transport::streaming([&](const Request& r,
                                                          const torouter::ChunkCallback& on_chunk) {
                         per_chunk = r.timeout;
                         whole = r.stream_timeout;
                         on_chunk("streamed");
                         return Response::answer("", 1, 1);
                       }));
  InvokeOptions options;
  std::string received;
  options.on_chunk = [&](std::string_view chunk) { received.append(chunk); };
  REQUIRE(invoke(router, "hi", options).ok());
  CHECK(received == "streamed");
  CHECK(per_chunk == o.attempt_timeout);
  CHECK(whole == 5s);
}

TEST_CASE("a pinned invoke calls that expert alone, under the same rules") {
  RouterOptions o = fast_options();
  o.failures_before_cooldown = 2;
  Rig rig(o);
  InvokeOptions pinned;
  pinned.expert = "cheap";  // routing prefers strong

  const InvokeResult answered = invoke(rig.router, "hi", pinned);
  REQUIRE(answered.ok());
  CHECK(answered.expert == "cheap");
  CHECK(answered.decision.pick()->name == "strong");  // the decision is still routing's

  // No failover: its retries, then the invoke fails.
  rig.cheap.script = {fails(FailureKind::ServerError), fails(FailureKind::ServerError)};
  const InvokeResult failed = invoke(rig.router, "hi", pinned);
  CHECK(failed.error == InvokeError::AllFailed);
  CHECK(trace(failed) == Trace{"cheap:failed:server_error", "cheap:failed:server_error"});
  CHECK(rig.mid.calls + rig.strong.calls == 0);  // never another expert

  // Two failures in a row: cheap cools down, and a pinned call says so.
  const InvokeResult cooling = invoke(rig.router, "hi", pinned);
  CHECK(cooling.error == InvokeError::NoEligibleExpert);
  CHECK_THAT(cooling.error_message, Contains("\"cheap\"") && Contains("cooling down"));

  pinned.expert = "mid";
  rig.router.set_enabled("mid", false);
  const InvokeResult disabled = invoke(rig.router, "hi", pinned);
  CHECK(disabled.error == InvokeError::NoEligibleExpert);
  CHECK_THAT(disabled.error_message, Contains("disabled"));

  pinned.expert = "nobody";
  CHECK_THROWS_AS(invoke(rig.router, "hi", pinned), torouter::Error);
}

TEST_CASE("a pinned invoke is refused by the budget and waits at the cap") {
  RouterOptions o = fast_options();
  o.budget_usd = 1e-9;  // covers no call
  Rig rig(o);
  InvokeOptions pinned;
  pinned.expert = "mid";
  const InvokeResult over = invoke(rig.router, "hi", pinned);
  CHECK(over.error == InvokeError::BudgetExhausted);
  CHECK(rig.mid.calls == 0);

  ExpertSpec one("solo", 1.0, 1.0);
  one.max_concurrent_calls = 1;
  ExpertRegistry registry;
  registry.add(one);
  auto solo_scorer =
      std::make_shared<TableScorer>(std::vector<std::string>{"solo"}, std::vector<float>{0.9f});
  Router router(registry, solo_scorer, nullptr, fast_options());
  InvokeResult nested;
  router.set_transport("solo", Transport::sync([&](const Request& r) {
                         InvokeOptions inner;
                         inner.expert = "solo";
                         if (r.prompt == "outer") nested = invoke(router, "inner", inner);
                         return Response::answer("ok");
                       }));
  InvokeOptions outer;
  outer.expert = "solo";
  REQUIRE(invoke(router, "outer", outer).ok());
  CHECK(nested.error == InvokeError::AtCapacity);
}
