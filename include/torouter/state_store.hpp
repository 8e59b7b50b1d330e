// torouter/state_store.hpp: where a router keeps the state its calls share
// (issue 13): spend against budgets, concurrency slots, request and token
// rates, and the cooldowns other routers should see.
//
// A router asks its store once before a call (`admit`: reserve the predicted
// spend under every budget that covers the call, take a slot, count the
// request and its tokens) and tells it once after (`settle`: the actual
// spend, the slot back, the tokens used). The default store,
// `InProcessStateStore`, keeps all of it in the process: one router's
// budgets are its own. A store shared by several processes (the Redis store
// of torouter::redis, say) makes the budgets, caps and rates fleet-wide.
//
//   torouter::RouterOptions options;
//   options.budget_usd = 100;                                  // lifetime, every call
//   using torouter::BudgetRule;
//   using torouter::BudgetWindow;
//   options.budgets.push_back(BudgetRule(5.0, BudgetWindow::Day));            // $5 a day
//   options.budgets.push_back(BudgetRule(1.0, BudgetWindow::Hour, "gpt-4o"));  // one expert
//   options.budgets.push_back(BudgetRule(2.0, BudgetWindow::Month, "", "code"));  // a tag
//   torouter::Router router(experts, scorer, nullptr, options);  // in-process store
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/expert.hpp"

TOROUTER_BEGIN_NAMESPACE

/// The period a budget counts spend over; each resets at its boundary, in
/// UTC (a month is a calendar month).
enum class BudgetWindow { Lifetime, Minute, Hour, Day, Month };

/// "lifetime", "minute", "hour", "day", "month".
const char* to_string(BudgetWindow window);

/// A limit on what the calls it covers may spend in each window.
struct BudgetRule {
  BudgetRule() = default;
  /// `limit_usd` a `window`, for `expert` and `tag` (empty: any).
  explicit BudgetRule(double limit_usd, BudgetWindow window = BudgetWindow::Lifetime,
                      std::string expert = {}, std::string tag = {})
      : limit_usd(limit_usd), window(window), expert(std::move(expert)), tag(std::move(tag)) {}

  /// Most USD per window.
  double limit_usd = 0.0;
  BudgetWindow window = BudgetWindow::Lifetime;
  /// Covers calls to this expert only; empty for every expert.
  std::string expert;
  /// Covers calls to experts with this tag only; empty for any. With
  /// `expert` too, both must hold.
  std::string tag;

  /// True when the rule covers calls to `spec`.
  bool covers(const ExpertSpec& spec) const {
    return (expert.empty() || expert == spec.name) && (tag.empty() || spec.has_tag(tag));
  }
  /// "$5 a day for tag code", for messages.
  std::string describe() const;
};

/// Checks a rule against a registry: a finite limit >= 0, a named expert
/// that exists; returns an empty string when valid, otherwise what is wrong.
std::string validate_budget_rule(const BudgetRule& rule, const ExpertRegistry& experts);

/// What a call asks of the store before it starts.
struct Admission {
  /// The expert, by its position in the registry.
  std::size_t expert = 0;
  /// Predicted spend, held under every budget that covers the call.
  double reserve_usd = 0.0;
  /// Predicted tokens (prompt and answer), counted against tokens per minute.
  double reserve_tokens = 0.0;
  /// Take the slot (and count the request) whatever the budgets say: a soft
  /// budget's last resort (`BudgetMode::Downgrade`).
  bool ignore_budgets = false;
};

enum class AdmissionOutcome {
  Admitted,
  OverBudget,   ///< a budget that covers the call cannot hold its reservation
  AtCapacity,   ///< the expert is at `max_concurrent_calls`
  RateLimited,  ///< the expert's requests or tokens per minute are used up
  Unavailable,  ///< a shared store cannot be reached and fails closed
};

/// "admitted", "over_budget", "at_capacity", "rate_limited", "unavailable".
const char* to_string(AdmissionOutcome outcome);

struct AdmissionResult {
  AdmissionOutcome outcome = AdmissionOutcome::Admitted;
  /// Why not, for the attempt's detail ("$5 a day: $4.99 spent, $0.02 asked").
  std::string detail;
  /// Names the admitted call to `settle`; the store's own.
  std::uint64_t ticket = 0;
};

/// What an admitted call tells the store when it ends.
struct Settlement {
  /// From the call's `AdmissionResult`.
  std::uint64_t ticket = 0;
  std::size_t expert = 0;
  /// USD charged (0 when it did not answer); replaces the reservation.
  double spent_usd = 0.0;
  /// Tokens used; replaces the reserved ones.
  double used_tokens = 0.0;
  /// Requests sent to the expert beyond the first (retries), for its rate.
  int extra_requests = 0;
};

