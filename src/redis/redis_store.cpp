// The Redis state store (see torouter/redis/redis_store.hpp): callers queue
// admissions, settlements and cooldowns; one thread of the store sends them
// to Redis in pipelined batches, reads the fleet's state back every
// `refresh`, and reconnects with backoff. While Redis cannot be reached,
// admissions are answered at once from an in-process store.
#include "torouter/redis/redis_store.hpp"

#include <fmt/format.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <iostream>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "../budget_window.hpp"
#include "redis_connection.hpp"
#include "redis_scripts.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE

using redis_detail::Command;
using redis_detail::RedisConnection;
using redis_detail::Reply;

namespace {

using std::chrono::milliseconds;

std::int64_t unix_ms(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(t.time_since_epoch()).count();
}

std::string number_text(double value) { return fmt::format("{:.17g}", value); }

double reply_number(const Reply& r) {
  if (r.type == Reply::Type::Integer) return static_cast<double>(r.integer);
  if (r.type != Reply::Type::Text) return 0.0;
  char* end = nullptr;
  const double v = std::strtod(r.text.c_str(), &end);
  return end == r.text.c_str() ? 0.0 : v;
}

// A budget's windows stay readable this long after they end, for
// settlements of calls that began inside them.
constexpr std::int64_t kBudgetGraceMs = 3'600'000;
// A minute's request and token counts outlive it by one more.
constexpr std::int64_t kRateTtlMs = 120'000;

}  // namespace

std::string validate_redis_store_options(const RedisStoreOptions& o) {
  try {
    redis_detail::parse_redis_url(o.url);
  } catch (const Error& e) {
    return fmt::format("url: {}", e.what());
  }
  if (o.key_prefix.empty() || o.key_prefix.find_first_of("{}") != std::string::npos) {
    return "key_prefix must be non-empty and hold no { or }";
  }
  for (const auto& [name, value] :
       {std::pair{"timeout", o.timeout}, std::pair{"call_expiry", o.call_expiry},
        std::pair{"refresh", o.refresh}, std::pair{"reconnect_min", o.reconnect_min},
        std::pair{"reconnect_max", o.reconnect_max}, std::pair{"capacity_poll", o.capacity_poll}}) {
    if (value.count() <= 0) return fmt::format("{} must be above 0", name);
  }
  if (o.reconnect_max < o.reconnect_min) return "reconnect_max must be >= reconnect_min";
  if (o.max_waiting == 0) return "max_waiting must be at least 1";
  return {};
}

class RedisStateStore::Impl {
 public:
  explicit Impl(RedisStoreOptions options)
      : options_(std::move(options)),
        address_(redis_detail::parse_redis_url(options_.url)),
        replica_(fmt::format("{:016x}",
                             std::random_device{}() * 0x100000000ull ^ std::random_device{}())) {
    if (!options_.on_event) {
      options_.on_event = [](const std::string& line) {
        std::cerr << "torouter redis: " << line << '\n';
      };
    }
  }

  ~Impl() { stop(); }

  void configure(const ExpertRegistry& experts, std::vector<BudgetRule> budgets) {
    if (thread_.joinable()) {
      throw Error("RedisStateStore: configured twice: a store serves one router",
                  ErrorCode::Misuse);
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      experts_ = experts.experts();
      rules_ = budgets;
      fleet_in_flight_.assign(experts_.size(), 0);
      reported_until_.assign(experts_.size(), 0);
      unpublished_until_.assign(experts_.size(), 0);
    }
    local_.configure(experts, std::move(budgets));
    try_connect();  // once, before the first call; the thread keeps trying
    thread_ = std::thread([this] { run(); });
  }

  // ------------------------------------------------------------ callers

