// Many threads invoking one router over failing experts: nothing lost, caps
// respected, counters exact.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "support/test_scorer.hpp"
#include "torouter/router.hpp"

using namespace std::chrono_literals;
using torouter::AttemptOutcome;
using torouter::ExpertRegistry;
using torouter::ExpertSpec;
using torouter::FailureKind;
using torouter::InvokeResult;
using torouter::Request;
using torouter::Response;
using torouter::Router;
using torouter::RouterOptions;
using torouter::Transport;
using torouter::testing::TableScorer;

namespace {

// A flaky expert: fails a given share of calls at random, and records the
// most calls it ever had in flight at once.
struct FlakyExpert {
  double failure_rate = 0;
  std::atomic<int> in_flight{0};
  std::atomic<int> max_in_flight{0};
  std::atomic<int> calls{0};

  Transport transport() {
    return Transport::sync([this](const Request& r) {
      const int now = in_flight.fetch_add(1) + 1;
      int seen = max_in_flight.load();
      while (now > seen && !max_in_flight.compare_exchange_weak(seen, now)) {
      }
      calls.fetch_add(1);
      thread_local std::mt19937 rng(std::hash<std::thread::id>()(std::this_thread::get_id()));
      const bool fail = std::uniform_real_distribution<double>(0, 1)(rng) < failure_rate;
      std::this_thread::sleep_for(200us);
      in_flight.fetch_sub(1);
      if (fail) {
        const auto kind = rng() % 2 ? FailureKind::ServerError : FailureKind::RateLimited;
        return Response::failed(kind, "injected", 1ms);
      }
      return Response::answer(r.expert, 10, 10);
    });
  }
};

}  // namespace

TEST_CASE("concurrent invokes over failing experts lose nothing and respect caps") {
  ExpertRegistry registry;
  ExpertSpec cheap("cheap", 0.1, 0.1);
  ExpertSpec mid("mid", 1, 1);
  mid.max_concurrent_calls = 3;
  ExpertSpec strong("strong", 10, 10);
  strong.max_concurrent_calls = 2;
  registry.add(cheap);
  registry.add(mid);
  registry.add(strong);
  auto scorer = std::make_shared<TableScorer>(std::vector<std::string>{"cheap", "mid", "strong"},
                                              std::vector<float>{0.5f, 0.7f, 0.9f});
  RouterOptions options;
  options.initial_backoff = 1ms;
  options.max_backoff = 2ms;
  options.failures_before_cooldown = 5;
  options.cooldown = 5ms;
  options.capacity_wait = 2s;
  Router router(registry, scorer, nullptr, options);

  FlakyExpert experts[3];
  experts[0].failure_rate = 0.1;
  experts[1].failure_rate = 0.3;
  experts[2].failure_rate = 0.5;
  const char* names[] = {"cheap", "mid", "strong"};
  for (int i = 0; i < 3; ++i) router.set_transport(names[i], experts[i].transport());

  constexpr int kThreads = 8;
  constexpr int kPerThread = 150;
  std::vector<std::vector<InvokeResult>> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        results[t].push_back(router.invoke("question " + std::to_string(i)));
        if (t == 0 && i % 10 == 0) router.set_enabled("cheap", i % 20 != 0);  // churn
      }
    });
  }
  for (auto& t : threads) t.join();
  router.set_enabled("cheap", true);

  int answered = 0;
  int failed = 0;
  int calls_in_traces = 0;
  double charged = 0;
  for (const auto& per_thread : results) {
    for (const auto& r : per_thread) {
      for (const auto& a : r.attempts) {
        if (a.outcome != AttemptOutcome::Skipped) ++calls_in_traces;
      }
      if (r.ok()) {
        ++answered;
        charged += r.cost_usd;
        REQUIRE(!r.attempts.empty());
        CHECK(r.attempts.back().outcome == AttemptOutcome::Answered);
        CHECK(r.response.text == r.expert);
      } else {
        ++failed;
        CHECK(!r.error_message.empty());
        CHECK((r.error == torouter::InvokeError::NoEligibleExpert ||
               r.error == torouter::InvokeError::AllFailed ||
               r.error == torouter::InvokeError::AtCapacity));
        if (r.error == torouter::InvokeError::NoEligibleExpert) {
          // Every expert was disabled or cooling down when it routed: no call to trace.
          CHECK(r.attempts.empty());
        } else {
          CHECK(!r.attempts.empty());
        }
      }
    }
  }
  INFO("answered " << answered << ", failed " << failed);
  CHECK(answered + failed == kThreads * kPerThread);
  // How many answer depends on timing (cooldowns, churn), so only a floor:
  // the guarantees checked here are that nothing is lost and counts agree.
  CHECK(answered > kThreads * kPerThread / 2);
  CHECK(experts[1].max_in_flight.load() <= 3);
  CHECK(experts[2].max_in_flight.load() <= 2);
  int transport_calls = 0;
  std::uint64_t counted_calls = 0;
  for (int i = 0; i < 3; ++i) {
    transport_calls += experts[i].calls.load();
    const auto status = router.status(names[i]);
    counted_calls += status.calls;
    CHECK(status.in_flight == 0);
  }
  CHECK(transport_calls == calls_in_traces);
  CHECK(counted_calls == static_cast<std::uint64_t>(transport_calls));
  CHECK(router.spent_usd() == Approx(charged).epsilon(1e-9));
}