/// Called when the fleet reports that an expert cools down until a time.
using CooldownListener =
    std::function<void(std::size_t expert, std::chrono::system_clock::time_point until)>;

/// The shared state of a router's calls. Every member may be called from
/// any thread at once.
class StateStore {
 public:
  virtual ~StateStore() = default;

  /// Called once by the router the store serves, before anything else:
  /// its experts (caps, rates, tags) and budgets (checked already). A
  /// second call throws `Error` (`Misuse`): a store serves one router.
  virtual void configure(const ExpertRegistry& experts, std::vector<BudgetRule> budgets) = 0;

  /// Asks to start a call. Calls `done` exactly once: on this thread
  /// before returning, or later from another thread (a shared store's
  /// reply), within a bounded time (a shared store times its requests out
  /// and falls back). Must not block on I/O.
  virtual void admit(const Admission& admission,
                     std::function<void(const AdmissionResult&)> done) = 0;

  /// Ends an admitted call: spend, slot, tokens. A ticket settles once; a
  /// second settlement of it changes nothing. Must not block on I/O.
  virtual void settle(const Settlement& settlement) = 0;

  /// Tells the other routers sharing the store that `expert` cools down
  /// until `until`. The in-process store has no one to tell.
  virtual void publish_cooldown(std::size_t expert, std::chrono::system_clock::time_point until);

  /// Where a shared store reports cooldowns published by others (set by the
  /// router before its first call; null, by its destructor, to stop: once
  /// this returns, the old listener is not called any more). The listener
  /// runs under a lock of the store's that this call takes too: it must not
  /// call this, nor take a lock held around a call to it.
  virtual void on_cooldown(CooldownListener listener);

  /// Calls of `expert` in flight, as the store counts them (a shared store:
  /// the fleet's, as last seen).
  virtual int in_flight(std::size_t expert) const = 0;

  /// USD spent by every call (a shared store: the fleet's, as last seen).
  virtual double spent_usd() const = 0;

  /// How often an invoke waiting for a slot looks again, for slots freed by
  /// other routers; zero when every release is this router's own (it then
  /// wakes the waiters).
  virtual std::chrono::milliseconds capacity_poll() const;
};

/// The store in the process: every budget, cap and rate is this router's
/// alone. Admission and settlement take one mutex and finish before
/// returning. Also the local state a shared store falls back on.
class InProcessStateStore final : public StateStore {
 public:
  /// `clock` gives the wall time windows are counted in (tests move it).
  explicit InProcessStateStore(
      std::function<std::chrono::system_clock::time_point()> clock = nullptr);

  void configure(const ExpertRegistry& experts, std::vector<BudgetRule> budgets) override;
  void admit(const Admission& admission, std::function<void(const AdmissionResult&)> done) override;
  void settle(const Settlement& settlement) override;
  int in_flight(std::size_t expert) const override;
  double spent_usd() const override;

  /// The same admission, its result returned.
  AdmissionResult admit_now(const Admission& admission);
  /// USD spent in the current window of budget `rule` (by position).
  double spent_in_window(std::size_t rule) const;

 private:
  struct Bucket {
    double spent = 0.0;
    double reserved = 0.0;
    int holders = 0;  // admitted calls not settled yet
  };
  struct Rate {
    std::int64_t minute = -1;
    double requests = 0.0;
    double tokens = 0.0;
  };
  // What an admitted call holds until it settles.
  struct Held {
    std::size_t expert = 0;
    double usd = 0.0;
    double tokens = 0.0;
    std::int64_t minute = 0;
    std::vector<std::pair<std::size_t, std::int64_t>> buckets;  // (rule, window id)
  };

  std::int64_t now_ms() const;
  Bucket& bucket(std::size_t rule, std::int64_t window);
  Rate& rate(std::size_t expert, std::int64_t minute);
  // Why the call cannot be admitted now, or an empty string.
  std::string refusal(const Admission& admission, std::int64_t now_ms, AdmissionOutcome& outcome);

  std::function<std::chrono::system_clock::time_point()> clock_;
  mutable std::mutex mutex_;
  std::vector<ExpertSpec> experts_;
  std::vector<BudgetRule> rules_;
  // Per rule: window id -> its spend; only windows still current or held.
  std::vector<std::unordered_map<std::int64_t, Bucket>> buckets_;
  std::vector<int> in_flight_;
  std::vector<Rate> rates_;
  std::unordered_map<std::uint64_t, Held> held_;
  std::uint64_t next_ticket_ = 1;
  double spent_ = 0.0;
  bool configured_ = false;
};

TOROUTER_END_NAMESPACE
