// The non-blocking invoke's own behaviour: many calls in flight on one
// thread, cancellation at every stage, waits for a slot woken by its
// release, and the RunLoop and CancelSignal it is built on. (Every test of
// invoke_test also runs against it; see support/invoke_mode.hpp.)
#include <malloc.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TOROUTER_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TOROUTER_TEST_SANITIZED 1
#endif
#endif
#ifndef TOROUTER_TEST_SANITIZED
#define TOROUTER_TEST_SANITIZED 0
#endif
#if TOROUTER_TEST_SANITIZED
#include <sanitizer/allocator_interface.h>
#endif

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support/test_scorer.hpp"
#include "torouter/error.hpp"
#include "torouter/router.hpp"

using namespace std::chrono_literals;
using torouter::AttemptOutcome;
using torouter::CancelSignal;
using torouter::CompletionCallback;
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
using torouter::RunLoop;
using torouter::Transport;
using torouter::testing::TableScorer;

namespace {

using Catch::Matchers::Contains;
using Clock = std::chrono::steady_clock;

// One expert, "solo", unless told otherwise.
Router make_router(RouterOptions options = {}, std::size_t cap = 0) {
  ExpertRegistry registry;
  ExpertSpec solo("solo", 1.0, 1.0);
  solo.max_concurrent_calls = cap;
  registry.add(solo);
  auto scorer =
      std::make_shared<TableScorer>(std::vector<std::string>{"solo"}, std::vector<float>{0.8f});
  return Router(std::move(registry), scorer, nullptr, options);
}

// A RunLoop run by `threads` threads for the test's lifetime.
struct LoopThreads {
  std::shared_ptr<RunLoop> loop = std::make_shared<RunLoop>();
  std::vector<std::thread> threads;
  explicit LoopThreads(int count = 1) {
    for (int i = 0; i < count; ++i) threads.emplace_back([this] { loop->run(); });
  }
  ~LoopThreads() {
    loop->stop();
    for (auto& t : threads) t.join();
  }
};

// Completions held until the test releases them, with what each request saw.
struct HeldCalls {
  std::mutex mutex;
  std::vector<CompletionCallback> pending;
  std::vector<std::shared_ptr<CancelSignal>> signals;
  std::atomic<int> calls{0};
  std::atomic<int> told_cancelled{0};

  Transport transport() {
    return Transport::async([this](const Request& r, CompletionCallback done) {
      ++calls;
      if (r.cancel) r.cancel->on_cancel([this] { ++told_cancelled; });
      std::lock_guard<std::mutex> lock(mutex);
      pending.push_back(std::move(done));
      signals.push_back(r.cancel);
    });
  }
  void answer_all() {
    std::vector<CompletionCallback> done;
    {
      std::lock_guard<std::mutex> lock(mutex);
      done.swap(pending);
    }
    for (auto& d : done) d(Response::answer("late", 1, 1));
  }
};

// Starts an invoke and returns the future of its result.
std::future<InvokeResult> start(Router& router, const std::shared_ptr<RunLoop>& loop,
                                InvokeOptions options = {}) {
  auto promise = std::make_shared<std::promise<InvokeResult>>();
  auto future = promise->get_future();
  router.invoke_async("hi", std::move(options), loop,
                      [promise](InvokeResult r) { promise->set_value(std::move(r)); });
  return future;
}

template <typename Predicate>
void wait_until(Predicate done) {
  const auto give_up = Clock::now() + 10s;
  while (!done() && Clock::now() < give_up) std::this_thread::sleep_for(1ms);
  REQUIRE(done());
}

}  // namespace

TEST_CASE("a RunLoop runs tasks in order, timers when due, and stops") {
  RunLoop loop;
  std::vector<int> ran;
  loop.post_after(30ms, [&] { ran.push_back(3); });
  loop.post_after(10ms, [&] { ran.push_back(2); });
  loop.post([&] { ran.push_back(1); });
  loop.post({});  // an empty task is ignored, not a stop
  loop.post_after(40ms, [&] { loop.stop(); });
  loop.post_after(1h, [&] { ran.push_back(99); });
  const auto begin = Clock::now();
  loop.run();
  CHECK(ran == std::vector<int>{1, 2, 3});
  CHECK(Clock::now() - begin >= 40ms);

  loop.post([&] { ran.push_back(4); });
  loop.run();  // still stopped: returns at once, the task stays queued
  CHECK(ran.size() == 3);
  loop.restart();
  loop.post([&] { loop.stop(); });
  loop.run();
  CHECK(ran.back() == 4);
}

