// The Redis state store against a real redis-server started by the test:
// a fleet's budget, cap, rate and cooldowns shared by several stores;
// settlement once; a crashed replica's calls given back; Redis lost,
// paused and restarted, failing open and closed.
#include "torouter/redis/redis_store.hpp"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "support/redis_server.hpp"
#include "support/test_scorer.hpp"
#include "torouter/error.hpp"
#include "torouter/router.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using torouter::Admission;
using torouter::AdmissionOutcome;
using torouter::AdmissionResult;
using torouter::BudgetRule;
using torouter::BudgetWindow;
using torouter::ExpertRegistry;
using torouter::ExpertSpec;
using torouter::RedisFailureMode;
using torouter::RedisStateStore;
using torouter::RedisStoreOptions;
using torouter::Settlement;

namespace {

ExpertRegistry experts() {
  ExpertRegistry registry;
  ExpertSpec coder("coder", 1, 1);
  coder.max_concurrent_calls = 2;
  registry.add(coder);
  ExpertSpec chat("chat", 1, 1);
  chat.requests_per_minute = 3;
  registry.add(chat);
  return registry;
}

RedisStoreOptions options_for(const torouter::testing::RedisServer& redis,
                              const std::string& prefix) {
  RedisStoreOptions o;
  o.url = redis.url();
  o.key_prefix = prefix;
  o.timeout = 200ms;
  o.refresh = 100ms;
  o.reconnect_min = 50ms;
  o.reconnect_max = 200ms;
  o.on_event = [](const std::string&) {};
  return o;
}

std::shared_ptr<RedisStateStore> store(const RedisStoreOptions& o,
                                       std::vector<BudgetRule> budgets = {}) {
  auto s = std::make_shared<RedisStateStore>(o);
  s->configure(experts(), std::move(budgets));
  return s;
}

// The store's answer, or nothing after 5 s. (No Catch2 assertion here:
// the load test calls it from several threads.)
std::optional<AdmissionResult> answer_of(torouter::StateStore& s, std::size_t expert, double usd) {
  Admission a;
  a.expert = expert;
  a.reserve_usd = usd;
  a.reserve_tokens = 10;
  auto answer = std::make_shared<std::promise<AdmissionResult>>();
  auto future = answer->get_future();
  s.admit(a, [answer](const AdmissionResult& r) { answer->set_value(r); });
  if (future.wait_for(5s) != std::future_status::ready) return std::nullopt;
  return future.get();
}

AdmissionResult admit(torouter::StateStore& s, std::size_t expert, double usd) {
  auto answer = answer_of(s, expert, usd);
  REQUIRE(answer);
  return *answer;
}

void settle(torouter::StateStore& s, const AdmissionResult& admitted, std::size_t expert,
            double usd) {
  Settlement settlement;
  settlement.ticket = admitted.ticket;
  settlement.expert = expert;
  settlement.spent_usd = usd;
  settlement.used_tokens = 10;
  s.settle(settlement);
}

// Polls `done` for up to `limit`.
template <typename Done>
bool eventually(Done done, std::chrono::milliseconds limit = 3s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (done()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return done();
}

}  // namespace

TEST_CASE("replicas share one budget through Redis, each call settled once") {
  torouter::testing::RedisServer redis;
  const auto o = options_for(redis, "budget");
  auto a = store(o, {BudgetRule(1.0, BudgetWindow::Day)});
  auto b = store(o, {BudgetRule(1.0, BudgetWindow::Day)});
  REQUIRE(a->counters().connected);
  const AdmissionResult first = admit(*a, 0, 0.6);
  REQUIRE(first.outcome == AdmissionOutcome::Admitted);
  const AdmissionResult refused = admit(*b, 1, 0.6);  // the other replica
  CHECK(refused.outcome == AdmissionOutcome::OverBudget);
  CHECK_THAT(refused.detail, Contains("$1 a day (fleet)") && Contains("$0.6 reserved"));
  settle(*a, first, 0, 0.5);
  settle(*a, first, 0, 0.5);  // a second settlement changes nothing
  CHECK(eventually([&] { return b->spent_usd() > 0.49; }));
  CHECK(b->spent_usd() == Approx(0.5));
  CHECK(a->counters().own_spent_usd == Approx(0.5));
  CHECK(b->counters().own_spent_usd == 0.0);
  CHECK(admit(*b, 1, 0.6).outcome == AdmissionOutcome::OverBudget);
  CHECK(admit(*b, 1, 0.4).outcome == AdmissionOutcome::Admitted);
  // Another prefix is another fleet.
  auto other = store(options_for(redis, "other-fleet"), {BudgetRule(1.0, BudgetWindow::Day)});
  CHECK(admit(*other, 0, 0.9).outcome == AdmissionOutcome::Admitted);
  CHECK(a->counters().round_trips > 0);
}

TEST_CASE("a fleet-wide cap and request rate hold across replicas, under load") {
  torouter::testing::RedisServer redis;
  const auto o = options_for(redis, "caps");
  std::vector<std::shared_ptr<RedisStateStore>> fleet{store(o), store(o), store(o)};
  // coder: at most 2 calls in flight in the whole fleet.
  std::atomic<int> in_flight{0}, most{0}, admitted{0}, unanswered{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 6; ++t) {
    callers.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        auto& s = *fleet[static_cast<std::size_t>(t) % fleet.size()];
        const auto answer = answer_of(s, 0, 0.0);
        if (!answer) ++unanswered;
        if (!answer || answer->outcome != AdmissionOutcome::Admitted) continue;
        const AdmissionResult& r = *answer;
        ++admitted;
        const int now = ++in_flight;
        for (int seen = most.load(); now > seen && !most.compare_exchange_weak(seen, now);) {
        }
        std::this_thread::sleep_for(2ms);
        --in_flight;  // before the settlement, so the count never lags it
        settle(s, r, 0, 0.0);
      }
    });
  }
  for (auto& c : callers) c.join();
  CHECK(unanswered.load() == 0);
  CHECK(most.load() <= 2);
  CHECK(admitted.load() > 0);
  // chat: 3 requests a minute in the whole fleet.
  const auto minute = [] {
    return std::chrono::duration_cast<std::chrono::minutes>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  const auto began = minute();
  int chat = 0;
  for (int i = 0; i < 6; ++i) {
    const AdmissionResult r = admit(*fleet[static_cast<std::size_t>(i) % 3], 1, 0.0);
    if (r.outcome == AdmissionOutcome::Admitted) {
      ++chat;
    } else {
      CHECK(r.outcome == AdmissionOutcome::RateLimited);
      CHECK_THAT(r.detail, Contains("across the fleet"));
    }
  }
  // Exactly three went, unless the minute turned meanwhile.
  if (minute() == began) {
    CHECK(chat == 3);
  } else {
    CHECK(chat <= 6);
  }
}

