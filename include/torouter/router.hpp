// torouter/router.hpp: route a prompt to the best expert, and call it
// reliably.
//
//   torouter::Router router(registry, scorer);               // UtilityPolicy by default
//   router.set_transport("small", torouter::Transport::sync(call_small));
//   router.set_transport("large", torouter::Transport::sync(call_large));
//
//   torouter::RouteDecision decision = router.route("Prove that ...");
//   std::cout << decision.pick()->name << " because " << to_string(decision.reason);
//
//   torouter::InvokeResult result = router.invoke("Prove that ...");
//   if (result.ok()) use(result.response.text);
//   else log(result.error_message, result.attempts);  // every attempt, in order
//
//   // Non-blocking, on an event loop (torouter/event_loop.hpp): thousands of
//   // calls in flight on a few threads, each cancellable.
//   router.invoke_async("Prove that ...", options, loop,
//                       [](torouter::InvokeResult r) { reply(std::move(r)); });
//
// `route` and `invoke` are safe to call from many threads at once. Routing
// into a reused `RouteDecision` on a warm router allocates nothing and takes
// no lock. A fresh decision (the `route` that returns one, and `invoke`)
// borrows the scorer's working memory from a pool the router keeps, one
// per call in flight, rather than making it each time. `set_transport` must
// happen before the first `invoke`.
#pragma once

#include <any>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/cancel.hpp"
#include "torouter/cost_model.hpp"
#include "torouter/decision_log.hpp"
#include "torouter/event_loop.hpp"
#include "torouter/expert.hpp"
#include "torouter/policy.hpp"
#include "torouter/scorer.hpp"
#include "torouter/state_store.hpp"
#include "torouter/transport.hpp"

TOROUTER_BEGIN_NAMESPACE

/// What `invoke` does once a budget is spent.
enum class BudgetMode {
  /// Refuse calls whose predicted cost does not fit what a budget has left.
  Refuse,
  /// Skip candidates that do not fit, and when none fits, call the cheapest
  /// eligible expert anyway: a soft budget that degrades rather than refuses.
  Downgrade,
};

/// How a router retries, fails over, rests failing experts and spends.
struct RouterOptions {
  /// Calls to one expert within one `invoke`, the first included.
  int max_attempts_per_expert = 2;
  /// Distinct experts tried within one `invoke` before giving up.
  std::size_t max_experts_tried = 3;
  /// Pause before the first retry; grows by `backoff_multiplier` after each
  /// retry not timed by a `retry_after`.
  std::chrono::milliseconds initial_backoff{100};
  /// Longest pause between retries.
  std::chrono::milliseconds max_backoff{2000};
  /// Growth of the pause between successive retries.
  double backoff_multiplier = 2.0;
  /// A rate-limited expert's `retry_after` is honoured up to this long;
  /// beyond it the router fails over instead of waiting.
  std::chrono::milliseconds max_retry_after{5000};
  /// Time one call may take (passed to the transport as `Request::timeout`);
  /// for a streamed answer, the time to its first chunk and between chunks.
  std::chrono::milliseconds attempt_timeout{30000};
  /// Most time one streamed call may take in all (`Request::stream_timeout`);
  /// 0, the default, for no cap: a stream that keeps coming is not cut.
  std::chrono::milliseconds stream_timeout{0};
  /// Time one `invoke` may take in all, waits included.
  std::chrono::milliseconds invoke_timeout{120000};
  /// Failures in a row (across invokes) after which an expert cools down.
  int failures_before_cooldown = 3;
  /// How long a cooling expert is left out of routing.
  std::chrono::milliseconds cooldown{30000};
  /// How long `invoke` waits for a free slot when every candidate is at its
  /// `max_concurrent_calls` cap, before failing.
  std::chrono::milliseconds capacity_wait{1000};
  /// Most USD this router's calls spend in all; infinity for no such
  /// budget. With a shared `state_store`, the fleet's calls.
  double budget_usd = std::numeric_limits<double>::infinity();
  /// More budgets: by window (minute, hour, day, month), by expert, by tag
  /// (torouter/state_store.hpp). A call must fit every one that covers it.
  std::vector<BudgetRule> budgets;
  /// What happens once a budget does not cover a call.
  BudgetMode budget_mode = BudgetMode::Refuse;
  /// Where spend, slots, request rates and published cooldowns are kept;
  /// null for an `InProcessStateStore` of the router's own. A store serves
  /// one router.
  std::shared_ptr<StateStore> state_store;
  /// Cost model settings (default output tokens).
  CostModelOptions cost_model;
};

