// The state a router's calls share (torouter/state_store.hpp): budget
// windows, the in-process store's budgets, caps and rates, and a router
// driven through a store that answers later, from another thread.
#include "torouter/state_store.hpp"

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <thread>

#include "budget_window.hpp"
#include "support/invoke_mode.hpp"
#include "support/test_scorer.hpp"
#include "torouter/event_loop.hpp"
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
using torouter::InProcessStateStore;
using torouter::Settlement;

namespace {

using Clock = std::chrono::system_clock;

// 2026-11-30 23:59:30 UTC, in milliseconds since 1970.
constexpr std::int64_t kLateNovember = 1796083170000;

// A clock the test moves.
struct TestClock {
  std::int64_t ms = kLateNovember;
  std::function<Clock::time_point()> function() {
    return [this] { return Clock::time_point(std::chrono::milliseconds(ms)); };
  }
};

ExpertRegistry experts() {
  ExpertRegistry registry;
  ExpertSpec coder("coder", 1, 1);
  coder.tags = {"code"};
  coder.max_concurrent_calls = 2;
  registry.add(coder);
  ExpertSpec chat("chat", 1, 1);
  chat.requests_per_minute = 3;
  chat.tokens_per_minute = 1000;
  registry.add(chat);
  return registry;
}

Admission asking(std::size_t expert, double usd, double tokens = 10) {
  Admission a;
  a.expert = expert;
  a.reserve_usd = usd;
  a.reserve_tokens = tokens;
  return a;
}

Settlement settling(const AdmissionResult& admitted, std::size_t expert, double usd,
                    double tokens = 10) {
  Settlement s;
  s.ticket = admitted.ticket;
  s.expert = expert;
  s.spent_usd = usd;
  s.used_tokens = tokens;
  return s;
}

}  // namespace

