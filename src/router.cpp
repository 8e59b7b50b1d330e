#include "torouter/router.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <thread>
#include <utility>

#include "torouter/error.hpp"

namespace torouter {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::int64_t to_ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

milliseconds elapsed_ms(Clock::time_point since) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - since);
}

// Shared between an invoke waiting on an asynchronous transport and the
// transport's completion callback, which may run after the invoke gave up.
struct AsyncCompletion {
  std::mutex mutex;
  std::condition_variable done_signal;
  bool done = false;
  Response response;
};

}  // namespace

struct Router::ExpertState {
  std::atomic<bool> enabled{true};
  std::atomic<int> in_flight{0};
  std::atomic<int> consecutive_failures{0};
  std::atomic<std::int64_t> cooldown_until_ns{0};
  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> failures{0};
};

// Spend is settled under a mutex: invoke is not the allocation-free hot path
// (route is), and a reservation must be checked and taken as one step so
// concurrent invokes cannot overspend a hard budget.
struct Router::Budget {
  std::mutex mutex;
  double limit = 0;
  double spent = 0;
  double reserved = 0;

  bool try_reserve(double amount) {
    std::lock_guard<std::mutex> lock(mutex);
    if (spent + reserved + amount > limit) return false;
    reserved += amount;
    return true;
  }
  void force_reserve(double amount) {
    std::lock_guard<std::mutex> lock(mutex);
    reserved += amount;
  }
  void settle(double reservation, double actual) {
    std::lock_guard<std::mutex> lock(mutex);
    reserved -= reservation;
    spent += actual;
  }
};

Router::Router(ExpertRegistry experts, std::shared_ptr<const Scorer> scorer,
               std::shared_ptr<const Policy> policy, RouterOptions options)
    : experts_(std::move(experts)),
      scorer_(std::move(scorer)),
      policy_(policy ? std::move(policy) : std::make_shared<UtilityPolicy>()),
      options_(std::move(options)),
      cost_model_(options_.cost_model),
      state_(new ExpertState[experts_.size()]),
      budget_(new Budget) {
  if (!scorer_) throw Error("Router: scorer is null");
  if (experts_.empty()) throw Error("Router: the expert registry is empty");
  if (options_.max_attempts_per_expert < 1) {
    throw Error("RouterOptions.max_attempts_per_expert must be >= 1");
  }
  if (options_.max_experts_tried < 1) throw Error("RouterOptions.max_experts_tried must be >= 1");
  if (options_.failures_before_cooldown < 1) {
    throw Error("RouterOptions.failures_before_cooldown must be >= 1");
  }
  if (!(options_.budget_usd >= 0)) throw Error("RouterOptions.budget_usd must be >= 0");
  budget_->limit = options_.budget_usd;

  const auto& names = scorer_->expert_names();
  for (const auto& expert : experts_.experts()) {
    auto column = std::find(names.begin(), names.end(), expert.name);
    if (column == names.end()) {
      throw Error(fmt::format(
          "Router: the scorer (model {}) has no predictions for expert \"{}\"; it knows: {}",
          scorer_->version(), expert.name, fmt::join(names, ", ")));
    }
    score_column_.push_back(static_cast<std::size_t>(column - names.begin()));
  }
  for (std::size_t i = 0; i < experts_.size(); ++i) state_[i].enabled = experts_[i].enabled;
  transports_.resize(experts_.size());
}

Router::~Router() = default;

std::size_t Router::expert_index(std::string_view name) const {
  if (auto index = experts_.index_of(name)) return *index;
  throw Error(fmt::format("Router: unknown expert \"{}\"", name));
}