/// Checks every field of `options` (counts at least 1, durations not
/// negative, timeouts above 0, a finite backoff multiplier >= 1, a budget
/// >= 0); returns an empty string when valid, otherwise the first field
/// that is not and why ("backoff_multiplier must be ..."). `Router`'s
/// constructor throws `Error` with it.
std::string validate_router_options(const RouterOptions& options);

/// Exploration, off by default: with probability `epsilon` the route picks
/// uniformly among the eligible candidates whose predicted cost is at most
/// `max_cost_ratio` times the best one's (the best included), so a log of
/// the traffic holds outcomes the model would not have picked; the
/// probability of each pick is recorded (`RouteDecision::propensity`).
struct ExplorationOptions {
  double epsilon = 0.0;
  double max_cost_ratio = std::numeric_limits<double>::infinity();
  /// Seeds the router's sampler the first time exploration is used (0: a
  /// random seed), so a test can repeat a sequence of picks.
  std::uint64_t seed = 0;
};

/// Checks `options`: an empty string when valid, else the field and why.
std::string validate_exploration_options(const ExplorationOptions& options);

/// The knobs of one `route`.
struct RouteOptions {
  /// Utility weights and hard constraints.
  PolicyOptions policy;
  /// Prompt tokens when the caller knows them; 0 estimates ceil(chars / 4).
  std::size_t input_tokens = 0;
  /// Off unless `exploration.epsilon` > 0.
  ExplorationOptions exploration;
};

/// Everything `route` decided, and why; reuse one across calls to avoid
/// allocation. Its text (candidates' names, `policy_name`, `model_version`)
/// points into the router's registry, policy and scorer, which the decision
/// keeps alive: it stays valid after its router is gone. (A `Candidate`
/// copied out of it is a view: keep the decision too.)
struct RouteDecision {
  /// Every expert the router knows, eligible ones first, best first;
  /// excluded ones after, with their `exclusion`.
  std::vector<Candidate> candidates;
  /// Why the first candidate was picked, or `NoneEligible`.
  PickReason reason = PickReason::NoneEligible;
  /// The knobs used (the quality floor and the needed capabilities among them).
  PolicyOptions policy;
  /// The policy's name ("utility", "threshold").
  std::string_view policy_name;
  /// The scorer's model version.
  std::string_view model_version;
  /// Prompt tokens used for cost (estimated or given).
  std::size_t input_tokens = 0;
  /// The probability with which the first candidate was picked: 1 without
  /// exploration.
  double propensity = 1.0;
  /// The expected quality of the pick's answer: when the pick has the
  /// highest predicted quality of the eligible candidates, the scorer's
  /// `top_pick_quality` of it (which a model from `torouter train` lowers
  /// by what held-out top picks fell short of their prediction), else the
  /// pick's `predicted_quality`. NaN when none is eligible.
  double expected_quality = std::numeric_limits<double>::quiet_NaN();

  /// The picked candidate, or nullptr when none is eligible.
  const Candidate* pick() const {
    return !candidates.empty() && candidates.front().eligible() ? &candidates.front() : nullptr;
  }
  /// Number of eligible candidates (they come first).
  std::size_t eligible_count() const;
  /// The candidate for the expert named `name`, or nullptr.
  const Candidate* find(std::string_view name) const;

 private:
  friend class Router;
  // Scratch kept between calls so a warm route allocates nothing.
  ScoreBatch scores_;
  std::unique_ptr<ScorerWorkspace> workspace_;
  // What the text points into, held so it outlives the router; the scorer
  // is also the workspace's owner (held, its address cannot be reused by
  // another scorer while the workspace is kept).
  std::shared_ptr<const ExpertRegistry> registry_;
  std::shared_ptr<const Policy> policy_;
  std::shared_ptr<const Scorer> scorer_;
};