TEST_CASE("a RunLoop's runners keep time while other threads add timers") {
  // Runners sleep until the earliest timer while posters grow the queue
  // (and move its storage) under them: every timer still runs, once.
  RunLoop loop;
  std::atomic<int> ran{0};
  std::vector<std::thread> runners, posters;
  for (int i = 0; i < 2; ++i) runners.emplace_back([&] { loop.run(); });
  for (int p = 0; p < 4; ++p) {
    posters.emplace_back([&, p] {
      for (int i = 0; i < 500; ++i) {
        loop.post_after(std::chrono::milliseconds((i * 7 + p) % 5), [&] { ++ran; });
      }
    });
  }
  for (auto& t : posters) t.join();
  wait_until([&] { return ran == 2000; });
  loop.stop();
  for (auto& t : runners) t.join();
  CHECK(ran == 2000);
}

TEST_CASE("a RunLoop drops a withdrawn timer at once, with what its task holds") {
  RunLoop loop;
  auto held = std::make_shared<int>(0);
  std::vector<int> ran;
  auto withdraw_later = loop.post_after_withdrawable(1h, [&ran, held] { ran.push_back(99); });
  auto withdraw_soon = loop.post_after_withdrawable(10ms, [&ran] { ran.push_back(1); });
  auto withdraw_run = loop.post_after_withdrawable(20ms, [&ran] { ran.push_back(2); });
  loop.post_after(30ms, [&] { loop.stop(); });
  CHECK(loop.pending_timers() == 4);
  CHECK(held.use_count() == 2);
  withdraw_later();
  CHECK(held.use_count() == 1);  // let go of at once, not in an hour
  CHECK(loop.pending_timers() == 3);
  withdraw_later();  // twice: nothing more
  withdraw_soon();
  loop.run();
  CHECK(ran == std::vector<int>{2});
  CHECK(loop.pending_timers() == 0);
  withdraw_run();  // after it ran: nothing
  CHECK(ran == std::vector<int>{2});
}

TEST_CASE("a loop that cannot drop a timer still skips a withdrawn task") {
  // An EventLoop of a caller's, with post and post_after alone: the
  // interface's own withdrawal keeps the timer, and skips its task.
  struct PlainLoop final : torouter::EventLoop {
    RunLoop inner;
    void post(std::function<void()> task) override { inner.post(std::move(task)); }
    void post_after(std::chrono::milliseconds delay, std::function<void()> task) override {
      inner.post_after(delay, std::move(task));
    }
  } loop;
  std::vector<int> ran;
  auto withdraw = loop.post_after_withdrawable(10ms, [&ran] { ran.push_back(1); });
  loop.post_after_withdrawable(20ms, [&ran] { ran.push_back(2); });
  loop.post_after(30ms, [&] { loop.inner.stop(); });
  withdraw();
  loop.inner.run();
  CHECK(ran == std::vector<int>{2});
}

TEST_CASE("a CancelSignal runs each callback once, at once when already cancelled") {
  CancelSignal signal;
  int first = 0, forgotten = 0, late = 0;
  signal.on_cancel([&] { ++first; });
  const auto id = signal.on_cancel([&] { ++forgotten; });
  signal.forget(id);
  CHECK_FALSE(signal.cancelled());
  signal.cancel();
  signal.cancel();
  CHECK(signal.cancelled());
  CHECK(first == 1);
  CHECK(forgotten == 0);
  signal.on_cancel([&] { ++late; });
  CHECK(late == 1);
}