TEST_CASE("a crashed replica's slots and reservations come back after their expiry") {
  torouter::testing::RedisServer redis;
  auto o = options_for(redis, "crash");
  o.call_expiry = 300ms;
  const std::vector<BudgetRule> budget{BudgetRule(1.0)};
  {
    auto crashed = store(o, budget);
    REQUIRE(admit(*crashed, 0, 0.5).outcome == AdmissionOutcome::Admitted);
    REQUIRE(admit(*crashed, 0, 0.5).outcome == AdmissionOutcome::Admitted);
  }  // gone without settling
  // Long enough that nothing about those calls may expire but their
  // admission: no replica is up to reclaim them meanwhile.
  std::this_thread::sleep_for(800ms);
  auto survivor = store(o, budget);
  CHECK(admit(*survivor, 0, 0.1).outcome == AdmissionOutcome::OverBudget);
  CHECK(eventually([&] { return survivor->counters().reclaimed >= 2; }));
  const AdmissionResult back = admit(*survivor, 0, 0.5);
  CHECK(back.outcome == AdmissionOutcome::Admitted);
  CHECK(admit(*survivor, 0, 0.5).outcome == AdmissionOutcome::Admitted);
  CHECK(admit(*survivor, 0, 0.0).outcome == AdmissionOutcome::AtCapacity);
}

namespace {

// The experts whose cooldowns, still running, a store reports from others.
class CooldownsSeen {
 public:
  explicit CooldownsSeen(RedisStateStore& store) : store_(store) {
    store_.on_cooldown([this](std::size_t expert, std::chrono::system_clock::time_point until) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (until > std::chrono::system_clock::now()) experts_.push_back(expert);
    });
  }
  ~CooldownsSeen() { store_.on_cooldown(nullptr); }  // not under `mutex_`: the listener takes it