TEST_CASE("route from many threads agrees with route from one") {
  ExpertRegistry registry;
  registry.add(ExpertSpec("cheap", 0.1, 0.1));
  registry.add(ExpertSpec("strong", 10, 10));
  auto scorer = std::make_shared<TableScorer>(std::vector<std::string>{"cheap", "strong"},
                                              std::vector<float>{0.5f, 0.9f});
  scorer->when("easy", {0.9f, 0.9f});
  Router router(registry, scorer);
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      torouter::RouteDecision decision;
      for (int i = 0; i < 2000; ++i) {
        const bool easy = i % 2 == 0;
        router.route(easy ? "easy one" : "hard one", {}, decision);
        if (decision.pick()->name != (easy ? "cheap" : "strong")) wrong.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(wrong.load() == 0);
}

TEST_CASE("routes from many threads while the scorer is replaced") {
  // Each route must use one whole model: its pick agrees with the version
  // its decision names, whichever scorer was current when it began.
  ExpertRegistry registry;
  registry.add(ExpertSpec("cheap", 0.1, 0.1));
  registry.add(ExpertSpec("strong", 10, 10));
  auto strong_best = std::make_shared<TableScorer>(std::vector<std::string>{"cheap", "strong"},
                                                   std::vector<float>{0.5f, 0.9f});
  auto cheap_best = std::make_shared<TableScorer>(std::vector<std::string>{"strong", "cheap"},
                                                  std::vector<float>{0.5f, 0.9f});
  cheap_best->set_version("cheap-best");
  Router router(registry, strong_best);
  std::atomic<bool> swapping{true};
  std::atomic<int> wrong{0};
  std::atomic<int> routes{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      torouter::RouteDecision reused;
      while (swapping.load() || routes.load() < 4000) {
        torouter::RouteDecision fresh;
        torouter::RouteDecision& d = t % 2 == 0 ? reused : fresh;
        if (t % 2 == 0) {
          router.route("a prompt", {}, d);
        } else {
          d = router.route("a prompt");
        }
        const bool cheap = d.model_version == "cheap-best";
        if (d.pick()->name != (cheap ? "cheap" : "strong")) wrong.fetch_add(1);
        routes.fetch_add(1);
      }
    });
  }
  for (int i = 0; i < 200; ++i) {
    router.replace_scorer(i % 2 == 0 ? std::shared_ptr<const torouter::Scorer>(cheap_best)
                                     : std::shared_ptr<const torouter::Scorer>(strong_best));
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  swapping = false;
  for (auto& t : threads) t.join();
  CHECK(wrong.load() == 0);
  CHECK(routes.load() >= 4000);
}