TEST_CASE("an invoke started from a routed decision keeps all of it") {
  ExpertRegistry registry;
  registry.add(ExpertSpec("solo", 1.0, 1.0));
  registry.add(ExpertSpec("other", 1.0, 1.0));
  auto scorer = std::make_shared<TableScorer>(std::vector<std::string>{"solo", "other"},
                                              std::vector<float>{0.8f, 0.5f});
  scorer->set_top_pick_shortfall(0.1);
  Router router(std::move(registry), scorer, nullptr, {});
  router.set_transport("solo", Transport::async([](const Request&, CompletionCallback done) {
                         done(Response::answer("ok", 1, 1));
                       }));
  LoopThreads loop(1);
  InvokeOptions options;
  auto routed = std::make_shared<torouter::RouteDecision>(router.route("hi", options.route));
  REQUIRE(routed->expected_quality == Approx(0.7));
  options.routed = routed;
  const InvokeResult r = start(router, loop.loop, options).get();
  REQUIRE(r.ok());
  CHECK(r.expert == "solo");
  CHECK(r.decision.reason == routed->reason);
  CHECK(r.decision.candidates.size() == 2);
  CHECK(r.decision.expected_quality == routed->expected_quality);
  CHECK(r.decision.propensity == routed->propensity);
  CHECK(r.decision.input_tokens == routed->input_tokens);
}

TEST_CASE("one loop thread holds hundreds of calls in flight at once") {
  Router router = make_router();
  LoopThreads loop(1);
  // Each call completes 200 ms after it starts, from a timer thread.
  RunLoop timers;
  std::thread timer_thread([&] { timers.run(); });
  router.set_transport("solo", Transport::async([&](const Request&, CompletionCallback done) {
                         timers.post_after(200ms, [done] { done(Response::answer("ok", 1, 1)); });
                       }));
  const auto begin = Clock::now();
  std::vector<std::future<InvokeResult>> results;
  for (int i = 0; i < 256; ++i) results.push_back(start(router, loop.loop));
  for (auto& r : results) CHECK(r.get().ok());
  // One at a time would take 51 s; together, about one call's 200 ms.
  CHECK(Clock::now() - begin < 5s);
  timers.stop();
  timer_thread.join();
}

// Bytes the program holds allocated now: from the sanitizer's allocator
// where one replaces glibc's (whose mallinfo2 then reads 0 throughout).
std::size_t allocated_bytes() {
#if TOROUTER_TEST_SANITIZED
  return __sanitizer_get_current_allocated_bytes();
#else
  return mallinfo2().uordblks;
#endif
}

TEST_CASE("a finished invoke's memory goes, and so do its timers") {
  {
    // The count must see a known allocation, or the test below would pass
    // on an allocator that counts nothing (mallinfo2 under jemalloc, say).
    static std::vector<char> block;  // static: an allocation the compiler keeps
    const std::size_t empty = allocated_bytes();
    block.resize(1 << 16);  // under glibc's mmap threshold: counted in uordblks
    REQUIRE(allocated_bytes() >= empty + (1 << 16));
    block = {};
  }
  Router router = make_router();
  router.set_transport("solo", Transport::async([](const Request&, CompletionCallback done) {
                         done(Response::answer("ok", 1, 1));
                       }));
  LoopThreads loop;
  // The result reaches the test before the loop thread lets go of the
  // invoke: a task posted after it runs once that is done.
  const auto settled = [&] {
    std::promise<void> done;
    loop.loop->post([&done] { done.set_value(); });
    done.get_future().wait();
  };
  CHECK(start(router, loop.loop).get().ok());  // warm: the router's own first allocations
  settled();
  constexpr int kInvokes = 2000;
  const std::size_t before = allocated_bytes();
  for (int i = 0; i < kInvokes; ++i) CHECK(start(router, loop.loop).get().ok());
  settled();
  // Each answer withdrew its attempt's 30 s deadline: no timer waits on
  // the loop for a finished invoke, and nothing of the invoke (its result,
  // options and decision, kilobytes) stays.
  CHECK(loop.loop->pending_timers() == 0);
  const std::size_t after = allocated_bytes();
  const double per_invoke = (static_cast<double>(after) - static_cast<double>(before)) / kInvokes;
  INFO("bytes kept per finished invoke: " << per_invoke);
  CHECK(per_invoke < 16);
}