  std::vector<std::size_t> experts() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return experts_;
  }

 private:
  RedisStateStore& store_;
  mutable std::mutex mutex_;
  std::vector<std::size_t> experts_;
};

}  // namespace

TEST_CASE("a cooldown one replica publishes reaches the others within a second") {
  torouter::testing::RedisServer redis;
  const auto o = options_for(redis, "cool");
  auto a = store(o);
  auto b = store(o);
  const CooldownsSeen seen(*b);
  const auto published = std::chrono::steady_clock::now();
  a->publish_cooldown(1, std::chrono::system_clock::now() + 10s);
  CHECK(eventually([&] { return !seen.experts().empty(); }));
  CHECK(std::chrono::steady_clock::now() - published < 1s);
  CHECK(seen.experts() == std::vector<std::size_t>{1});
}

TEST_CASE("a cooldown decided while Redis is away is published once it is back") {
  torouter::testing::RedisServer redis;
  const auto o = options_for(redis, "cool-later");
  auto a = store(o);
  auto b = store(o);
  const CooldownsSeen seen(*b);
  redis.stop();
  CHECK(eventually([&] { return !a->counters().connected && !b->counters().connected; }));
  a->publish_cooldown(1, std::chrono::system_clock::now() + 30s);
  redis.start();  // empty, as after a crash
  CHECK(eventually([&] { return !seen.experts().empty(); }, 5s));
  CHECK(seen.experts() == std::vector<std::size_t>{1});
}

TEST_CASE("Redis lost and back: failing open serves, failing closed refuses paid calls") {
  torouter::testing::RedisServer redis;
  auto o = options_for(redis, "faults");
  auto open = store(o, {BudgetRule(100.0)});
  o.on_failure = RedisFailureMode::Closed;
  auto closed = store(o, {BudgetRule(100.0)});
  REQUIRE(admit(*open, 0, 0.1).outcome == AdmissionOutcome::Admitted);
  redis.stop();
  // The next admission finds it gone, answers locally, and the store knows.
  CHECK(admit(*open, 1, 0.1).outcome == AdmissionOutcome::Admitted);
  CHECK(eventually([&] { return !open->counters().connected && !closed->counters().connected; }));
  CHECK(admit(*open, 1, 0.1).outcome == AdmissionOutcome::Admitted);
  CHECK(open->counters().admitted_local >= 1);
  const AdmissionResult refused = admit(*closed, 1, 0.1);
  CHECK(refused.outcome == AdmissionOutcome::Unavailable);
  CHECK_THAT(refused.detail, Contains("failing closed"));
  CHECK(admit(*closed, 1, 0.0).outcome == AdmissionOutcome::Admitted);  // a free call
  CHECK_FALSE(closed->counters().last_error.empty());

  redis.start();  // empty, as after a crash
  CHECK(eventually([&] { return open->counters().connected && closed->counters().connected; }, 5s));
  CHECK(open->counters().connects == 2);
  const auto shared = open->counters().admitted_shared;
  CHECK(admit(*open, 0, 0.1).outcome == AdmissionOutcome::Admitted);
  CHECK(open->counters().admitted_shared == shared + 1);
  CHECK(admit(*closed, 0, 0.1).outcome == AdmissionOutcome::Admitted);
}

TEST_CASE("a paused Redis holds settlements until it answers again, then counts each once") {
  torouter::testing::RedisServer redis;
  const auto o = options_for(redis, "pause");
  auto a = store(o);
  auto b = store(o);
  const AdmissionResult call = admit(*a, 0, 0.2);
  REQUIRE(call.outcome == AdmissionOutcome::Admitted);
  redis.pause();
  settle(*a, call, 0, 0.25);
  // The settlement's round trip times out: the store lets go of Redis and
  // keeps the settlement.
  CHECK(eventually(
      [&] { return !a->counters().connected && a->counters().settlements_waiting == 1; }));
  redis.resume();
  CHECK(eventually([&] { return a->counters().connected; }, 5s));
  CHECK(eventually([&] { return b->spent_usd() > 0.24; }));
  std::this_thread::sleep_for(300ms);  // more refreshes: still charged once
  CHECK(b->spent_usd() == Approx(0.25));
  CHECK(a->counters().settlements_waiting == 0);
}

