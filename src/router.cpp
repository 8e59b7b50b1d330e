#include "torouter/router.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "router_state.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE

using detail::Clock;
using detail::to_ns;

std::string validate_router_options(const RouterOptions& o) {
  using std::chrono::milliseconds;
  if (o.max_attempts_per_expert < 1) return "max_attempts_per_expert must be >= 1";
  if (o.max_experts_tried < 1) return "max_experts_tried must be >= 1";
  if (o.failures_before_cooldown < 1) return "failures_before_cooldown must be >= 1";
  if (!(std::isfinite(o.backoff_multiplier) && o.backoff_multiplier >= 1.0)) {
    return fmt::format("backoff_multiplier must be a finite number >= 1, got {}",
                       o.backoff_multiplier);
  }
  for (const auto& [name, value] :
       {std::pair{"initial_backoff", o.initial_backoff}, std::pair{"max_backoff", o.max_backoff},
        std::pair{"max_retry_after", o.max_retry_after},
        std::pair{"stream_timeout", o.stream_timeout}, std::pair{"cooldown", o.cooldown},
        std::pair{"capacity_wait", o.capacity_wait}}) {
    if (value < milliseconds(0)) return fmt::format("{} must not be negative", name);
  }
  for (const auto& [name, value] : {std::pair{"attempt_timeout", o.attempt_timeout},
                                    std::pair{"invoke_timeout", o.invoke_timeout}}) {
    if (value <= milliseconds(0)) return fmt::format("{} must be above 0", name);
  }
  if (!(o.budget_usd >= 0.0)) return fmt::format("budget_usd must be >= 0, got {}", o.budget_usd);
  const double tokens = o.cost_model.default_output_tokens;
  if (!(std::isfinite(tokens) && tokens >= 0.0)) {
    return fmt::format("cost_model.default_output_tokens must be a finite number >= 0, got {}",
                       tokens);
  }
  return {};
}

Router::Router(ExpertRegistry experts, std::shared_ptr<const Scorer> scorer,
               std::shared_ptr<const Policy> policy, RouterOptions options,
               std::shared_ptr<const CostModel> cost_model)
    : experts_(std::make_shared<const ExpertRegistry>(std::move(experts))),
      policy_(policy ? std::move(policy) : std::make_shared<UtilityPolicy>()),
      options_(std::move(options)),
      cost_model_(cost_model ? std::move(cost_model)
                             : std::make_shared<const CostModel>(options_.cost_model)),
      state_(new ExpertState[experts_->size()]),
      store_(options_.state_store ? options_.state_store
                                  : std::make_shared<InProcessStateStore>()) {
  if (experts_->empty()) throw Error("Router: the expert registry is empty", ErrorCode::Misuse);
  if (auto problem = validate_router_options(options_); !problem.empty()) {
    throw Error("RouterOptions." + problem, ErrorCode::Misuse);
  }
  loaded_ = load(std::move(scorer));
  request_id_prefix_ = fmt::format("{:08x}", std::random_device{}());
  for (std::size_t i = 0; i < experts_->size(); ++i) state_[i].enabled = (*experts_)[i].enabled;
  transports_.resize(experts_->size());
  // Last: once the store knows this router it may call it back, and a
  // constructor that throws runs no destructor to stop it.
  configure_store();
}

// A shared store may outlive the router: it must not report to it after.
Router::~Router() { store_->on_cooldown(nullptr); }

void Router::configure_store() {
  std::vector<BudgetRule> rules;
  if (std::isfinite(options_.budget_usd)) rules.emplace_back(options_.budget_usd);
  for (std::size_t i = 0; i < options_.budgets.size(); ++i) {
    if (auto problem = validate_budget_rule(options_.budgets[i], *experts_); !problem.empty()) {
      throw Error(fmt::format("RouterOptions.budgets[{}]: {}", i, problem), ErrorCode::Misuse);
    }
    rules.push_back(options_.budgets[i]);
  }
  store_->configure(*experts_, std::move(rules));
  store_->on_cooldown([this](std::size_t expert, std::chrono::system_clock::time_point until) {
    cooldown_reported(expert, until);
  });
}