TEST_CASE("cancelling a call in flight ends the invoke, frees its slot and budget, blames nobody") {
  RouterOptions options;
  options.budget_usd = 1.0;
  Router router = make_router(options, 1);
  HeldCalls held;
  router.set_transport("solo", held.transport());
  LoopThreads loop;
  InvokeOptions invoke;
  invoke.cancel = std::make_shared<CancelSignal>();
  auto result = start(router, loop.loop, invoke);
  wait_until([&] { return held.calls == 1; });
  CHECK(router.status("solo").in_flight == 1);

  invoke.cancel->cancel();
  const InvokeResult r = result.get();
  CHECK(r.error == InvokeError::Cancelled);
  REQUIRE(r.attempts.size() == 1);
  CHECK(r.attempts[0].outcome == AttemptOutcome::Cancelled);
  CHECK(held.told_cancelled == 1);  // the transport heard of it
  const auto status = router.status("solo");
  CHECK(status.in_flight == 0);
  CHECK(status.consecutive_failures == 0);
  CHECK(status.failures == 0);

  // A completion after the cancel changes nothing.
  held.answer_all();
  std::this_thread::sleep_for(20ms);
  CHECK(router.spent_usd() == 0.0);
  CHECK(router.status("solo").calls == 0);
  // The slot and the reservation are free: the next call goes through.
  router.set_transport(
      "solo", Transport::sync([](const Request&) { return Response::answer("ok", 1, 1); }));
  CHECK(start(router, loop.loop).get().ok());
}

TEST_CASE("a transport's failure that reaches the loop before the cancel is the cancel's") {
  RouterOptions options;
  options.failures_before_cooldown = 1;
  Router router = make_router(options);
  HeldCalls held;
  router.set_transport("solo", held.transport());
  LoopThreads loop;
  InvokeOptions invoke;
  invoke.cancel = std::make_shared<CancelSignal>();
  auto result = start(router, loop.loop, invoke);
  wait_until([&] { return held.calls == 1; });
  // As a server's upstream client does when its client leaves: the call
  // ends "cancelled" from the transport's side, and that completion is
  // queued on the loop before the cancel's own event (the loop is held
  // busy meanwhile, so the order is certain).
  std::promise<void> release;
  auto busy = release.get_future().share();
  loop.loop->post([busy] { busy.wait(); });
  {
    std::lock_guard<std::mutex> lock(held.mutex);
    held.pending.at(0)(Response::failed(FailureKind::TransportError, "call cancelled"));
  }
  invoke.cancel->cancel();
  release.set_value();
  const InvokeResult r = result.get();
  CHECK(r.error == InvokeError::Cancelled);
  REQUIRE(r.attempts.size() == 1);
  CHECK(r.attempts[0].outcome == AttemptOutcome::Cancelled);
  const auto status = router.status("solo");
  CHECK(status.failures == 0);
  CHECK(status.consecutive_failures == 0);
  CHECK_FALSE(status.cooling_down);
  CHECK(status.in_flight == 0);
}

TEST_CASE("a caller that leaves a stream it has begun to receive pays for it") {
  RouterOptions options;
  options.budget_usd = 1.0;
  Router router = make_router(options, 1);
  std::mutex mutex;
  CompletionCallback held_done;
  router.set_transport(
      "solo", Transport::async_streaming(
                  [&](const Request&, torouter::ChunkCallback on_chunk, CompletionCallback done) {
                    on_chunk("The answer ");
                    std::lock_guard<std::mutex> lock(mutex);
                    held_done = std::move(done);  // the rest never comes
                  }));
  LoopThreads loop;
  InvokeOptions invoke;
  invoke.cancel = std::make_shared<CancelSignal>();
  std::atomic<int> pieces{0};
  invoke.on_chunk = [&](std::string_view) { ++pieces; };
  auto result = start(router, loop.loop, invoke);
  wait_until([&] { return pieces.load() == 1; });
  invoke.cancel->cancel();
  const InvokeResult r = result.get();
  CHECK(r.error == InvokeError::Cancelled);
  // The expert sent what the caller got: the whole answer's predicted cost
  // is charged, and no failure is counted.
  CHECK(r.cost_usd > 0.0);
  CHECK(r.attempts.back().cost_usd == r.cost_usd);
  CHECK(router.spent_usd() == Approx(r.cost_usd));
  CHECK(router.status("solo").failures == 0);
  CHECK(router.status("solo").in_flight == 0);
  std::lock_guard<std::mutex> lock(mutex);
  if (held_done) held_done(Response::failed(FailureKind::TransportError, "call cancelled"));
}

