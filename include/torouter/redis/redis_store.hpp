// torouter/redis/redis_store.hpp: a state store shared by a fleet of
// routers through Redis (issue 13), the optional component torouter::redis
// (`find_package(torouter COMPONENTS redis)`), on hiredis.
//
// Every replica that points at the same Redis and key prefix shares its
// budgets, concurrency caps, request and token rates, spend and cooldowns:
//
//   torouter::RedisStoreOptions redis;
//   redis.url = "redis://127.0.0.1:6379/0";
//   redis.key_prefix = "prod-router";
//   torouter::RouterOptions options;
//   options.budget_usd = 100;  // for the whole fleet
//   options.state_store = std::make_shared<torouter::RedisStateStore>(redis);
//   torouter::Router router(experts, scorer, nullptr, options);
//
// A call takes one round trip before it (admission: every budget, the slot
// and the rates in one Lua script) and one after it (settlement). The store
// talks to Redis from a thread of its own, pipelining what callers queued,
// so no caller's thread ever waits for Redis. When Redis cannot be reached
// (down, slow past `timeout`, restarted), the store fails open (routes on
// this replica's own state, `RedisFailureMode::Open`) or refuses paid calls
// (`Closed`), reconnects with backoff, and reports it through `on_event`
// and `counters()`. docs/SCALING.md has the keys, the scripts and the
// bounds.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "torouter/abi.hpp"
#include "torouter/state_store.hpp"

TOROUTER_BEGIN_NAMESPACE

/// What the store does while Redis cannot be reached.
enum class RedisFailureMode {
  /// Admit calls on this replica's own state (an in-process store with the
  /// same budgets): every request is served, the fleet's limits hold per
  /// replica only until Redis is back.
  Open,
  /// Refuse calls with a predicted cost above 0 (`AdmissionOutcome::Unavailable`);
  /// free ones are admitted on the replica's own state.
  Closed,
};

struct RedisStoreOptions {
  /// redis://[[user]:password@]host[:port][/db]
  std::string url = "redis://127.0.0.1:6379/0";
  /// Every key begins with "{prefix}:", so fleets can share a Redis.
  std::string key_prefix = "torouter";
  RedisFailureMode on_failure = RedisFailureMode::Open;
  /// Longest wait for a connection or a reply before Redis counts as unreachable.
  std::chrono::milliseconds timeout{250};
  /// An admitted call not settled within this time (its replica crashed)
  /// gives its slot and reservation back. Longer than any call can last.
  std::chrono::milliseconds call_expiry{600000};
  /// How old the fleet's cooldowns, spend and in-flight counts read here may
  /// be, at most.
  std::chrono::milliseconds refresh{500};
  /// Reconnection backoff: the first wait, doubled after each failure up to the last.
  std::chrono::milliseconds reconnect_min{100};
  std::chrono::milliseconds reconnect_max{5000};
  /// How often an invoke waiting for a slot asks again (others' releases
  /// wake no one here).
  std::chrono::milliseconds capacity_poll{50};
  /// Admissions waiting to be sent, at most; past it they are answered as
  /// when Redis cannot be reached.
  std::size_t max_waiting = 10000;
  /// Receives one line per event worth a log (connected, lost, refused
  /// script); null: standard error.
  std::function<void(const std::string&)> on_event;
};

/// Checks the options (a redis:// URL, a prefix without braces, timings
/// above 0); returns an empty string when valid, otherwise the field and why.
std::string validate_redis_store_options(const RedisStoreOptions& options);

/// What the store has done, for logs and metrics.
struct RedisStoreCounters {
  bool connected = false;
  std::uint64_t connects = 0;             ///< connections made
  std::uint64_t disconnects = 0;          ///< connections lost or refused
  std::uint64_t round_trips = 0;          ///< pipelined batches sent
  std::uint64_t admitted_shared = 0;      ///< calls admitted by Redis
  std::uint64_t admitted_local = 0;       ///< calls admitted on local state (Redis unreachable)
  std::uint64_t refused_unavailable = 0;  ///< calls refused, failing closed
  std::uint64_t settlements_waiting = 0;  ///< settlements held until Redis is back
  std::uint64_t reclaimed = 0;            ///< expired calls given back (crashed replicas')
  double fleet_spent_usd = 0.0;           ///< every replica's spend, as last read
  double own_spent_usd = 0.0;             ///< this replica's
  std::string last_error;
};

class RedisStateStore final : public StateStore {
 public:
  /// Checks `options` (throws `Error` naming the field) and tries to
  /// connect once; when Redis cannot be reached yet, the store starts as
  /// when it is lost, and keeps trying.
  explicit RedisStateStore(RedisStoreOptions options);
  ~RedisStateStore() override;
  RedisStateStore(const RedisStateStore&) = delete;
  RedisStateStore& operator=(const RedisStateStore&) = delete;

  void configure(const ExpertRegistry& experts, std::vector<BudgetRule> budgets) override;
  void admit(const Admission& admission, std::function<void(const AdmissionResult&)> done) override;
  void settle(const Settlement& settlement) override;
  void publish_cooldown(std::size_t expert, std::chrono::system_clock::time_point until) override;
  void on_cooldown(CooldownListener listener) override;
  int in_flight(std::size_t expert) const override;
  double spent_usd() const override;
  std::chrono::milliseconds capacity_poll() const override;

  RedisStoreCounters counters() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

TOROUTER_END_NAMESPACE