  void admit(const Admission& a, std::function<void(const AdmissionResult&)> done) {
    std::unique_lock<std::mutex> lock(mutex_);
    const std::uint64_t ticket = next_ticket_++;
    if (!connected_ || stopping_ || waiting_admissions_ >= options_.max_waiting) {
      const std::string why =
          connected_ && !stopping_
              ? fmt::format("{} admissions already wait for redis", waiting_admissions_)
              : fmt::format("redis unreachable ({})", counters_.last_error);
      lock.unlock();
      return answer_locally(a, ticket, done, why);
    }
    Op op;
    op.kind = Op::Admit;
    op.admission = a;
    op.ticket = ticket;
    op.done = std::move(done);
    op.now_ms = unix_ms(std::chrono::system_clock::now());
    queue_.push_back(std::move(op));
    ++waiting_admissions_;
    wake_.notify_one();
  }

  void settle(const Settlement& s) {
    std::unique_lock<std::mutex> lock(mutex_);
    auto found = held_.find(s.ticket);
    if (found == held_.end()) return;  // settled already
    const Held held = found->second;
    held_.erase(found);
    own_spent_ += s.spent_usd;
    if (held.local) {
      lock.unlock();
      Settlement local = s;
      local.ticket = held.local_ticket;
      return local_.settle(local);
    }
    Op op;
    op.kind = Op::Settle;
    op.ticket = s.ticket;
    op.settlement = s;
    queue_.push_back(std::move(op));
    wake_.notify_one();
  }