void Router::cooldown_reported(std::size_t expert, std::chrono::system_clock::time_point until) {
  if (expert >= experts_->size()) return;
  const auto left = until - std::chrono::system_clock::now();
  const std::int64_t local = to_ns(Clock::now() + left);
  auto& cooldown = state_[expert].cooldown_until_ns;
  std::int64_t current = cooldown.load();
  while (local > current && !cooldown.compare_exchange_weak(current, local)) {
  }
}

std::shared_ptr<const Router::LoadedScorer> Router::load(
    std::shared_ptr<const Scorer> scorer) const {
  if (!scorer) throw Error("Router: scorer is null", ErrorCode::Misuse);
  auto loaded = std::make_shared<LoadedScorer>();
  const auto& names = scorer->expert_names();
  for (const auto& expert : experts_->experts()) {
    auto column = std::find(names.begin(), names.end(), expert.name);
    if (column == names.end()) {
      throw Error(
          fmt::format(
              "Router: the scorer (model {}) has no predictions for expert \"{}\"; it knows: {}",
              scorer->version(), expert.name, fmt::join(names, ", ")),
          ErrorCode::IncompatibleModel);
    }
    loaded->score_column.push_back(static_cast<std::size_t>(column - names.begin()));
  }
  loaded->scorer = std::move(scorer);
  return loaded;
}

std::shared_ptr<const Router::LoadedScorer> Router::loaded() const {
  return std::atomic_load(&loaded_);
}

void Router::replace_scorer(std::shared_ptr<const Scorer> scorer) {
  std::atomic_store(&loaded_, load(std::move(scorer)));
}

std::shared_ptr<const Scorer> Router::current_scorer() const { return loaded()->scorer; }

void Router::set_decision_sink(DecisionSink sink) { decision_sink_ = std::move(sink); }

std::size_t Router::expert_index(std::string_view name) const {
  if (auto index = experts_->index_of(name)) return *index;
  throw Error(fmt::format("Router: unknown expert \"{}\"", name), ErrorCode::Misuse);
}

void Router::set_transport(std::string_view expert, Transport transport) {
  if (!transport.valid()) {
    throw Error(fmt::format("Router: transport for \"{}\" must set exactly one of call, "
                            "call_async, call_streaming, call_async_streaming",
                            expert),
                ErrorCode::Misuse);
  }
  transports_[expert_index(expert)] = std::move(transport);
}

void Router::set_enabled(std::string_view expert, bool enabled) {
  state_[expert_index(expert)].enabled = enabled;
}

bool Router::cooling_down(std::size_t expert, std::int64_t now_ns) const {
  return state_[expert].cooldown_until_ns.load(std::memory_order_relaxed) > now_ns;
}

ExpertStatus Router::status(std::string_view expert) const {
  const std::size_t i = expert_index(expert);
  const ExpertState& s = state_[i];
  ExpertStatus out;
  out.enabled = s.enabled;
  out.in_flight = s.in_flight;
  out.consecutive_failures = s.consecutive_failures;
  out.cooling_down = cooling_down(i, to_ns(Clock::now()));
  out.calls = s.calls;
  out.failures = s.failures;
  return out;
}

double Router::spent_usd() const { return store_->spent_usd(); }

std::size_t RouteDecision::eligible_count() const {
  std::size_t n = 0;
  while (n < candidates.size() && candidates[n].eligible()) ++n;
  return n;
}

