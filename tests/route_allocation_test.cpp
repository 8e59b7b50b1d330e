// A warm Router::route into a reused RouteDecision allocates nothing. The
// global operator new is replaced in this program to count allocations.
#include <catch2/catch.hpp>

#include <atomic>
#include <functional>
#include <cstdlib>
#include <memory>
#include <new>

#include "support/test_scorer.hpp"
#include "torouter/router.hpp"

#include "support/counting_new.hpp"

namespace {
// Where the self-check's allocation escapes to, so the compiler keeps it.
int* volatile g_sink = nullptr;
}  // namespace

using torouter::ExpertRegistry;
using torouter::ExpertSpec;
using torouter::RouteDecision;
using torouter::RouteOptions;
using torouter::Router;
using torouter::testing::TableScorer;

namespace {

long allocations_during(const std::function<void()>& work) {
  const long before = g_allocations.load();
  work();
  return g_allocations.load() - before;
}

std::shared_ptr<TableScorer> scorer() {
  auto s = std::make_shared<TableScorer>(std::vector<std::string>{"a", "b", "c"},
                                         std::vector<float>{0.5f, 0.7f, 0.9f});
  s->when("code", {0.6f, 0.9f, 0.8f});
  return s;
}

ExpertRegistry registry() {
  ExpertRegistry r;
  ExpertSpec a("a", 0.1, 0.1);
  ExpertSpec b("b", 1, 2);
  b.tags = {"code"};
  ExpertSpec c("c", 10, 30);
  c.tags = {"code"};
  r.add(a);
  r.add(b);
  r.add(c);
  return r;
}

}  // namespace

TEST_CASE("the counter sees allocations") {
  CHECK(allocations_during([] {
          g_sink = new int(3);
          delete g_sink;
        }) >= 1);
}

TEST_CASE("a warm route allocates nothing") {
  Router router(registry(), scorer());
  RouteOptions options;
  options.policy.lambda_cost = 50;
  options.policy.required_tags = {"code"};
  options.policy.max_latency_ms = 1e6;
  RouteDecision decision;
  router.route("write code to parse JSON", options, decision);  // warm-up
  const long count = allocations_during([&] {
    for (int i = 0; i < 100; ++i) {
      router.route(i % 2 ? "write code to parse JSON" : "a 500-character prompt ...", options,
                   decision);
    }
  });
  CHECK(count == 0);
  CHECK(decision.pick() != nullptr);
}

TEST_CASE("a warm route with the threshold policy allocates nothing") {
  Router router(registry(), scorer(), std::make_shared<torouter::ThresholdPolicy>("c", "a", 0.1));
  RouteDecision decision;
  router.route("x", {}, decision);
  CHECK(allocations_during([&] { router.route("code please", {}, decision); }) == 0);
  CHECK(decision.pick()->name == "c");  // lead 0.8 - 0.6 = 0.2 > 0.1
  CHECK(decision.reason == torouter::PickReason::ThresholdStrong);
}