/// The decision as a JSON object (candidates, pick, reason, knobs, version).
std::string to_json(const RouteDecision& decision);

/// Knobs of one `invoke`.
struct InvokeOptions {
  /// Routing knobs.
  RouteOptions route;
  /// Passed to the transport as `Request::max_output_tokens`; when set, it
  /// also stands for the answer in the context-window check (unless
  /// `route.policy.max_output_tokens` says otherwise).
  std::size_t max_output_tokens = 0;
  /// Answers the call asks for at once (OpenAI's `n`), each up to
  /// `max_output_tokens`: a usage count is believed up to this many answers.
  std::size_t answers = 1;
  /// When set, the answer is streamed to it. Failover happens only before
  /// the first chunk reaches it; after that a failure ends the invoke.
  ChunkCallback on_chunk;
  /// False when a streaming transport's pieces are not the answer's text
  /// (a relay's JSON, as torouter-server's are): the response's text is
  /// then what the transport returns, never the pieces joined.
  bool pieces_are_text = true;
  /// What the caller's transports need to know about this invoke beyond the
  /// prompt (the whole conversation, a trace id, a cancel flag). Each attempt
  /// gets it as `Request::context`, unchanged. A `std::any` so a transport
  /// reads it back by type, and a wrong guess gives nullptr rather than
  /// undefined behaviour. Hold a pointer or a `std::shared_ptr` for state
  /// the transports change or that must outlive the invoke.
  std::any context;
  /// When set, the invoke calls this expert only (a registry name; routing
  /// still fills the decision): no failover, but its `enabled` flag, its
  /// cooldown, its concurrency cap and the budget apply as to any call, and
  /// a refusal says which (`BudgetExhausted`, `AtCapacity`, or
  /// `NoEligibleExpert` naming the reason). `invoke` throws `Error` for a
  /// name the router does not know.
  std::string expert;
  /// When set, cancelling it ends the invoke with `InvokeError::Cancelled`:
  /// waits and retries stop, the transport in flight is told
  /// (`Request::cancel`), the expert's slot and the budget reservation are
  /// released, and nothing counts against the expert.
  std::shared_ptr<CancelSignal> cancel;
  /// A decision this router's `route` already made for this prompt with
  /// these options (`route`, with `route.policy.max_output_tokens` set to
  /// `max_output_tokens` when that is 0): the invoke starts from a copy of it
  /// instead of routing again. For callers that show the decision before the
  /// answer, as a streaming server's headers do, without routing twice. A
  /// decision of another router makes the invoke throw `Error`.
  std::shared_ptr<const RouteDecision> routed;
  /// Names this call in the decision log (`Router::set_decision_sink`);
  /// the router makes one when empty.
  std::string request_id;
};

/// What happened to one call (or skipped call) during an invoke.
enum class AttemptOutcome {
  Answered,   ///< The expert answered.
  Failed,     ///< The call failed; see `failure`.
  Skipped,    ///< Not called; see `detail` (at capacity, cooling down, over budget, no transport).
  Cancelled,  ///< In flight when the invoke was cancelled; not the expert's failure.
};

/// A short, stable name for `outcome`.
constexpr std::string_view to_string(AttemptOutcome outcome) {
  switch (outcome) {
    case AttemptOutcome::Answered:
      return "answered";
    case AttemptOutcome::Failed:
      return "failed";
    case AttemptOutcome::Skipped:
      return "skipped";
    case AttemptOutcome::Cancelled:
      return "cancelled";
  }
  return "unknown";
}