TEST_CASE("budget windows begin at UTC boundaries, months by the calendar") {
  using torouter::detail::window_end_ms;
  using torouter::detail::window_id;
  CHECK(window_id(BudgetWindow::Lifetime, kLateNovember) == 0);
  CHECK(window_id(BudgetWindow::Day, kLateNovember) == 20787);  // days since 1970
  CHECK(window_id(BudgetWindow::Month, kLateNovember) == 2026 * 12 + 10);
  CHECK(window_id(BudgetWindow::Month, kLateNovember + 30'000) == 2026 * 12 + 11);
  // November ends at 2026-12-01 00:00 UTC; February 2028 has 29 days.
  CHECK(window_end_ms(BudgetWindow::Month, 2026 * 12 + 10) == kLateNovember + 30'000);
  const std::int64_t march_2028 = window_end_ms(BudgetWindow::Month, 2028 * 12 + 1);
  CHECK(march_2028 - window_end_ms(BudgetWindow::Month, 2028 * 12 + 0) == 29 * 86'400'000LL);
  CHECK(window_end_ms(BudgetWindow::Month, 2026 * 12 + 11) ==
        window_end_ms(BudgetWindow::Day, 20787) + 31 * 86'400'000LL);
  CHECK(window_end_ms(BudgetWindow::Minute, window_id(BudgetWindow::Minute, kLateNovember)) ==
        kLateNovember + 30'000);
  // Before 1970 windows still count down by whole windows.
  CHECK(window_id(BudgetWindow::Hour, -1) == -1);
}

TEST_CASE("a windowed budget refuses within its window and admits in the next") {
  TestClock clock;
  InProcessStateStore store(clock.function());
  store.configure(experts(), {BudgetRule(1.0, BudgetWindow::Day)});
  const AdmissionResult first = store.admit_now(asking(0, 0.6));
  REQUIRE(first.outcome == AdmissionOutcome::Admitted);
  // The reservation is held: a second call cannot overspend meanwhile.
  const AdmissionResult second = store.admit_now(asking(1, 0.6));
  CHECK(second.outcome == AdmissionOutcome::OverBudget);
  CHECK_THAT(second.detail, Contains("$1 a day") && Contains("$0.6 reserved"));
  store.settle(settling(first, 0, 0.5));
  store.settle(settling(first, 0, 0.5));  // a second settlement changes nothing
  CHECK(store.spent_usd() == Approx(0.5));
  CHECK(store.spent_in_window(0) == Approx(0.5));
  CHECK(store.admit_now(asking(1, 0.6)).outcome == AdmissionOutcome::OverBudget);
  clock.ms += 60'000;  // past midnight: a new day
  CHECK(store.spent_in_window(0) == 0.0);
  CHECK(store.admit_now(asking(1, 0.6)).outcome == AdmissionOutcome::Admitted);
  CHECK(store.spent_usd() == Approx(0.5));  // the total counts every window
}

TEST_CASE("budgets for one expert or one tag cover only their calls") {
  InProcessStateStore store;
  store.configure(experts(), {BudgetRule(0.1, BudgetWindow::Hour, "chat"),
                              BudgetRule(0.2, BudgetWindow::Month, "", "code")});
  CHECK(store.admit_now(asking(1, 0.15)).outcome == AdmissionOutcome::OverBudget);
  CHECK(store.admit_now(asking(0, 0.15)).outcome == AdmissionOutcome::Admitted);
  const AdmissionResult refused = store.admit_now(asking(0, 0.1));
  CHECK(refused.outcome == AdmissionOutcome::OverBudget);
  CHECK_THAT(refused.detail, Contains("for tag code"));
  CHECK(store.admit_now(asking(1, 0.05)).outcome == AdmissionOutcome::Admitted);
  // Downgrade's last resort takes a slot whatever the budgets say, not
  // past the cap.
  Admission forced = asking(0, 5.0);
  forced.ignore_budgets = true;
  CHECK(store.admit_now(forced).outcome == AdmissionOutcome::Admitted);
  CHECK(store.admit_now(forced).outcome == AdmissionOutcome::AtCapacity);  // coder holds 2
}

TEST_CASE("the concurrency cap counts admitted calls until they settle") {
  InProcessStateStore store;
  store.configure(experts(), {});
  const AdmissionResult a = store.admit_now(asking(0, 0));
  const AdmissionResult b = store.admit_now(asking(0, 0));
  CHECK(store.in_flight(0) == 2);
  const AdmissionResult c = store.admit_now(asking(0, 0));
  CHECK(c.outcome == AdmissionOutcome::AtCapacity);
  CHECK_THAT(c.detail, Contains("cap of 2"));
  store.settle(settling(a, 0, 0));
  CHECK(store.admit_now(asking(0, 0)).outcome == AdmissionOutcome::Admitted);
  store.settle(settling(b, 0, 0));
  CHECK(store.in_flight(0) == 1);
}

TEST_CASE("requests and tokens per minute hold, retries and actual tokens counted") {
  TestClock clock;
  InProcessStateStore store(clock.function());
  store.configure(experts(), {});
  // chat: 3 requests and 1,000 tokens a minute. A call larger than the
  // whole limit goes when the minute is unused.
  const AdmissionResult big = store.admit_now(asking(1, 0, 1500));
  REQUIRE(big.outcome == AdmissionOutcome::Admitted);
  CHECK(store.admit_now(asking(1, 0, 10)).outcome == AdmissionOutcome::RateLimited);
  Settlement used = settling(big, 1, 0, 400);  // it used far fewer
  used.extra_requests = 1;                     // and was retried once
  store.settle(used);
  const AdmissionResult third = store.admit_now(asking(1, 0, 100));
  REQUIRE(third.outcome == AdmissionOutcome::Admitted);  // request 3 of 3, 500 tokens
  const AdmissionResult fourth = store.admit_now(asking(1, 0, 100));
  CHECK(fourth.outcome == AdmissionOutcome::RateLimited);
  CHECK_THAT(fourth.detail, Contains("3 requests this minute"));
  clock.ms += 30'000;  // the next minute
  CHECK(store.admit_now(asking(1, 0, 900)).outcome == AdmissionOutcome::Admitted);
  CHECK(store.admit_now(asking(1, 0, 200)).outcome == AdmissionOutcome::RateLimited);
  // coder has no rate limits.
  for (int i = 0; i < 2; ++i)
    CHECK(store.admit_now(asking(0, 0)).outcome == AdmissionOutcome::Admitted);
}

TEST_CASE("budget rules are checked against the registry") {
  const ExpertRegistry registry = experts();
  CHECK_THAT(torouter::validate_budget_rule(BudgetRule(-1), registry), Contains("limit_usd"));
  CHECK_THAT(torouter::validate_budget_rule(BudgetRule(1, BudgetWindow::Day, "gpt-9"), registry),
             Contains("\"gpt-9\" is not in the registry"));
  CHECK(torouter::validate_budget_rule(BudgetRule(1, BudgetWindow::Day, "chat"), registry).empty());
  torouter::RouterOptions options;
  options.budgets.push_back(BudgetRule(1, BudgetWindow::Hour, "nobody"));
  auto scorer = std::make_shared<torouter::testing::TableScorer>(
      std::vector<std::string>{"coder", "chat"}, std::vector<float>{0.5f, 0.6f});
  CHECK_THROWS_WITH(torouter::Router(registry, scorer, nullptr, options),
                    Contains("RouterOptions.budgets[0]") && Contains("nobody"));
}

namespace {

// A store that answers admissions later, from a thread of its own, as a
// store across the network does; everything else is the in-process one's.
// It can publish a cooldown to the router as another replica would.
class LateStore final : public torouter::StateStore {
 public:
  explicit LateStore(std::chrono::milliseconds delay) : delay_(delay) {
    thread_ = std::thread([this] { serve(); });
  }
  ~LateStore() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  void configure(const ExpertRegistry& e, std::vector<BudgetRule> b) override {
    local_.configure(e, std::move(b));
  }
  void admit(const Admission& a, std::function<void(const AdmissionResult&)> done) override {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.emplace_back(a, std::move(done));
    wake_.notify_all();
  }
  void settle(const Settlement& s) override { local_.settle(s); }
  int in_flight(std::size_t expert) const override { return local_.in_flight(expert); }
  double spent_usd() const override { return local_.spent_usd(); }
  void on_cooldown(torouter::CooldownListener listener) override {
    std::lock_guard<std::mutex> lock(mutex_);
    listener_ = std::move(listener);
  }
  // Another replica's cooldown of `expert`.
  void report_cooldown(std::size_t expert, Clock::time_point until) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (listener_) listener_(expert, until);
  }
  std::size_t admissions_answered() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return answered_;
  }
  std::size_t answers_delivered() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return delivered_;
  }

 private:
  void serve() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      auto [admission, done] = std::move(queue_.front());
      queue_.pop_front();
      ++answered_;  // before the answer: the invoke may end on it
      lock.unlock();
      std::this_thread::sleep_for(delay_);
      done(local_.admit_now(admission));
      lock.lock();
      ++delivered_;
    }
  }

  const std::chrono::milliseconds delay_;
  InProcessStateStore local_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::pair<Admission, std::function<void(const AdmissionResult&)>>> queue_;
  torouter::CooldownListener listener_;
  std::size_t answered_ = 0;   // admissions taken up
  std::size_t delivered_ = 0;  // answers handed to the router
  bool stopping_ = false;
  std::thread thread_;
};