TEST_CASE("an on_chunk that throws ends the invoke once, charged for what it received") {
  const bool standard = GENERATE(true, false);  // a std::exception, or anything else
  RouterOptions options;
  options.budget_usd = 1.0;
  Router router = make_router(options, 1);
  std::mutex mutex;
  CompletionCallback held_done;
  std::function<void(std::string_view)> send_more;
  router.set_transport(
      "solo", Transport::async_streaming(
                  [&](const Request&, torouter::ChunkCallback on_chunk, CompletionCallback done) {
                    on_chunk("The answer ");
                    std::lock_guard<std::mutex> lock(mutex);
                    send_more = on_chunk;  // pieces may still come after the throw
                    held_done = std::move(done);
                  }));
  LoopThreads loop;
  InvokeOptions invoke;
  invoke.on_chunk = [&](std::string_view) {
    if (standard) throw std::runtime_error("the caller's sink broke");
    throw 42;
  };
  auto result = start(router, loop.loop, invoke);
  REQUIRE(result.wait_for(10s) == std::future_status::ready);
  const InvokeResult r = result.get();
  CHECK(r.error == InvokeError::AllFailed);
  CHECK_THAT(r.error_message, Contains("invoke failed inside torouter"));
  // The streamed attempt is the last, not the expert's failure, and carries
  // the begun answer's charge.
  REQUIRE_FALSE(r.attempts.empty());
  CHECK(r.attempts.back().outcome == AttemptOutcome::Cancelled);
  CHECK(r.cost_usd > 0.0);
  CHECK(r.attempts.back().cost_usd == r.cost_usd);
  CHECK(router.spent_usd() == Approx(r.cost_usd));
  CHECK(router.status("solo").failures == 0);
  CHECK(router.status("solo").in_flight == 0);
  std::lock_guard<std::mutex> lock(mutex);
  if (send_more) send_more("and more");  // to a dropped stream: ignored
  if (held_done) held_done(Response::answer("The answer and more", 1, 1));
}

TEST_CASE("cancelling during a backoff or a wait for a slot ends the invoke at once") {
  RouterOptions options;
  options.initial_backoff = 60s;
  options.capacity_wait = 60s;
  Router router = make_router(options, 1);
  LoopThreads loop;

  SECTION("in a backoff") {
    std::atomic<int> calls{0};
    router.set_transport("solo", Transport::async([&](const Request&, CompletionCallback done) {
                           ++calls;
                           done(Response::failed(FailureKind::ServerError, "down"));
                         }));
    InvokeOptions invoke;
    invoke.cancel = std::make_shared<CancelSignal>();
    auto result = start(router, loop.loop, invoke);
    wait_until([&] { return router.status("solo").failures == 1; });
    const auto begin = Clock::now();
    invoke.cancel->cancel();
    const InvokeResult r = result.get();
    CHECK(Clock::now() - begin < 5s);
    CHECK(r.error == InvokeError::Cancelled);
    CHECK(calls == 1);
    CHECK(router.status("solo").in_flight == 0);
    CHECK(router.status("solo").failures == 1);  // the real failure, not the cancel
  }
  SECTION("waiting for a slot") {
    HeldCalls held;
    router.set_transport("solo", held.transport());
    auto first = start(router, loop.loop);
    wait_until([&] { return held.calls == 1; });
    InvokeOptions invoke;
    invoke.cancel = std::make_shared<CancelSignal>();
    auto second = start(router, loop.loop, invoke);
    std::this_thread::sleep_for(20ms);
    const auto begin = Clock::now();
    invoke.cancel->cancel();
    const InvokeResult r = second.get();
    CHECK(Clock::now() - begin < 5s);
    CHECK(r.error == InvokeError::Cancelled);
    CHECK(held.calls == 1);
    held.answer_all();
    CHECK(first.get().ok());
  }
  SECTION("before it starts") {
    HeldCalls held;
    router.set_transport("solo", held.transport());
    InvokeOptions invoke;
    invoke.cancel = std::make_shared<CancelSignal>();
    invoke.cancel->cancel();
    CHECK(start(router, loop.loop, invoke).get().error == InvokeError::Cancelled);
    CHECK(held.calls == 0);
  }
}