void Router::set_transport(std::string_view expert, Transport transport) {
  if (!transport.valid()) {
    throw Error(fmt::format("Router: transport for \"{}\" must set exactly one of call, "
                            "call_async, call_streaming",
                            expert));
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

double Router::spent_usd() const {
  std::lock_guard<std::mutex> lock(budget_->mutex);
  return budget_->spent;
}

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
  if (decision.workspace_owner_ != scorer_.get()) {
    decision.workspace_ = scorer_->make_workspace();
    decision.workspace_owner_ = scorer_.get();
  }
  route_with(prompt, options, decision, decision.workspace_.get());
}

void Router::route_pooled(std::string_view prompt, const RouteOptions& options,
                          RouteDecision& decision) const {
  std::unique_ptr<ScorerWorkspace> workspace;
  {
    std::lock_guard<std::mutex> lock(idle_workspaces_mutex_);
    if (!idle_workspaces_.empty()) {
      workspace = std::move(idle_workspaces_.back());
      idle_workspaces_.pop_back();
    }
  }
  if (!workspace) workspace = scorer_->make_workspace();
  // Returned to the pool whether routing succeeds or throws.
  struct GiveBack {
    const Router& router;
    std::unique_ptr<ScorerWorkspace>& workspace;
    ~GiveBack() {
      if (!workspace) return;  // the scorer needs none
      std::lock_guard<std::mutex> lock(router.idle_workspaces_mutex_);
      try {
        router.idle_workspaces_.push_back(std::move(workspace));
      } catch (...) {
        // Out of memory growing the pool: the workspace is freed instead.
      }
    }
  } give_back{*this, workspace};
  route_with(prompt, options, decision, workspace.get());
}

void Router::route_with(std::string_view prompt, const RouteOptions& options,
                        RouteDecision& decision, ScorerWorkspace* workspace) const {
  if (auto problem = validate_policy_options(options.policy); !problem.empty()) {
    throw Error("RouteOptions.policy." + problem);
  }
  ScoreBatch& scores = decision.scores_;
  scorer_->score(&prompt, 1, scores, workspace);
  const auto columns = static_cast<Eigen::Index>(scorer_->expert_names().size());
  if (scores.quality.rows() != 1 || scores.quality.cols() != columns ||
      scores.output_tokens.rows() != 1 || scores.output_tokens.cols() != columns) {
    throw Error(fmt::format("Router: scorer {} returned {}x{} scores for 1 prompt and {} experts",
                            scorer_->version(), scores.quality.rows(), scores.quality.cols(),
                            columns));
  }

  const std::size_t input_tokens =
      options.input_tokens > 0 ? options.input_tokens : estimate_tokens(prompt);
  const std::int64_t now_ns = to_ns(Clock::now());
  decision.candidates.resize(experts_.size());
  for (std::size_t i = 0; i < experts_.size(); ++i) {
    const ExpertSpec& expert = experts_[i];
    const auto column = static_cast<Eigen::Index>(score_column_[i]);
    const float quality = scores.quality(0, column);
    Candidate& c = decision.candidates[i];
    c.expert_index = i;
    c.name = expert.name;
    // A scorer's NaN must not win or poison the sort: it counts as 0.
    c.predicted_quality = std::isfinite(quality) ? std::clamp(quality, 0.0f, 1.0f) : 0.0f;
    c.predicted_output_tokens = cost_model_.output_tokens_or_default(scores.output_tokens(0, column));
    c.input_tokens = static_cast<double>(input_tokens);
    c.cost_usd = cost_model_.cost_usd(expert, c.input_tokens, c.predicted_output_tokens);
    c.latency_ms = cost_model_.latency_ms(expert, c.predicted_output_tokens);
    c.utility = 0.0;
    c.exclusion = !state_[i].enabled.load(std::memory_order_relaxed) ? Exclusion::Disabled
                  : cooling_down(i, now_ns)                            ? Exclusion::CoolingDown
                                                                       : Exclusion::None;
  }
  apply_constraints(decision.candidates, experts_, options.policy);
  decision.reason = policy_->rank(decision.candidates, options.policy);
  decision.policy = options.policy;
  decision.policy_name = policy_->name();
  decision.model_version = scorer_->version();
  decision.input_tokens = input_tokens;
}

// One invoke: walks the ranked candidates, calls each through its transport
// with retries, and writes the trace and outcome into the result.
class Router::InvokeRun {
 public:
  InvokeRun(Router& router, std::string_view prompt, const InvokeOptions& options,
            InvokeResult& result)
      : router_(router),
        options_(router.options_),
        prompt_(prompt),
        invoke_options_(options),
        result_(result),
        deadline_(Clock::now() + options_.invoke_timeout) {}

  void run() {
    const RouteDecision& decision = result_.decision;
    for (const auto& c : decision.candidates) {
      if (c.eligible()) order_.push_back(&c);
    }
    if (order_.empty()) {
      // A cooldown steers traffic away from a failing expert; it must not
      // refuse a request that only cooling experts could serve. They are
      // tried, best first, as a last resort.
      for (const auto& c : decision.candidates) {
        if (c.exclusion == Exclusion::CoolingDown) order_.push_back(&c);
      }
      result_.last_resort = !order_.empty();
    }
    if (order_.empty()) {
      fail(InvokeError::NoEligibleExpert, describe_exclusions());
      return;
    }
    const std::size_t eligible = order_.size();
    std::vector<bool> settled(eligible, false);
    std::vector<bool> over_budget(eligible, false);
    std::vector<bool> capacity_noted(eligible, false);
    std::size_t experts_called = 0;
    const auto capacity_deadline = Clock::now() + options_.capacity_wait;

    for (;;) {
      bool waiting_for_capacity = false;
      for (std::size_t k = 0; k < eligible && experts_called < options_.max_experts_tried; ++k) {
        if (settled[k]) continue;
        const Candidate& c = *order_[k];
        if (const char* why = unusable(c.expert_index)) {
          skip(c, why);
          settled[k] = true;
          continue;
        }
        double reservation = c.cost_usd;
        if (!router_.budget_->try_reserve(reservation)) {
          skip(c, fmt::format("over budget: predicted ${:.6g}, {} mode",
                              c.cost_usd, options_.budget_mode == BudgetMode::Refuse
                                              ? "refuse" : "downgrade"));
          settled[k] = over_budget[k] = true;
          continue;
        }
        if (!acquire_slot(c.expert_index)) {
          router_.budget_->settle(reservation, 0.0);
          if (!capacity_noted[k]) skip(c, "at its concurrency cap");
          capacity_noted[k] = true;
          waiting_for_capacity = true;
          continue;
        }
        settled[k] = true;
        ++experts_called;
        if (call_with_retries(c, reservation)) return;
        if (result_.error == InvokeError::StreamBroken) return;
        if (out_of_time_ || Clock::now() >= deadline_) {
          fail(InvokeError::Timeout, fmt::format("invoke_timeout of {} ms passed",
                                                 options_.invoke_timeout.count()));
          return;
        }
      }
      if (!waiting_for_capacity || experts_called >= options_.max_experts_tried) break;
      if (Clock::now() >= capacity_deadline || Clock::now() >= deadline_) break;
      std::this_thread::sleep_for(milliseconds(1));
    }

    if (experts_called == 0 && options_.budget_mode == BudgetMode::Downgrade) {
      // Soft budget: past it, the cheapest eligible expert still answers.
      const Candidate* cheapest = nullptr;
      for (std::size_t k = 0; k < eligible; ++k) {
        const Candidate& c = *order_[k];
        if (over_budget[k] && (!cheapest || c.cost_usd < cheapest->cost_usd)) cheapest = &c;
      }
      if (cheapest && acquire_slot(cheapest->expert_index)) {
        router_.budget_->force_reserve(cheapest->cost_usd);
        ++experts_called;
        if (call_with_retries(*cheapest, cheapest->cost_usd)) return;
        if (result_.error == InvokeError::StreamBroken) return;
      }
    }

    if (experts_called > 0) {
      fail(InvokeError::AllFailed,
           fmt::format("all {} expert(s) tried failed; see the attempts", experts_called));
    } else if (std::find(over_budget.begin(), over_budget.end(), true) != over_budget.end()) {
      fail(InvokeError::BudgetExhausted,
           fmt::format("budget of ${:.6g} does not cover any eligible expert (spent ${:.6g})",
                       options_.budget_usd, router_.spent_usd()));
    } else if (std::find(capacity_noted.begin(), capacity_noted.end(), true) !=
               capacity_noted.end()) {
      fail(InvokeError::AtCapacity,
           fmt::format("every eligible expert stayed at its concurrency cap for {} ms",
                       options_.capacity_wait.count()));
    } else {
      fail(InvokeError::AllFailed, "no eligible expert could be called; see the attempts");
    }
  }

 private:
  // Why expert `i` cannot be called now, or nullptr. Routing checked the
  // same, but another thread may have disabled it or made it cool down since.
  const char* unusable(std::size_t i) const {
    if (!router_.state_[i].enabled.load()) return "disabled";
    if (!result_.last_resort && router_.cooling_down(i, to_ns(Clock::now()))) return "cooling down";
    if (!router_.transports_[i].valid()) return "no transport set";
    return nullptr;
  }

  bool acquire_slot(std::size_t i) {
    const std::size_t cap = router_.experts_[i].max_concurrent_calls;
    auto& in_flight = router_.state_[i].in_flight;
    if (cap == 0) {
      in_flight.fetch_add(1);
      return true;
    }
    int current = in_flight.load();
    while (current < static_cast<int>(cap)) {
      if (in_flight.compare_exchange_weak(current, current + 1)) return true;
    }
    return false;
  }

  // Calls candidate `c` up to max_attempts_per_expert times; true when it
  // answered. Releases the concurrency slot and the budget reservation.
  bool call_with_retries(const Candidate& c, double reservation) {
    const std::size_t i = c.expert_index;
    ExpertState& state = router_.state_[i];
    const ExpertSpec& spec = router_.experts_[i];
    struct SlotGuard {
      std::atomic<int>& in_flight;
      ~SlotGuard() { in_flight.fetch_sub(1); }
    } slot{state.in_flight};

    milliseconds backoff = options_.initial_backoff;
    Response last;
    for (int number = 1; number <= options_.max_attempts_per_expert; ++number) {
      milliseconds wait{0};
      if (number > 1) {
        if (last.failure == FailureKind::RateLimited && last.retry_after.count() > 0) {
          if (last.retry_after > options_.max_retry_after) break;  // fail over instead
          wait = last.retry_after;
        } else {
          wait = backoff;
          backoff = std::min(options_.max_backoff,
                             milliseconds(static_cast<milliseconds::rep>(
                                 static_cast<double>(backoff.count()) *
                                 options_.backoff_multiplier)));
        }
        if (Clock::now() + wait >= deadline_) {
          out_of_time_ = true;
          break;
        }
        std::this_thread::sleep_for(wait);
      }
      const auto remaining = std::chrono::duration_cast<milliseconds>(deadline_ - Clock::now());
      if (remaining.count() <= 0) {
        out_of_time_ = true;
        break;
      }

      Request request;
      request.expert = spec.name;
      request.prompt = std::string(prompt_);
      request.max_output_tokens = invoke_options_.max_output_tokens;
      request.timeout = std::min(options_.attempt_timeout, remaining);
      request.attempt = number;
      request.context = &invoke_options_.context;

      const auto start = Clock::now();
      bool chunks_delivered = false;
      Response response = call_transport(router_.transports_[i], request, chunks_delivered);
      Attempt attempt;
      attempt.expert = spec.name;
      attempt.number = number;
      attempt.waited = wait;
      attempt.latency = elapsed_ms(start);
      state.calls.fetch_add(1);

      if (response.ok()) {
        state.consecutive_failures.store(0);
        const double input = response.input_tokens > 0
                                 ? static_cast<double>(response.input_tokens)
                                 : static_cast<double>(result_.decision.input_tokens);
        const double output = response.output_tokens > 0
                                  ? static_cast<double>(response.output_tokens)
                                  : static_cast<double>(estimate_tokens(response.text));
        const double cost = router_.cost_model_.cost_usd(spec, input, output);
        router_.budget_->settle(reservation, cost);
        attempt.outcome = AttemptOutcome::Answered;
        attempt.cost_usd = cost;
        result_.attempts.push_back(std::move(attempt));
        if (invoke_options_.on_chunk && !chunks_delivered) invoke_options_.on_chunk(response.text);
        result_.expert = spec.name;
        result_.cost_usd = cost;
        result_.response = std::move(response);
        result_.error = InvokeError::None;
        result_.error_message.clear();
        return true;
      }

      state.failures.fetch_add(1);
      attempt.outcome = AttemptOutcome::Failed;
      attempt.failure = response.failure;
      attempt.detail = response.error_message;
      result_.attempts.push_back(std::move(attempt));
      const bool cooled = note_failure(i);
      if (chunks_delivered) {
        router_.budget_->settle(reservation, 0.0);
        result_.response = std::move(response);
        fail(InvokeError::StreamBroken,
             fmt::format("\"{}\" failed ({}) after its answer had started streaming", spec.name,
                         to_string(result_.response.failure)));
        return false;
      }
      last = std::move(response);
      if (cooled || !is_retryable(last.failure)) break;
    }
    router_.budget_->settle(reservation, 0.0);
    return false;
  }

  // Counts a failure in a row; true when it sent the expert to cool down.
  bool note_failure(std::size_t i) {
    ExpertState& state = router_.state_[i];
    const int in_a_row = state.consecutive_failures.fetch_add(1) + 1;
    if (in_a_row < options_.failures_before_cooldown) return false;
    state.consecutive_failures.store(0);
    state.cooldown_until_ns.store(to_ns(Clock::now() + options_.cooldown));
    return true;
  }

  Response call_transport(const Transport& transport, const Request& request,
                          bool& chunks_delivered) {
    try {
      if (transport.call) return transport.call(request);
      if (transport.call_streaming) return call_streaming(transport, request, chunks_delivered);
      return call_async(transport, request);
    } catch (const std::exception& e) {
      return Response::failed(FailureKind::TransportError,
                              fmt::format("transport threw: {}", e.what()));
    } catch (...) {
      return Response::failed(FailureKind::TransportError, "transport threw a non-exception");
    }
  }

  Response call_streaming(const Transport& transport, const Request& request,
                          bool& chunks_delivered) {
    std::string joined;
    const ChunkCallback& user = invoke_options_.on_chunk;
    Response response = transport.call_streaming(request, [&](std::string_view chunk) {
      joined.append(chunk);
      if (user) {
        chunks_delivered = true;
        user(chunk);
      }
    });
    if (response.ok() && response.text.empty()) response.text = std::move(joined);
    return response;
  }

  static Response call_async(const Transport& transport, const Request& request) {
    auto completion = std::make_shared<AsyncCompletion>();
    transport.call_async(request, [completion](Response response) {
      std::lock_guard<std::mutex> lock(completion->mutex);
      if (completion->done) return;  // a second completion is ignored
      completion->response = std::move(response);
      completion->done = true;
      completion->done_signal.notify_all();
    });
    std::unique_lock<std::mutex> lock(completion->mutex);
    if (!completion->done_signal.wait_for(lock, request.timeout, [&] { return completion->done; })) {
      // The late completion, if it ever comes, lands in `completion` and is dropped.
      return Response::failed(FailureKind::Timeout,
                              fmt::format("no completion within {} ms", request.timeout.count()));
    }
    return std::move(completion->response);
  }

  void skip(const Candidate& c, std::string why) {
    Attempt attempt;
    attempt.expert = std::string(c.name);
    attempt.outcome = AttemptOutcome::Skipped;
    attempt.detail = std::move(why);
    result_.attempts.push_back(std::move(attempt));
  }

  void fail(InvokeError error, std::string message) {
    result_.error = error;
    result_.error_message = std::move(message);
  }

  std::string describe_exclusions() const {
    std::string out = "no expert passes the constraints:";
    for (const auto& c : result_.decision.candidates) {
      out += fmt::format(" {} ({});", c.name, to_string(c.exclusion));
    }
    out.pop_back();
    return out;
  }

  Router& router_;
  const RouterOptions& options_;
  std::string_view prompt_;
  const InvokeOptions& invoke_options_;
  InvokeResult& result_;
  Clock::time_point deadline_;
  // The candidates to try, in order.
  std::vector<const Candidate*> order_;
  // Set when a retry was given up because the invoke's deadline came first.
  bool out_of_time_ = false;
};

InvokeResult Router::invoke(std::string_view prompt, const InvokeOptions& options) {
  InvokeResult result;
  if (options.max_output_tokens > 0 && options.route.policy.max_output_tokens == 0) {
    // The context window must hold what the call will reserve.
    RouteOptions route = options.route;
    route.policy.max_output_tokens = options.max_output_tokens;
    route_pooled(prompt, route, result.decision);
  } else {
    route_pooled(prompt, options.route, result.decision);
  }
  InvokeRun(*this, prompt, options, result).run();
  return result;
}

}  // namespace torouter