TEST_CASE("an admission whose reply was lost is given back once Redis answers again") {
  torouter::testing::RedisServer redis;
  const auto o = options_for(redis, "lost");
  auto a = store(o);
  REQUIRE(a->counters().connected);
  redis.pause();
  // Redis gets the admission but answers too late: the store answers it
  // locally, and gives it back in Redis once it can.
  CHECK(admit(*a, 0, 0.1).outcome == AdmissionOutcome::Admitted);
  CHECK(a->counters().admitted_local == 1);
  redis.resume();
  CHECK(eventually([&] { return a->counters().connected; }, 5s));
  // Whether Redis ran that admission before or after its give-back, it
  // holds nothing: no slot taken (0, or never counted) and no call held.
  const auto holds_nothing = [&] {
    const std::string in_flight = redis.cli("GET {lost}:inflight:coder");
    return (in_flight == "0" || in_flight.empty()) && redis.cli("ZCARD {lost}:held") == "0";
  };
  CHECK(eventually(holds_nothing));
  std::this_thread::sleep_for(300ms);  // and it stays so
  CHECK(holds_nothing());
}

TEST_CASE("scripts flushed from Redis are loaded again, nothing lost") {
  torouter::testing::RedisServer redis;
  const auto o = options_for(redis, "flush");
  auto a = store(o);
  const AdmissionResult call = admit(*a, 0, 0.1);
  REQUIRE(call.outcome == AdmissionOutcome::Admitted);
  REQUIRE(redis.cli("SCRIPT FLUSH") == "OK");
  settle(*a, call, 0, 0.3);  // refused (NOSCRIPT), kept, resent after reconnecting
  CHECK(eventually([&] { return a->spent_usd() > 0.29; }, 5s));
  CHECK(a->spent_usd() == Approx(0.3));
  CHECK(admit(*a, 0, 0.1).outcome == AdmissionOutcome::Admitted);
  CHECK(a->counters().connects >= 2);
}

TEST_CASE("routers over a Redis store share spend and failover rules") {
  torouter::testing::RedisServer redis;
  const auto o = options_for(redis, "routers");
  auto scorer = std::make_shared<torouter::testing::TableScorer>(
      std::vector<std::string>{"coder", "chat"}, std::vector<float>{0.9f, 0.5f});
  std::vector<std::shared_ptr<RedisStateStore>> stores;
  auto make = [&] {
    torouter::RouterOptions options;
    stores.push_back(std::make_shared<RedisStateStore>(o));
    options.state_store = stores.back();
    auto router = std::make_unique<torouter::Router>(experts(), scorer, nullptr, options);
    for (const char* name : {"coder", "chat"}) {
      router->set_transport(name, torouter::Transport::sync([](const torouter::Request& r) {
                              return torouter::Response::answer(r.expert + " answers", 1000, 1000);
                            }));
    }
    return router;
  };
  auto first = make();
  auto second = make();
  for (int i = 0; i < 3; ++i) REQUIRE(first->invoke("hello").ok());
  const torouter::InvokeResult r = second->invoke("hello");
  REQUIRE(r.ok());
  CHECK(r.expert == "coder");
  // 4 calls of 2,000 tokens at $1 per million.
  CHECK(eventually([&] { return second->spent_usd() > 0.0079; }));
  CHECK(second->spent_usd() == Approx(0.008));
  // Every call went through Redis: none on local state.
  CHECK(stores[0]->counters().admitted_shared + stores[1]->counters().admitted_shared == 4);
  CHECK(stores[0]->counters().admitted_local + stores[1]->counters().admitted_local == 0);
  CHECK(eventually([&] { return redis.cli("GET {routers}:inflight:coder") == "0"; }));
}

TEST_CASE("bad Redis store options are refused, naming the field") {
  RedisStoreOptions o;
  o.url = "http://127.0.0.1:6379";
  CHECK_THROWS_WITH(RedisStateStore(o), Contains("RedisStoreOptions.url") && Contains("redis://"));
  o.url = "redis://127.0.0.1:99999/0";
  CHECK_THROWS_WITH(RedisStateStore(o), Contains("port"));
  o.url = "redis://127.0.0.1:6379/0";
  o.key_prefix = "a{b}";
  CHECK_THROWS_WITH(RedisStateStore(o), Contains("key_prefix"));
  o.key_prefix = "ok";
  o.timeout = 0ms;
  CHECK_THROWS_WITH(RedisStateStore(o), Contains("timeout must be above 0"));
}