/// One entry of an invoke's trace.
struct Attempt {
  /// Expert called (or skipped).
  std::string expert;
  /// 1 for the first call to this expert in this invoke, 2 for the retry, ...
  int number = 0;
  AttemptOutcome outcome = AttemptOutcome::Skipped;
  /// For `Failed`: the kind of failure.
  FailureKind failure = FailureKind::None;
  /// Failure message, or why the call was skipped.
  std::string detail;
  /// Where `detail` starts quoting words torouter did not write, which may
  /// name internal hosts, keys or accounts: a failed call's upstream
  /// (`Response::upstream_words_at`), a skip's state store; `npos` when it
  /// quotes none. The quote runs to the end of `detail`.
  std::size_t quoted_at = std::string::npos;
  /// For `Failed`: the upstream's HTTP status (`Response::http_status`), 0 when none.
  int http_status = 0;
  /// For `RateLimited`: the wait the expert asked for (`Response::retry_after`),
  /// 0 when it named none.
  std::chrono::milliseconds retry_after{0};
  /// Pause before this call (backoff or retry-after).
  std::chrono::milliseconds waited{0};
  /// Duration of the call as the router measured it.
  std::chrono::milliseconds latency{0};
  /// USD charged for this call: an answered call's cost, and the
  /// predicted cost of a streamed answer that broke or was cancelled after
  /// it had begun to reach the caller (its provider bills what was sent);
  /// 0 for other calls.
  double cost_usd = 0.0;
  /// For `Answered`: true when the answer's usage counts were past what the
  /// expert can take (its context window; `InvokeOptions::max_output_tokens`
  /// per answer) and were billed cut down to that bound; `detail` says so.
  bool usage_capped = false;
};

/// Why an invoke failed; `None` when it answered.
enum class InvokeError {
  None,
  NoEligibleExpert,  ///< The constraints left no expert.
  AllFailed,         ///< Every candidate tried failed; see `attempts`.
  BudgetExhausted,   ///< A budget covers no candidate (BudgetMode::Refuse).
  AtCapacity,        ///< Every candidate stayed at its concurrency cap.
  RateLimited,       ///< Every candidate's requests or tokens per minute were used up.
  StateUnavailable,  ///< The shared state store was unreachable and fails closed.
  StreamBroken,      ///< The expert failed after chunks reached the caller.
  Timeout,           ///< The invoke's own deadline passed.
  Cancelled,         ///< The caller cancelled it (`InvokeOptions::cancel`).
};

/// A short, stable name for `error`.
constexpr std::string_view to_string(InvokeError error) {
  switch (error) {
    case InvokeError::None:
      return "none";
    case InvokeError::NoEligibleExpert:
      return "no_eligible_expert";
    case InvokeError::AllFailed:
      return "all_failed";
    case InvokeError::BudgetExhausted:
      return "budget_exhausted";
    case InvokeError::AtCapacity:
      return "at_capacity";
    case InvokeError::RateLimited:
      return "rate_limited";
    case InvokeError::StateUnavailable:
      return "state_unavailable";
    case InvokeError::StreamBroken:
      return "stream_broken";
    case InvokeError::Timeout:
      return "timeout";
    case InvokeError::Cancelled:
      return "cancelled";
  }
  return "unknown";
}

/// The answer of an invoke with its full trace, or a clear error.
struct InvokeResult {
  /// `None` when an expert answered.
  InvokeError error = InvokeError::None;
  /// What went wrong, in a sentence, when `error` is not `None`.
  std::string error_message;
  /// The expert that answered (empty on failure).
  std::string expert;
  /// The answer (its `text` holds the joined chunks when streamed).
  Response response;
  /// The routing decision the invoke followed.
  RouteDecision decision;
  /// Every call and skip, in order.
  std::vector<Attempt> attempts;
  /// USD charged for the answer (see `Attempt::cost_usd`).
  double cost_usd = 0.0;
  /// True when every expert that passed the constraints was cooling down,
  /// so the invoke tried them anyway, best first, rather than refuse.
  bool last_resort = false;

  bool ok() const { return error == InvokeError::None; }
};

/// Live counters of one expert.
struct ExpertStatus {
  bool enabled = true;
  /// This router's calls now in flight (the state store's `in_flight` has
  /// the fleet's when it is shared).
  int in_flight = 0;
  /// Failures since its last answer.
  int consecutive_failures = 0;
  /// True while left out of routing after repeated failures.
  bool cooling_down = false;
  /// Calls made and calls failed since the router was built.
  std::uint64_t calls = 0;
  std::uint64_t failures = 0;
};