TEST_CASE("a call waiting for a slot is woken when one frees") {
  RouterOptions options;
  options.capacity_wait = 60s;
  Router router = make_router(options, 1);
  HeldCalls held;
  router.set_transport("solo", held.transport());
  LoopThreads loop;
  auto first = start(router, loop.loop);
  wait_until([&] { return held.calls == 1; });
  auto second = start(router, loop.loop);
  std::this_thread::sleep_for(20ms);
  CHECK(held.calls == 1);  // the second waits: the cap is one
  held.answer_all();       // the first answers and frees its slot ...
  CHECK(first.get().ok());
  wait_until([&] { return held.calls == 2; });  // ... which the second takes at once
  held.answer_all();
  const InvokeResult r = second.get();
  CHECK(r.ok());
  CHECK(r.attempts.front().outcome == AttemptOutcome::Skipped);  // noted at the cap
}

TEST_CASE("invoke_async refuses a null loop or an empty on_done") {
  Router router = make_router();
  CHECK_THROWS_AS(router.invoke_async("hi", {}, nullptr, [](InvokeResult) {}), torouter::Error);
  CHECK_THROWS_AS(router.invoke_async("hi", {}, std::make_shared<RunLoop>(), nullptr),
                  torouter::Error);
}

namespace {

// A stream sent from a thread of its own: `pieces` pieces, one every
// `gap`, then the completion (or nothing, when `stall_after` pieces are
// sent and the stream goes quiet).
Transport paced_stream(int pieces, std::chrono::milliseconds gap, int stall_after = -1) {
  return Transport::async_streaming(
      [=](const Request&, torouter::ChunkCallback on_chunk, CompletionCallback done) {
        std::thread([=] {
          for (int i = 0; i < pieces; ++i) {
            if (i == stall_after) return;
            std::this_thread::sleep_for(gap);
            on_chunk(std::to_string(i) + ",");
          }
          done(Response::answer("", 1, 1));
        }).detach();
      });
}

}  // namespace

TEST_CASE("an asynchronous stream's pieces reach on_chunk in order, on the loop") {
  Router router = make_router();
  // Pieces sent back to back from one thread, a loop of two threads: the
  // order must survive the loop.
  router.set_transport(
      "solo", Transport::async_streaming(
                  [](const Request&, torouter::ChunkCallback on_chunk, CompletionCallback done) {
                    std::thread([on_chunk, done] {
                      for (int i = 0; i < 500; ++i) on_chunk(std::to_string(i) + ",");
                      done(Response::answer("", 3, 500));
                    }).detach();
                  }));
  LoopThreads loop(2);
  std::string seen;
  std::mutex seen_mutex;
  InvokeOptions options;
  options.on_chunk = [&](std::string_view piece) {
    std::lock_guard<std::mutex> lock(seen_mutex);
    seen.append(piece);
  };
  InvokeResult r = start(router, loop.loop, options).get();
  REQUIRE(r.ok());
  std::string expected;
  for (int i = 0; i < 500; ++i) expected += std::to_string(i) + ",";
  CHECK(seen == expected);
  CHECK(r.response.text == expected);  // joined by the router

  // The blocking invoke takes the same transport.
  seen.clear();
  InvokeResult blocking = router.invoke("hi", options);
  REQUIRE(blocking.ok());
  CHECK(seen == expected);
}