const Candidate* RouteDecision::find(std::string_view name) const {
  for (const auto& c : candidates) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

RouteDecision Router::route(std::string_view prompt, const RouteOptions& options) const {
  RouteDecision decision;
  route_pooled(prompt, options, decision);
  return decision;
}

void Router::route(std::string_view prompt, const RouteOptions& options,
                   RouteDecision& decision) const {
  const auto current = loaded();
  // (A decision last used by a pooled route, or before a replace_scorer,
  // has no workspace for this scorer.)
  if (decision.scorer_ != current->scorer || !decision.workspace_) {
    decision.workspace_ = current->scorer->make_workspace();
    decision.scorer_ = current->scorer;
  }
  route_with(*current, prompt, options, decision, decision.workspace_.get());
}

void Router::route_pooled(std::string_view prompt, const RouteOptions& options,
                          RouteDecision& decision) const {
  const auto current = loaded();
  std::unique_ptr<ScorerWorkspace> workspace;
  {
    std::lock_guard<std::mutex> lock(current->idle_mutex);
    if (!current->idle_workspaces.empty()) {
      workspace = std::move(current->idle_workspaces.back());
      current->idle_workspaces.pop_back();
    }
  }
  if (!workspace) workspace = current->scorer->make_workspace();
  // Returned to its scorer's pool whether routing succeeds or throws.
  struct GiveBack {
    const LoadedScorer& owner;
    std::unique_ptr<ScorerWorkspace>& workspace;
    ~GiveBack() {
      if (!workspace) return;  // the scorer needs none
      std::lock_guard<std::mutex> lock(owner.idle_mutex);
      try {
        owner.idle_workspaces.push_back(std::move(workspace));
      } catch (...) {
        // Out of memory growing the pool: the workspace is freed instead.
      }
    }
  } give_back{*current, workspace};
  route_with(*current, prompt, options, decision, workspace.get());
}

std::string validate_exploration_options(const ExplorationOptions& options) {
  if (!(options.epsilon >= 0.0 && options.epsilon <= 1.0)) {
    return fmt::format("epsilon must be in [0, 1], got {}", options.epsilon);
  }
  if (!(options.max_cost_ratio >= 1.0)) {
    return fmt::format("max_cost_ratio must be >= 1 (or infinity), got {}", options.max_cost_ratio);
  }
  return {};
}

namespace {

// RouteDecision::expected_quality of a ranked decision.
double expected_pick_quality(const Scorer& scorer, const RouteDecision& decision) {
  const Candidate* pick = decision.pick();
  if (pick == nullptr) return std::numeric_limits<double>::quiet_NaN();
  const std::size_t eligible = decision.eligible_count();
  for (std::size_t i = 0; i < eligible; ++i) {
    // Picked for cost, a quality floor or exploration: no top pick, so none
    // of the top's selection bias.
    if (decision.candidates[i].predicted_quality > pick->predicted_quality)
      return pick->predicted_quality;
  }
  const double expected = scorer.top_pick_quality(pick->predicted_quality);
  return std::isfinite(expected) ? std::clamp(expected, 0.0, 1.0) : pick->predicted_quality;
}

}  // namespace

void Router::explore(const ExplorationOptions& options, RouteDecision& decision) const {
  auto& candidates = decision.candidates;
  const std::size_t eligible = decision.eligible_count();
  const double bound = candidates.front().cost_usd * options.max_cost_ratio;
  // The candidates exploration may pick: eligible, and within the cost bound
  // (the best always is).
  // (Without a bound, the ratio's infinity times a free best expert's cost
  // would be NaN and allow nothing.)
  const bool unbounded = std::isinf(options.max_cost_ratio);
  auto allowed = [&](std::size_t i) {
    return i == 0 || unbounded || candidates[i].cost_usd <= bound;
  };
  std::size_t count = 0;
  for (std::size_t i = 0; i < eligible; ++i) count += allowed(i) ? 1 : 0;
  double draw = 0;
  std::size_t nth = 0;
  {
    std::lock_guard<std::mutex> lock(explore_mutex_);
    if (!explore_seeded_) {
      explore_rng_.seed(options.seed != 0 ? options.seed : std::random_device{}());
      explore_seeded_ = true;
    }
    draw = std::uniform_real_distribution<double>(0.0, 1.0)(explore_rng_);
    nth = std::uniform_int_distribution<std::size_t>(0, count - 1)(explore_rng_);
  }
  const double each = options.epsilon / static_cast<double>(count);
  decision.propensity = 1.0 - options.epsilon + each;  // the best, unless explored away
  if (draw >= options.epsilon) return;
  std::size_t chosen = 0;
  for (std::size_t i = 0, seen = 0; i < eligible; ++i) {
    if (!allowed(i)) continue;
    if (seen++ == nth) {
      chosen = i;
      break;
    }
  }
  if (chosen == 0) return;
  std::rotate(candidates.begin(), candidates.begin() + static_cast<long>(chosen),
              candidates.begin() + static_cast<long>(chosen) + 1);
  decision.reason = PickReason::Explored;
  decision.propensity = each;
}

void Router::route_with(const LoadedScorer& loaded, std::string_view prompt,
                        const RouteOptions& options, RouteDecision& decision,
                        ScorerWorkspace* workspace) const {
  const std::shared_ptr<const Scorer>& scorer = loaded.scorer;
  if (auto problem = validate_policy_options(options.policy); !problem.empty()) {
    throw Error("RouteOptions.policy." + problem, ErrorCode::Misuse);
  }
  if (auto problem = validate_exploration_options(options.exploration); !problem.empty()) {
    throw Error("RouteOptions.exploration." + problem, ErrorCode::Misuse);
  }
  ScoreBatch& scores = decision.scores_;
  scorer->score(&prompt, 1, scores, workspace);
  const auto columns = static_cast<Eigen::Index>(scorer->expert_names().size());
  if (scores.quality.rows() != 1 || scores.quality.cols() != columns ||
      scores.output_tokens.rows() != 1 || scores.output_tokens.cols() != columns) {
    throw Error(fmt::format("Router: scorer {} returned {}x{} scores for 1 prompt and {} experts",
                            scorer->version(), scores.quality.rows(), scores.quality.cols(),
                            columns));
  }

  const std::size_t input_tokens =
      options.input_tokens > 0 ? options.input_tokens : estimate_tokens(prompt);
  const std::int64_t now_ns = to_ns(Clock::now());
  decision.candidates.resize(experts_->size());
  for (std::size_t i = 0; i < experts_->size(); ++i) {
    const ExpertSpec& expert = (*experts_)[i];
    const auto column = static_cast<Eigen::Index>(loaded.score_column[i]);
    const float quality = scores.quality(0, column);
    Candidate& c = decision.candidates[i];
    c.expert_index = i;
    c.name = expert.name;
    // A scorer's NaN must not win or poison the sort: it counts as 0.
    c.predicted_quality = std::isfinite(quality) ? std::clamp(quality, 0.0f, 1.0f) : 0.0f;
    c.predicted_output_tokens =
        cost_model_->output_tokens_or_default(scores.output_tokens(0, column));
    c.input_tokens = static_cast<double>(input_tokens);
    c.cost_usd = cost_model_->cost_usd(expert, c.input_tokens, c.predicted_output_tokens);
    c.latency_ms = cost_model_->latency_ms(expert, c.predicted_output_tokens);
    c.utility = 0.0;
    c.exclusion = !state_[i].enabled.load(std::memory_order_relaxed) ? Exclusion::Disabled
                  : cooling_down(i, now_ns)                          ? Exclusion::CoolingDown
                                                                     : Exclusion::None;
  }
  apply_constraints(decision.candidates, *experts_, options.policy);
  decision.reason = policy_->rank(decision.candidates, options.policy);
  decision.propensity = 1.0;
  if (options.exploration.epsilon > 0 && decision.reason != PickReason::NoneEligible) {
    explore(options.exploration, decision);
  }
  decision.expected_quality = expected_pick_quality(*scorer, decision);
  decision.policy = options.policy;
  // Compared first: a reused decision takes no reference counts.
  if (decision.registry_ != experts_) decision.registry_ = experts_;
  if (decision.policy_ != policy_) decision.policy_ = policy_;
  if (decision.scorer_ != scorer) {
    decision.workspace_.reset();  // made by another scorer (a pooled route's)
    decision.scorer_ = scorer;
  }
  decision.policy_name = policy_->name();
  decision.model_version = scorer->version();
  decision.input_tokens = input_tokens;
}

TOROUTER_END_NAMESPACE
