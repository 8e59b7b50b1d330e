// The state a router's calls share (see torouter/state_store.hpp): budget
// windows, and the in-process store.
#include "torouter/state_store.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "budget_window.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE

namespace detail {

namespace {

constexpr std::int64_t kMinuteMs = 60'000;
constexpr std::int64_t kHourMs = 60 * kMinuteMs;
constexpr std::int64_t kDayMs = 24 * kHourMs;

// Floor division: windows before 1970 count down, not toward zero.
std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  return a / b - ((a % b != 0) && ((a < 0) != (b < 0)) ? 1 : 0);
}

// Days since 1970-01-01 of a civil date, and back (H. Hinnant's algorithms,
// exact for the proleptic Gregorian calendar).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = floor_div(y, 400);
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

void civil_from_days(std::int64_t z, std::int64_t& y, unsigned& m) {
  z += 719468;
  const std::int64_t era = floor_div(z, 146097);
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2);
}

}  // namespace

std::int64_t window_id(BudgetWindow window, std::int64_t unix_ms) {
  switch (window) {
    case BudgetWindow::Lifetime:
      return 0;
    case BudgetWindow::Minute:
      return floor_div(unix_ms, kMinuteMs);
    case BudgetWindow::Hour:
      return floor_div(unix_ms, kHourMs);
    case BudgetWindow::Day:
      return floor_div(unix_ms, kDayMs);
    case BudgetWindow::Month: {
      std::int64_t year = 0;
      unsigned month = 0;
      civil_from_days(floor_div(unix_ms, kDayMs), year, month);
      return year * 12 + month - 1;
    }
  }
  return 0;
}

std::int64_t window_end_ms(BudgetWindow window, std::int64_t id) {
  switch (window) {
    case BudgetWindow::Lifetime:
      return std::numeric_limits<std::int64_t>::max();
    case BudgetWindow::Minute:
      return (id + 1) * kMinuteMs;
    case BudgetWindow::Hour:
      return (id + 1) * kHourMs;
    case BudgetWindow::Day:
      return (id + 1) * kDayMs;
    case BudgetWindow::Month: {
      const std::int64_t next = id + 1;
      return days_from_civil(floor_div(next, 12),
                             static_cast<unsigned>(next - floor_div(next, 12) * 12) + 1, 1) *
             kDayMs;
    }
  }
  return std::numeric_limits<std::int64_t>::max();
}

}  // namespace detail

const char* to_string(BudgetWindow window) {
  switch (window) {
    case BudgetWindow::Lifetime:
      return "lifetime";
    case BudgetWindow::Minute:
      return "minute";
    case BudgetWindow::Hour:
      return "hour";
    case BudgetWindow::Day:
      return "day";
    case BudgetWindow::Month:
      return "month";
  }
  return "unknown";
}

const char* to_string(AdmissionOutcome outcome) {
  switch (outcome) {
    case AdmissionOutcome::Admitted:
      return "admitted";
    case AdmissionOutcome::OverBudget:
      return "over_budget";
    case AdmissionOutcome::AtCapacity:
      return "at_capacity";
    case AdmissionOutcome::RateLimited:
      return "rate_limited";
    case AdmissionOutcome::Unavailable:
      return "unavailable";
  }
  return "unknown";
}

std::string BudgetRule::describe() const {
  std::string out = fmt::format("${:.6g}", limit_usd);
  out += window == BudgetWindow::Lifetime ? " in all" : fmt::format(" a {}", to_string(window));
  if (!expert.empty()) out += fmt::format(" for expert {}", expert);
  if (!tag.empty()) out += fmt::format(" for tag {}", tag);
  return out;
}

std::string validate_budget_rule(const BudgetRule& rule, const ExpertRegistry& experts) {
  if (!(std::isfinite(rule.limit_usd) && rule.limit_usd >= 0)) {
    return fmt::format("limit_usd must be a finite number >= 0, got {}", rule.limit_usd);
  }
  if (!rule.expert.empty() && !experts.find(rule.expert)) {
    return fmt::format("expert \"{}\" is not in the registry", rule.expert);
  }
  return {};
}

void StateStore::publish_cooldown(std::size_t, std::chrono::system_clock::time_point) {}

void StateStore::on_cooldown(CooldownListener) {}

std::chrono::milliseconds StateStore::capacity_poll() const { return std::chrono::milliseconds(0); }

TOROUTER_END_NAMESPACE