TEST_CASE("an asynchronous stream is timed from piece to piece, and capped in all when asked") {
  RouterOptions o;
  o.attempt_timeout = 150ms;
  o.max_attempts_per_expert = 1;
  SECTION("a stream longer than the attempt timeout, with short gaps, is not cut") {
    Router router = make_router(o);
    router.set_transport("solo", paced_stream(12, 40ms));  // about 480 ms in all
    InvokeResult r = router.invoke("hi");
    REQUIRE(r.ok());
    CHECK(r.response.text.rfind("11,") == r.response.text.size() - 3);
  }
  SECTION("empty pieces keep a stream alive, and are not passed on") {
    // A reasoning model thinks for 320 ms, twice the timeout, before its
    // first word; its transport says so with empty pieces.
    Router router = make_router(o);
    router.set_transport(
        "solo", Transport::async_streaming(
                    [](const Request&, torouter::ChunkCallback on_chunk, CompletionCallback done) {
                      std::thread([on_chunk, done] {
                        for (int i = 0; i < 8; ++i) {
                          std::this_thread::sleep_for(40ms);
                          on_chunk({});
                        }
                        on_chunk("a");
                        on_chunk("b");
                        done(Response::answer("", 1, 2));
                      }).detach();
                    }));
    InvokeOptions options;
    std::vector<std::string> seen;
    options.on_chunk = [&](std::string_view piece) { seen.emplace_back(piece); };
    InvokeResult r = router.invoke("hi", options);
    REQUIRE(r.ok());
    CHECK(r.attempts.size() == 1);
    CHECK(seen == std::vector<std::string>{"a", "b"});
    CHECK(r.response.text == "ab");
  }
  SECTION("a stream that stalls after its first pieces breaks, as a timeout") {
    Router router = make_router(o);
    router.set_transport("solo", paced_stream(12, 10ms, 3));
    InvokeOptions options;
    std::string seen;
    options.on_chunk = [&](std::string_view piece) { seen.append(piece); };
    InvokeResult r = router.invoke("hi", options);
    CHECK(r.error == InvokeError::StreamBroken);
    CHECK(seen == "0,1,2,");
    REQUIRE(r.attempts.size() == 1);
    CHECK(r.attempts[0].failure == FailureKind::Timeout);
    CHECK_THAT(r.attempts[0].detail, Catch::Contains("no piece of the stream for 150 ms"));
  }
  SECTION("a stream that sends nothing is a call with no answer") {
    Router router = make_router(o);
    router.set_transport("solo", paced_stream(12, 10ms, 0));
    InvokeResult r = router.invoke("hi");
    CHECK(r.error == InvokeError::AllFailed);
    REQUIRE(r.attempts.size() == 1);
    CHECK(r.attempts[0].failure == FailureKind::Timeout);
    CHECK_THAT(r.attempts[0].detail, Catch::Contains("no answer within 150 ms"));
  }
  SECTION("stream_timeout caps the whole stream") {
    o.stream_timeout = 200ms;
    Router router = make_router(o);
    router.set_transport("solo", paced_stream(20, 40ms));
    InvokeResult r = router.invoke("hi");
    CHECK(!r.ok());
    REQUIRE(r.attempts.size() == 1);
    CHECK(r.attempts[0].failure == FailureKind::Timeout);
    CHECK_THAT(r.attempts[0].detail, Catch::Contains("stream_timeout of 200 ms"));
  }
}

TEST_CASE("an asynchronous stream that fails before its first piece fails over") {
  ExpertRegistry registry;
  registry.add(ExpertSpec("first", 1.0, 1.0));
  registry.add(ExpertSpec("second", 1.0, 1.0));
  auto scorer = std::make_shared<TableScorer>(std::vector<std::string>{"first", "second"},
                                              std::vector<float>{0.9f, 0.5f});
  RouterOptions o;
  o.max_attempts_per_expert = 1;
  Router router(std::move(registry), scorer, nullptr, o);
  router.set_transport("first",
                       Transport::async_streaming(
                           [](const Request&, torouter::ChunkCallback, CompletionCallback done) {
                             done(Response::failed(FailureKind::ServerError, "HTTP 503"));
                           }));
  router.set_transport("second", paced_stream(3, 1ms));
  InvokeOptions options;
  std::string seen;
  options.on_chunk = [&](std::string_view piece) { seen.append(piece); };
  InvokeResult r = router.invoke("hi", options);
  REQUIRE(r.ok());
  CHECK(r.expert == "second");
  CHECK(seen == "0,1,2,");
}