struct LateRig {
  std::shared_ptr<LateStore> store;
  torouter::Router router;
  explicit LateRig(torouter::RouterOptions options, std::chrono::milliseconds delay = 5ms)
      : store(std::make_shared<LateStore>(delay)),
        router(experts(),
               std::make_shared<torouter::testing::TableScorer>(
                   std::vector<std::string>{"coder", "chat"}, std::vector<float>{0.9f, 0.5f}),
               nullptr, with_store(std::move(options), store)) {}
  static torouter::RouterOptions with_store(torouter::RouterOptions o,
                                            std::shared_ptr<LateStore> s) {
    o.state_store = std::move(s);
    return o;
  }
};

torouter::Transport answers(std::string text) {
  return torouter::Transport::sync(
      [text](const torouter::Request&) { return torouter::Response::answer(text, 10, 10); });
}

}  // namespace

TEST_CASE("an invoke waits for a store that answers later, and fails over as it says") {
  torouter::RouterOptions options;
  options.budgets.push_back(BudgetRule(1e-9, BudgetWindow::Minute, "coder"));
  LateRig rig(options);
  rig.router.set_transport("coder", answers("from coder"));
  rig.router.set_transport("chat", answers("from chat"));
  // coder is the pick, but its own budget cannot hold a call: chat answers.
  const torouter::InvokeResult r = torouter::testing::invoke(rig.router, "hello");
  REQUIRE(r.ok());
  CHECK(r.expert == "chat");
  REQUIRE(r.attempts.size() == 2);
  CHECK_THAT(r.attempts[0].detail, Contains("over budget") && Contains("for expert coder"));
  CHECK(rig.store->admissions_answered() == 2);
  CHECK(rig.store->in_flight(1) == 0);  // settled
  CHECK(rig.router.spent_usd() > 0);
}