/// Routes prompts over a registry of experts with a scorer and a policy, and
/// calls the pick through the caller's transports.
class Router {
 public:
  /// Builds a router over `experts`. Every expert must be one the scorer
  /// predicts for (throws `Error` otherwise). `policy` defaults to
  /// `UtilityPolicy`; `cost_model` defaults to `CostModel` with
  /// `options.cost_model`.
  Router(ExpertRegistry experts, std::shared_ptr<const Scorer> scorer,
         std::shared_ptr<const Policy> policy = nullptr, RouterOptions options = {},
         std::shared_ptr<const CostModel> cost_model = nullptr);
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  /// Sets how `invoke` calls `expert`; throws `Error` for an unknown expert
  /// or an invalid transport. Not safe concurrently with `invoke`.
  void set_transport(std::string_view expert, Transport transport);

  /// Scores the prompt, applies constraints and ranks the experts. Throws
  /// `Error` for knobs out of range (`validate_policy_options`).
  RouteDecision route(std::string_view prompt, const RouteOptions& options = {}) const;
  /// Same, into `decision`, which keeps the scorer's working memory for its
  /// next route: allocation-free once `decision` has been used with this
  /// router's current scorer and the same options (reading which scorer is
  /// current, see `replace_scorer`, takes one brief lock).
  void route(std::string_view prompt, const RouteOptions& options, RouteDecision& decision) const;

  /// Routes, calls the pick, retries and fails over; never throws for an
  /// expert's failure. Blocks this thread until done: it runs
  /// `invoke_async` on a `RunLoop` of its own, on this thread.
  InvokeResult invoke(std::string_view prompt, const InvokeOptions& options = {});

  /// The same invoke without blocking: routes now, on this thread (a
  /// routing error throws `Error` from here), then does everything else as
  /// tasks on `loop`, and calls `on_done` exactly once, from a thread of
  /// `loop`, with the result. Backoffs, `retry_after`, attempt deadlines and
  /// waits for a free slot are timers and wake-ups, never a sleeping thread;
  /// an asynchronous transport is called from the loop and its completion
  /// comes back to it. A synchronous or streaming transport is called on a
  /// thread of the loop and holds it until it returns: give non-blocking
  /// callers asynchronous transports. The router must outlive the invoke.
  void invoke_async(std::string_view prompt, InvokeOptions options, std::shared_ptr<EventLoop> loop,
                    std::function<void(InvokeResult)> on_done);

  /// Enables or disables an expert at run time; safe from any thread.
  void set_enabled(std::string_view expert, bool enabled);
  /// Live counters of `expert`; throws `Error` for an unknown name.
  ExpertStatus status(std::string_view expert) const;
  /// USD spent by answered calls so far (the state store's count: a
  /// shared store's is the fleet's).
  double spent_usd() const;
  /// Invokes waiting now for a capacity slot (`RouterOptions::capacity_wait`).
  std::size_t invokes_waiting_for_slot() const;
  /// The store that keeps spend, slots and rates (`RouterOptions::state_store`).
  StateStore& state_store() const { return *store_; }

  /// Receives one record per routed call as each invoke ends (a
  /// `DecisionLog`'s `record`, say); it must not block. Set it before
  /// invoking: not safe concurrently with `invoke`.
  void set_decision_sink(DecisionSink sink);

  /// Replaces the scorer, atomically and safe from any thread while the
  /// router routes and invokes: a route or invoke that has begun finishes
  /// on the scorer it began with, later ones use `scorer`. Per-expert state
  /// (enabled flags, cooldowns, slots, counters, spend) is kept. Throws
  /// `Error`, and keeps the current scorer, when `scorer` is null or does
  /// not predict for every expert of the registry.
  void replace_scorer(std::shared_ptr<const Scorer> scorer);
  /// The scorer routing uses now; held, it stays valid after a later
  /// `replace_scorer`.
  std::shared_ptr<const Scorer> current_scorer() const;