  void publish_cooldown(std::size_t expert, std::chrono::system_clock::time_point until) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (expert >= experts_.size()) return;
    if (!connected_) {
      // Kept, the latest per expert, for when Redis is reached (at start, a
      // replica may route before its store has connected).
      unpublished_until_[expert] = std::max(unpublished_until_[expert], unix_ms(until));
      return;
    }
    queue_cooldown(expert, unix_ms(until));
  }

  // With `mutex_` held.
  void queue_cooldown(std::size_t expert, std::int64_t until_ms) {
    Op op;
    op.kind = Op::Cooldown;
    op.admission.expert = expert;
    op.now_ms = until_ms;
    queue_.push_back(std::move(op));
    wake_.notify_one();
  }

  void on_cooldown(CooldownListener listener) {
    std::lock_guard<std::mutex> lock(listener_mutex_);
    listener_ = std::move(listener);
  }

  int in_flight(std::size_t expert) const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!connected_) return local_.in_flight(expert);
    return expert < fleet_in_flight_.size() ? fleet_in_flight_[expert] : 0;
  }

  double spent_usd() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return fleet_spent_;
  }

  std::chrono::milliseconds capacity_poll() const { return options_.capacity_poll; }

  RedisStoreCounters counters() const {
    std::lock_guard<std::mutex> lock(mutex_);
    RedisStoreCounters c = counters_;
    c.connected = connected_;
    c.fleet_spent_usd = fleet_spent_;
    c.own_spent_usd = own_spent_;
    c.settlements_waiting = 0;
    for (const Op& op : queue_) c.settlements_waiting += op.kind == Op::Settle ? 1 : 0;
    return c;
  }

 private:
  struct Op {
    enum Kind { Admit, Settle, Cooldown } kind = Admit;
    Admission admission;  // Admit; Cooldown: `expert` only
    std::uint64_t ticket = 0;
    std::function<void(const AdmissionResult&)> done;
    Settlement settlement;
    std::int64_t now_ms = 0;  // Admit: when asked; Cooldown: until
  };
  // An admitted call: by Redis, or by the local store (its own ticket).
  struct Held {
    bool local = false;
    std::uint64_t local_ticket = 0;
  };

  std::string key(const std::string& part) const {
    return fmt::format("{{{}}}:{}", options_.key_prefix, part);
  }
  std::string call_ticket(std::uint64_t ticket) const {
    return fmt::format("{}:{}", replica_, ticket);
  }

  // Redis cannot answer (`why`): the local store answers, or, failing
  // closed, a paid call is refused.
  void answer_locally(const Admission& a, std::uint64_t ticket,
                      const std::function<void(const AdmissionResult&)>& done,
                      const std::string& why) {
    AdmissionResult r;
    if (options_.on_failure == RedisFailureMode::Closed && a.reserve_usd > 0) {
      r.outcome = AdmissionOutcome::Unavailable;
      r.detail = why + ", failing closed";
      std::lock_guard<std::mutex> lock(mutex_);
      ++counters_.refused_unavailable;
    } else {
      r = local_.admit_now(a);
      std::lock_guard<std::mutex> lock(mutex_);
      if (r.outcome == AdmissionOutcome::Admitted) {
        held_[ticket] = Held{true, r.ticket};
        ++counters_.admitted_local;
      }
      r.ticket = ticket;
    }
    done(r);
  }

  // ------------------------------------------------------------ the thread

  void run() {
    auto next_refresh = std::chrono::steady_clock::now();
    auto next_connect = next_refresh;
    milliseconds backoff = options_.reconnect_min;
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
      // Disconnected, only the next connection attempt is due.
      const auto wake_at = connection_ ? next_refresh : next_connect;
      wake_.wait_until(lock, wake_at,
                       [&] { return stopping_ || (connection_ && !queue_.empty()); });
      if (stopping_) break;
      lock.unlock();
      const auto now = std::chrono::steady_clock::now();
      if (!connection_ && now >= next_connect) {
        backoff =
            try_connect() ? options_.reconnect_min : std::min(backoff * 2, options_.reconnect_max);
        next_connect = now + backoff;
      }
      if (connection_) {
        const bool refresh = now >= next_refresh;
        if (refresh) next_refresh = now + options_.refresh;
        send_batch(refresh);
      }
      lock.lock();
    }
    lock.unlock();
    if (connection_) send_batch(false);  // the last settlements, best effort
    answer_waiting_locally();
  }

  bool try_connect() {
    try {
      auto connection = std::make_unique<RedisConnection>(address_, options_.timeout);
      scripts_.admit = connection->load_script(redis_detail::kAdmitScript);
      scripts_.settle = connection->load_script(redis_detail::kSettleScript);
      scripts_.reclaim = connection->load_script(redis_detail::kReclaimScript);
      scripts_.cooldown = connection->load_script(redis_detail::kCooldownScript);
      connection_ = std::move(connection);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        connected_ = true;
        ++counters_.connects;
        const std::int64_t now = unix_ms(std::chrono::system_clock::now());
        for (std::size_t e = 0; e < unpublished_until_.size(); ++e) {
          if (unpublished_until_[e] > now) queue_cooldown(e, unpublished_until_[e]);
          unpublished_until_[e] = 0;
        }
      }
      options_.on_event(fmt::format("connected to {}:{} (prefix {})", address_.host, address_.port,
                                    options_.key_prefix));
      return true;
    } catch (const Error& e) {
      lose(e.what());
      return false;
    }
  }

  // The connection failed: from now on admissions are answered locally,
  // those waiting for it too.
  void lose(const std::string& why) {
    connection_.reset();
    bool was_connected = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      was_connected = connected_;
      connected_ = false;
      counters_.last_error = why;
      ++counters_.disconnects;
    }
    if (was_connected || counters().disconnects == 1) {
      options_.on_event(fmt::format("{}; {} until it is back", why,
                                    options_.on_failure == RedisFailureMode::Open
                                        ? "failing open (local state)"
                                        : "failing closed (paid calls refused)"));
    }
    answer_waiting_locally();
  }

  // Queued admissions when Redis is lost or the store stops: answered locally.
  void answer_waiting_locally() {
    std::deque<Op> admissions;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = queue_.begin(); it != queue_.end();) {
        if (it->kind != Op::Admit) {
          ++it;
          continue;
        }
        admissions.push_back(std::move(*it));
        it = queue_.erase(it);
        --waiting_admissions_;
      }
    }
    const std::string why = fmt::format("redis unreachable ({})", counters().last_error);
    for (Op& op : admissions) answer_locally(op.admission, op.ticket, op.done, why);
  }

  // One round trip: every queued operation, and the fleet's state when due.
  void send_batch(bool refresh) {
    std::deque<Op> batch;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      batch.swap(queue_);
      waiting_admissions_ = 0;
    }
    std::vector<Command> commands;
    for (const Op& op : batch) commands.push_back(command_for(op));
    const std::size_t state_at = commands.size();
    if (refresh) append_state_commands(commands);
    if (commands.empty()) return;
    std::vector<Reply> replies;
    try {
      replies = connection_->run(commands);
    } catch (const Error& e) {
      return requeue_after_loss(std::move(batch), e.what());
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++counters_.round_trips;
    }
    // An operation Redis refused (NOSCRIPT after a flush, OOM, LOADING,
    // READONLY...) is not lost: the batch goes as if the connection had,
    // and the reconnection (scripts loaded again) resends its settlements.
    for (const Reply& reply : replies) {
      if (reply.error()) {
        return requeue_after_loss(std::move(batch),
                                  fmt::format("redis refused a command: {}", reply.text));
      }
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (batch[i].kind == Op::Admit) batch[i].done(admission_result(batch[i], replies[i]));
    }
    if (refresh) read_state(replies, state_at);
  }

  // Redis was lost mid-batch: settlements wait for it (they settle once, by
  // ticket, so resending is safe); admissions are answered locally, and
  // since Redis may have applied one whose reply was lost, each is also
  // given back there (a settlement of nothing, which does nothing when it
  // was not applied).
  void requeue_after_loss(std::deque<Op> batch, const std::string& why) {
    std::deque<Op> admissions;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (Op& op : batch) {
        if (op.kind == Op::Settle) queue_.push_front(std::move(op));
        if (op.kind != Op::Admit) continue;
        Op give_back;
        give_back.kind = Op::Settle;
        give_back.ticket = op.ticket;
        give_back.settlement.ticket = op.ticket;
        give_back.settlement.expert = op.admission.expert;
        queue_.push_front(std::move(give_back));
        admissions.push_back(std::move(op));
      }
    }
    lose(why);
    for (Op& op : admissions) answer_locally(op.admission, op.ticket, op.done, why);
  }

  Command command_for(const Op& op) const {
    switch (op.kind) {
      case Op::Admit:
        return admit_command(op);
      case Op::Settle:
        return {"EVALSHA",
                scripts_.settle,
                "4",
                key("held"),
                key("call:" + call_ticket(op.ticket)),
                key("spent"),
                key("given-back:" + call_ticket(op.ticket)),
                call_ticket(op.ticket),
                number_text(op.settlement.spent_usd),
                number_text(op.settlement.used_tokens),
                std::to_string(op.settlement.extra_requests),
                std::to_string(2 * options_.call_expiry.count())};
      case Op::Cooldown: {
        const std::string& name = experts_[op.admission.expert].name;
        return {"EVALSHA",
                scripts_.cooldown,
                "1",
                key("cooldown:" + name),
                std::to_string(op.now_ms),
                std::to_string(unix_ms(std::chrono::system_clock::now()))};
      }
    }
    return {};
  }

  // The budget rules covering a call to `expert`, in key order.
  std::vector<const BudgetRule*> covering(std::size_t expert) const {
    std::vector<const BudgetRule*> out;
    for (const BudgetRule& rule : rules_) {
      if (rule.covers(experts_[expert])) out.push_back(&rule);
    }
    return out;
  }

  Command admit_command(const Op& op) const {
    const Admission& a = op.admission;
    const ExpertSpec& spec = experts_[a.expert];
    const std::string minute = std::to_string(detail::window_id(BudgetWindow::Minute, op.now_ms));
    Command keys{key("held"), key("call:" + call_ticket(op.ticket)), key("inflight:" + spec.name),
                 key("rate:" + spec.name + ":" + minute),
                 key("given-back:" + call_ticket(op.ticket))};
    Command limits;
    for (const BudgetRule* rule : covering(a.expert)) {
      const std::int64_t window = detail::window_id(rule->window, op.now_ms);
      keys.push_back(key(fmt::format("budget:{}:{}:{}:{}", to_string(rule->window),
                                     rule->expert.empty() ? "*" : rule->expert,
                                     rule->tag.empty() ? "*" : rule->tag, window)));
      limits.push_back(number_text(rule->limit_usd));
      limits.push_back(
          rule->window == BudgetWindow::Lifetime
              ? "0"
              : std::to_string(detail::window_end_ms(rule->window, window) + kBudgetGraceMs));
    }
    Command c{"EVALSHA", scripts_.admit, std::to_string(keys.size())};
    c.insert(c.end(), keys.begin(), keys.end());
    const Command args{call_ticket(op.ticket),
                       std::to_string(op.now_ms + options_.call_expiry.count()),
                       number_text(a.reserve_usd),
                       number_text(a.reserve_tokens),
                       std::to_string(spec.max_concurrent_calls),
                       std::to_string(spec.requests_per_minute),
                       std::to_string(spec.tokens_per_minute),
                       a.ignore_budgets ? "1" : "0",
                       std::to_string(kRateTtlMs)};
    c.insert(c.end(), args.begin(), args.end());
    c.insert(c.end(), limits.begin(), limits.end());
    return c;
  }

  AdmissionResult admission_result(const Op& op, const Reply& reply) {
    AdmissionResult r;
    r.ticket = op.ticket;
    const auto& e = reply.elements;
    const std::string outcome = e.empty() ? "" : e[0].text;
    const ExpertSpec& spec = experts_[op.admission.expert];
    if (outcome == "admitted") {
      std::lock_guard<std::mutex> lock(mutex_);
      held_[op.ticket] = Held{};
      ++counters_.admitted_shared;
    } else if (outcome == "over_budget" && e.size() == 4) {
      const auto rules = covering(op.admission.expert);
      const auto i = static_cast<std::size_t>(reply_number(e[1])) - 1;
      r.outcome = AdmissionOutcome::OverBudget;
      r.detail = fmt::format("budget {} (fleet): ${:.6g} spent and ${:.6g} reserved, ${:.6g} asked",
                             i < rules.size() ? rules[i]->describe() : "?", reply_number(e[2]),
                             reply_number(e[3]), op.admission.reserve_usd);
    } else if (outcome == "at_capacity") {
      r.outcome = AdmissionOutcome::AtCapacity;
      r.detail =
          fmt::format("at its concurrency cap of {} across the fleet", spec.max_concurrent_calls);
    } else if (outcome == "rate_limited" && e.size() == 3) {
      r.outcome = AdmissionOutcome::RateLimited;
      r.detail = e[1].text == "requests"
                     ? fmt::format("{} requests this minute across the fleet, its limit",
                                   spec.requests_per_minute)
                     : fmt::format("{:.0f} of its {} tokens this minute used across the fleet",
                                   reply_number(e[2]), spec.tokens_per_minute);
    } else {
      r.outcome = AdmissionOutcome::Unavailable;
      r.detail = "redis gave an admission reply this store does not know";
    }
    return r;
  }

  // GET spent, MGET every cooldown, MGET every in-flight count, and a
  // reclaim of calls past their expiry.
  void append_state_commands(std::vector<Command>& commands) const {
    Command cooldowns{"MGET"}, in_flight{"MGET"};
    for (const ExpertSpec& spec : experts_) {
      cooldowns.push_back(key("cooldown:" + spec.name));
      in_flight.push_back(key("inflight:" + spec.name));
    }
    commands.push_back({"GET", key("spent")});
    commands.push_back(std::move(cooldowns));
    commands.push_back(std::move(in_flight));
    commands.push_back({"EVALSHA", scripts_.reclaim, "1", key("held"),
                        std::to_string(unix_ms(std::chrono::system_clock::now())), "100"});
  }

  void read_state(const std::vector<Reply>& replies, std::size_t at) {
    const std::int64_t now = unix_ms(std::chrono::system_clock::now());
    std::vector<std::pair<std::size_t, std::int64_t>> cooled;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fleet_spent_ = reply_number(replies[at]);
      const auto& cooldowns = replies[at + 1].elements;
      const auto& in_flight = replies[at + 2].elements;
      for (std::size_t e = 0; e < experts_.size(); ++e) {
        if (e < in_flight.size())
          fleet_in_flight_[e] = static_cast<int>(reply_number(in_flight[e]));
        const auto until =
            e < cooldowns.size() ? static_cast<std::int64_t>(reply_number(cooldowns[e])) : 0;
        if (until > now && until > reported_until_[e]) {
          reported_until_[e] = until;
          cooled.emplace_back(e, until);
        }
      }
      counters_.reclaimed += static_cast<std::uint64_t>(reply_number(replies[at + 3]));
    }
    std::lock_guard<std::mutex> lock(listener_mutex_);
    for (const auto& [expert, until] : cooled) {
      if (listener_) listener_(expert, std::chrono::system_clock::time_point(milliseconds(until)));
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  RedisStoreOptions options_;
  const redis_detail::RedisAddress address_;
  const std::string replica_;  // makes this store's tickets unique in the fleet
  InProcessStateStore local_;
  std::thread thread_;
  // Only the thread uses these (and configure, before it starts).
  std::unique_ptr<RedisConnection> connection_;
  struct {
    std::string admit, settle, reclaim, cooldown;
  } scripts_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  bool connected_ = false;
  std::deque<Op> queue_;
  std::size_t waiting_admissions_ = 0;
  std::uint64_t next_ticket_ = 1;
  std::unordered_map<std::uint64_t, Held> held_;
  std::vector<ExpertSpec> experts_;
  std::vector<BudgetRule> rules_;
  std::vector<int> fleet_in_flight_;
  std::vector<std::int64_t> reported_until_;
  // Cooldowns published while Redis was unreachable (unix ms, 0: none).
  std::vector<std::int64_t> unpublished_until_;
  double fleet_spent_ = 0.0;
  double own_spent_ = 0.0;
  RedisStoreCounters counters_;

  std::mutex listener_mutex_;
  CooldownListener listener_;
};

