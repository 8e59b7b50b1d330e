// The in-process state store (see torouter/state_store.hpp): budgets by
// window, concurrency slots and per-minute rates, under one mutex.
#include <fmt/format.h>

#include "budget_window.hpp"
#include "torouter/error.hpp"
#include "torouter/state_store.hpp"

TOROUTER_BEGIN_NAMESPACE

InProcessStateStore::InProcessStateStore(
    std::function<std::chrono::system_clock::time_point()> clock)
    : clock_(clock ? std::move(clock) : [] { return std::chrono::system_clock::now(); }) {}

void InProcessStateStore::configure(const ExpertRegistry& experts,
                                    std::vector<BudgetRule> budgets) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (configured_) {
    throw Error("InProcessStateStore: configured twice: a store serves one router",
                ErrorCode::Misuse);
  }
  configured_ = true;
  experts_ = experts.experts();
  rules_ = std::move(budgets);
  buckets_.assign(rules_.size(), {});
  in_flight_.assign(experts_.size(), 0);
  rates_.assign(experts_.size(), Rate());
}

std::int64_t InProcessStateStore::now_ms() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock_().time_since_epoch()).count();
}

InProcessStateStore::Bucket& InProcessStateStore::bucket(std::size_t rule, std::int64_t window) {
  auto& windows = buckets_[rule];
  auto found = windows.find(window);
  if (found != windows.end()) return found->second;
  // A new window began: past ones no call still holds are done with.
  for (auto it = windows.begin(); it != windows.end();) {
    it = it->second.holders == 0 ? windows.erase(it) : std::next(it);
  }
  return windows[window];
}

InProcessStateStore::Rate& InProcessStateStore::rate(std::size_t expert, std::int64_t minute) {
  Rate& r = rates_[expert];
  if (r.minute != minute) r = Rate{minute, 0.0, 0.0};
  return r;
}

std::string InProcessStateStore::refusal(const Admission& a, std::int64_t now,
                                         AdmissionOutcome& outcome) {
  const ExpertSpec& spec = experts_[a.expert];
  for (std::size_t r = 0; r < rules_.size() && !a.ignore_budgets; ++r) {
    if (!rules_[r].covers(spec)) continue;
    const Bucket& b = bucket(r, detail::window_id(rules_[r].window, now));
    if (b.spent + b.reserved + a.reserve_usd > rules_[r].limit_usd) {
      outcome = AdmissionOutcome::OverBudget;
      return fmt::format("budget {}: ${:.6g} spent and ${:.6g} reserved, ${:.6g} asked",
                         rules_[r].describe(), b.spent, b.reserved, a.reserve_usd);
    }
  }
  if (spec.max_concurrent_calls > 0 &&
      in_flight_[a.expert] >= static_cast<int>(spec.max_concurrent_calls)) {
    outcome = AdmissionOutcome::AtCapacity;
    return fmt::format("at its concurrency cap of {}", spec.max_concurrent_calls);
  }
  const Rate& r = rate(a.expert, detail::window_id(BudgetWindow::Minute, now));
  if (spec.requests_per_minute > 0 &&
      r.requests + 1 > static_cast<double>(spec.requests_per_minute)) {
    outcome = AdmissionOutcome::RateLimited;
    return fmt::format("{} requests this minute, its limit", spec.requests_per_minute);
  }
  // A call larger than the whole limit still goes when the minute is unused.
  if (spec.tokens_per_minute > 0 && r.tokens > 0 &&
      r.tokens + a.reserve_tokens > static_cast<double>(spec.tokens_per_minute)) {
    outcome = AdmissionOutcome::RateLimited;
    return fmt::format("{:.0f} of its {} tokens this minute used, {:.0f} asked", r.tokens,
                       spec.tokens_per_minute, a.reserve_tokens);
  }
  return {};
}

AdmissionResult InProcessStateStore::admit_now(const Admission& a) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (a.expert >= experts_.size()) {
    throw Error(fmt::format("InProcessStateStore: no expert at {}", a.expert), ErrorCode::Misuse);
  }
  const std::int64_t now = now_ms();
  AdmissionResult result;
  result.detail = refusal(a, now, result.outcome);
  if (!result.detail.empty()) return result;
  Held held;
  held.expert = a.expert;
  held.usd = a.reserve_usd;
  held.tokens = a.reserve_tokens;
  held.minute = detail::window_id(BudgetWindow::Minute, now);
  const ExpertSpec& spec = experts_[a.expert];
  for (std::size_t r = 0; r < rules_.size(); ++r) {
    if (!rules_[r].covers(spec)) continue;
    const std::int64_t window = detail::window_id(rules_[r].window, now);
    Bucket& b = bucket(r, window);
    b.reserved += a.reserve_usd;
    ++b.holders;
    held.buckets.emplace_back(r, window);
  }
  ++in_flight_[a.expert];
  Rate& rate_now = rate(a.expert, held.minute);
  rate_now.requests += 1;
  rate_now.tokens += a.reserve_tokens;
  result.ticket = next_ticket_++;
  held_.emplace(result.ticket, std::move(held));
  return result;
}

void InProcessStateStore::admit(const Admission& admission,
                                std::function<void(const AdmissionResult&)> done) {
  done(admit_now(admission));
}

void InProcessStateStore::settle(const Settlement& s) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = held_.find(s.ticket);
  if (found == held_.end()) return;  // settled already
  const Held& held = found->second;
  for (const auto& [rule, window] : held.buckets) {
    Bucket& b = buckets_[rule][window];
    b.reserved -= held.usd;
    b.spent += s.spent_usd;
    --b.holders;
  }
  spent_ += s.spent_usd;
  --in_flight_[held.expert];
  // The call's minute keeps its tokens and retries while it is current.
  Rate& r = rates_[held.expert];
  if (r.minute == held.minute) {
    r.tokens += s.used_tokens - held.tokens;
    r.requests += s.extra_requests;
  }
  held_.erase(found);
}

int InProcessStateStore::in_flight(std::size_t expert) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return expert < in_flight_.size() ? in_flight_[expert] : 0;
}

double InProcessStateStore::spent_usd() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return spent_;
}

double InProcessStateStore::spent_in_window(std::size_t rule) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (rule >= rules_.size()) return 0.0;
  const auto& windows = buckets_[rule];
  auto found = windows.find(detail::window_id(rules_[rule].window, now_ms()));
  return found == windows.end() ? 0.0 : found->second.spent;
}

TOROUTER_END_NAMESPACE