  const ExpertRegistry& experts() const { return *experts_; }
  /// The scorer routing uses now. A reference: valid until the next
  /// `replace_scorer`; hold `current_scorer()` across one.
  const Scorer& scorer() const { return *current_scorer(); }
  const Policy& policy() const { return *policy_; }
  const RouterOptions& options() const { return options_; }
  const CostModel& cost_model() const { return *cost_model_; }

 private:
  struct ExpertState;
  struct LoadedScorer;
  class InvokeRun;

  // The scorer routing uses now, with what belongs to it alone.
  std::shared_ptr<const LoadedScorer> loaded() const;
  // `scorer` checked against the registry and ready to route with.
  std::shared_ptr<const LoadedScorer> load(std::shared_ptr<const Scorer> scorer) const;

  std::size_t expert_index(std::string_view name) const;
  // Hands the store the registry and every budget (the lifetime one first).
  void configure_store();
  bool cooling_down(std::size_t expert, std::int64_t now_ns) const;
  // Routes into `decision` with `scorer` and its working memory `workspace`.
  void route_with(const LoadedScorer& scorer, std::string_view prompt, const RouteOptions& options,
                  RouteDecision& decision, ScorerWorkspace* workspace) const;
  // Exploration (see ExplorationOptions): may move another eligible
  // candidate to the front, and records the pick's propensity.
  void explore(const ExplorationOptions& options, RouteDecision& decision) const;
  // Routes into `decision` with working memory borrowed from the pool.
  void route_pooled(std::string_view prompt, const RouteOptions& options,
                    RouteDecision& decision) const;

  // Copies `from` into `to` (a decision holds its workspace alone).
  void copy_decision(const RouteDecision& from, RouteDecision& to) const;
  // Routes (or starts from `routed`), then runs the invoke on `loop`: with the caller's options
  // when `borrowed` is set (they outlive the invoke), else with `owned`.
  void start_invoke(std::string_view prompt, const InvokeOptions* borrowed, InvokeOptions owned,
                    std::shared_ptr<EventLoop> loop, std::function<void(InvokeResult)> on_done);
  // A slot was given back to the store: wakes every invoke waiting for one.
  void slot_released();
  // A cooldown until `until`, published by another router sharing the store.
  void cooldown_reported(std::size_t expert, std::chrono::system_clock::time_point until);
  // How many slots have been released so far.
  std::uint64_t slot_generation() const;
  // Calls `wake` once, the next time any slot is released, or at once when
  // one has been since `slot_generation()` was `generation` (then returns
  // 0). Otherwise returns the wait's id for `stop_waiting_for_slot`.
  std::uint64_t wait_for_slot(std::uint64_t generation, std::function<void()> wake);
  // Forgets wait `id` (if it is still queued): an invoke that stops
  // waiting leaves the queue, so the queue holds only invokes that wait.
  void stop_waiting_for_slot(std::uint64_t id);

  std::shared_ptr<const ExpertRegistry> experts_;  // shared with the decisions that name it
  // Read with std::atomic_load, replaced with std::atomic_store
  // (replace_scorer): a route holds the one it loaded until it is done.
  std::shared_ptr<const LoadedScorer> loaded_;
  std::shared_ptr<const Policy> policy_;
  RouterOptions options_;
  std::shared_ptr<const CostModel> cost_model_;
  std::vector<Transport> transports_;
  DecisionSink decision_sink_;
  // Makes request ids for invokes that bring none: a per-router random
  // prefix and a counter.
  std::string request_id_prefix_;
  mutable std::atomic<std::uint64_t> next_request_{0};
  // Exploration's sampler, seeded on first use.
  mutable std::mutex explore_mutex_;
  mutable std::mt19937_64 explore_rng_;
  mutable bool explore_seeded_ = false;
  std::unique_ptr<ExpertState[]> state_;
  std::shared_ptr<StateStore> store_;
  // Invokes waiting for a free slot, by wait id, woken (all at once) when
  // one frees.
  mutable std::mutex slot_waiters_mutex_;
  std::uint64_t slot_generation_ = 0;
  std::uint64_t next_slot_wait_ = 0;
  std::map<std::uint64_t, std::function<void()>> slot_waiters_;
};

TOROUTER_END_NAMESPACE