RedisStateStore::RedisStateStore(RedisStoreOptions options) {
  if (auto problem = validate_redis_store_options(options); !problem.empty()) {
    throw Error("RedisStoreOptions." + problem, ErrorCode::Misuse);
  }
  impl_ = std::make_unique<Impl>(std::move(options));
}

RedisStateStore::~RedisStateStore() = default;

void RedisStateStore::configure(const ExpertRegistry& experts, std::vector<BudgetRule> budgets) {
  impl_->configure(experts, std::move(budgets));
}
void RedisStateStore::admit(const Admission& admission,
                            std::function<void(const AdmissionResult&)> done) {
  impl_->admit(admission, std::move(done));
}
void RedisStateStore::settle(const Settlement& settlement) { impl_->settle(settlement); }
void RedisStateStore::publish_cooldown(std::size_t expert,
                                       std::chrono::system_clock::time_point until) {
  impl_->publish_cooldown(expert, until);
}
void RedisStateStore::on_cooldown(CooldownListener listener) {
  impl_->on_cooldown(std::move(listener));
}
int RedisStateStore::in_flight(std::size_t expert) const { return impl_->in_flight(expert); }
double RedisStateStore::spent_usd() const { return impl_->spent_usd(); }
std::chrono::milliseconds RedisStateStore::capacity_poll() const { return impl_->capacity_poll(); }
RedisStoreCounters RedisStateStore::counters() const { return impl_->counters(); }

TOROUTER_END_NAMESPACE