TEST_CASE("when every expert's rate is used up, invoke fails with rate_limited") {
  torouter::RouterOptions options;
  LateRig rig(options, 0ms);
  rig.router.set_transport("coder", answers("from coder"));
  rig.router.set_transport("chat", answers("from chat"));
  torouter::InvokeOptions to_chat;
  to_chat.expert = "chat";
  for (int i = 0; i < 3; ++i) REQUIRE(torouter::testing::invoke(rig.router, "hi", to_chat).ok());
  const torouter::InvokeResult r = torouter::testing::invoke(rig.router, "hi", to_chat);
  CHECK(r.error == torouter::InvokeError::RateLimited);
  CHECK_THAT(r.attempts.at(0).detail, Contains("rate limited"));
}

TEST_CASE("a cancel while the store has not answered gives the admission back") {
  LateRig rig(torouter::RouterOptions(), 100ms);
  rig.router.set_transport("coder", answers("from coder"));
  rig.router.set_transport("chat", answers("from chat"));
  auto loop = std::make_shared<torouter::RunLoop>();
  std::thread runner([&] { loop->run(); });
  auto cancel = std::make_shared<torouter::CancelSignal>();
  torouter::InvokeOptions options;
  options.cancel = cancel;
  std::promise<torouter::InvokeResult> done;
  rig.router.invoke_async("hello", options, loop,
                          [&](torouter::InvokeResult r) { done.set_value(std::move(r)); });
  std::this_thread::sleep_for(20ms);
  cancel->cancel();
  const torouter::InvokeResult r = done.get_future().get();
  CHECK(r.error == torouter::InvokeError::Cancelled);
  // The store admits coder after the cancel; the invoke settles it at once.
  for (int i = 0; i < 100 && rig.store->answers_delivered() == 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  REQUIRE(rig.store->answers_delivered() == 1);
  for (int i = 0; i < 100 && rig.store->in_flight(0) != 0; ++i) std::this_thread::sleep_for(5ms);
  CHECK(rig.store->in_flight(0) == 0);
  loop->stop();
  runner.join();
}

TEST_CASE("a blocking invoke cancelled while the store has not answered leaks no slot") {
  LateRig rig(torouter::RouterOptions(), 100ms);
  rig.router.set_transport("coder", answers("from coder"));
  rig.router.set_transport("chat", answers("from chat"));
  auto cancel = std::make_shared<torouter::CancelSignal>();
  torouter::InvokeOptions options;
  options.cancel = cancel;
  std::thread canceller([&] {
    std::this_thread::sleep_for(20ms);
    cancel->cancel();
  });
  // The invoke's own RunLoop stops when it ends: the late admission's event
  // is dropped unrun, and gives the slot back as it goes.
  const torouter::InvokeResult r = rig.router.invoke("hello", options);
  canceller.join();
  CHECK(r.error == torouter::InvokeError::Cancelled);
  for (int i = 0; i < 100 && rig.store->answers_delivered() == 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  REQUIRE(rig.store->answers_delivered() == 1);
  // (The dropped event goes when the store's thread lets go of the answer.)
  for (int i = 0; i < 100 && rig.store->in_flight(0) != 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  CHECK(rig.store->in_flight(0) == 0);
  CHECK(rig.router.status("coder").in_flight == 0);
}

TEST_CASE("a cooldown another router publishes through the store leaves the expert out") {
  LateRig rig(torouter::RouterOptions(), 0ms);
  CHECK(rig.router.route("hello").pick()->name == "coder");
  rig.store->report_cooldown(0, Clock::now() + 10s);
  CHECK(rig.router.status("coder").cooling_down);
  CHECK(rig.router.route("hello").pick()->name == "chat");
  // An older cooldown does not shorten a longer one.
  rig.store->report_cooldown(0, Clock::now() + 1s);
  CHECK(rig.router.status("coder").cooling_down);
}

namespace {

// A store whose backend cannot be reached for the calls of one expert: it
// answers those Unavailable, naming an address as a Redis store does.
class HalfDownStore : public torouter::StateStore {
 public:
  void configure(const ExpertRegistry& e, std::vector<BudgetRule> b) override {
    local_.configure(e, std::move(b));
  }
  void admit(const Admission& a, std::function<void(const AdmissionResult&)> done) override {
    if (a.expert != 0) return done(local_.admit_now(a));
    AdmissionResult down;
    down.outcome = AdmissionOutcome::Unavailable;
    down.detail = "redis unreachable (redis 10.1.2.3:6379: Connection refused)";
    done(down);
  }
  void settle(const Settlement& s) override { local_.settle(s); }
  int in_flight(std::size_t expert) const override { return local_.in_flight(expert); }
  double spent_usd() const override { return local_.spent_usd(); }

 private:
  InProcessStateStore local_;
};

}  // namespace

TEST_CASE("a call the store cannot admit is skipped, its words marked as quoted") {
  torouter::RouterOptions options;
  options.state_store = std::make_shared<HalfDownStore>();
  torouter::Router router(
      experts(),
      std::make_shared<torouter::testing::TableScorer>(std::vector<std::string>{"coder", "chat"},
                                                       std::vector<float>{0.9f, 0.5f}),
      nullptr, options);
  router.set_transport("coder", answers("from coder"));
  router.set_transport("chat", answers("from chat"));
  const torouter::InvokeResult r = torouter::testing::invoke(router, "hello");
  REQUIRE(r.ok());
  CHECK(r.expert == "chat");
  const torouter::Attempt& skipped = r.attempts.at(0);
  CHECK(skipped.outcome == torouter::AttemptOutcome::Skipped);
  // A server cuts the detail at `quoted_at`: the store's address is after it.
  REQUIRE(skipped.quoted_at < skipped.detail.size());
  CHECK(skipped.detail.substr(0, skipped.quoted_at) == "state store unavailable: ");
  CHECK_THAT(skipped.detail.substr(skipped.quoted_at), Contains("10.1.2.3:6379"));
  CHECK(r.attempts.at(1).quoted_at == std::string::npos);
}

namespace {

// A shared store whose every slot the rest of the fleet holds: each
// admission is refused for capacity, and no release here frees one.
class FleetFullStore final : public torouter::StateStore {
 public:
  void configure(const ExpertRegistry& e, std::vector<BudgetRule> b) override {
    local_.configure(e, std::move(b));
  }
  void admit(const Admission&, std::function<void(const AdmissionResult&)> done) override {
    AdmissionResult full;
    full.outcome = AdmissionOutcome::AtCapacity;
    full.detail = "the fleet holds every slot";
    done(full);
  }
  void settle(const Settlement& s) override { local_.settle(s); }
  int in_flight(std::size_t expert) const override { return local_.in_flight(expert); }
  double spent_usd() const override { return local_.spent_usd(); }
  std::chrono::milliseconds capacity_poll() const override { return std::chrono::milliseconds(5); }

 private:
  InProcessStateStore local_;
};

}  // namespace

TEST_CASE("invokes that poll a full shared store leave the wait queue when they stop waiting") {
  torouter::RouterOptions options;
  options.state_store = std::make_shared<FleetFullStore>();
  options.capacity_wait = std::chrono::milliseconds(200);
  torouter::Router router(
      experts(),
      std::make_shared<torouter::testing::TableScorer>(std::vector<std::string>{"coder", "chat"},
                                                       std::vector<float>{0.9f, 0.5f}),
      nullptr, options);
  router.set_transport("coder", answers("from coder"));
  router.set_transport("chat", answers("from chat"));
  auto loop = std::make_shared<torouter::RunLoop>();
  std::thread runner([&] { loop->run(); });
  constexpr int kInvokes = 50;
  std::atomic<int> at_capacity{0}, done{0};
  std::atomic<std::size_t> most_waiting{0};
  for (int i = 0; i < kInvokes; ++i) {
    router.invoke_async("hello", {}, loop, [&](torouter::InvokeResult r) {
      if (r.error == torouter::InvokeError::AtCapacity) ++at_capacity;
      ++done;
    });
  }
  // Each invoke polls the store about 40 times in its 200 ms; each poll
  // used to queue one more wake-up, none taken out until a slot freed here.
  while (done < kInvokes) {
    most_waiting = std::max<std::size_t>(most_waiting, router.invokes_waiting_for_slot());
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  loop->stop();
  runner.join();
  CHECK(at_capacity == kInvokes);
  CHECK(most_waiting > 0);
  CHECK(most_waiting <= kInvokes);
  CHECK(router.invokes_waiting_for_slot() == 0);
}
