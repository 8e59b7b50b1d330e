// torouter-server's configuration file: the experts with their upstreams and
// prices, the router model, the policy, retries, the listen address and the
// API keys. The format is described in docs/ARCHITECTURE.md ("Deployment
// server") and server/demo_config.json.
//
//   torouter::server::ServerConfig config = torouter::server::load_server_config("server.json");
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "torouter/decision_log.hpp"
#include "torouter/openai/upstream.hpp"
#include "torouter/policy.hpp"
#include "torouter/router.hpp"

namespace torouter::server {

/// One expert: where its upstream is, and the registry fields the config
/// sets over the model file's and the experts file's.
struct ExpertConfig {
  /// The expert's name in the router model.
  std::string name;
  /// The upstream (its `model` defaults to `name`).
  openai::UpstreamOptions upstream;
  /// Overrides of the expert's registry entry; unset keeps what the model
  /// file or the experts file says.
  std::optional<double> input_usd_per_mtok;
  std::optional<double> output_usd_per_mtok;
  std::optional<std::size_t> context_window_tokens;
  std::optional<std::vector<std::string>> tags;
  /// What the expert takes besides text; unset keeps the experts file's
  /// declaration, or none (taken as capable of everything).
  std::optional<Capabilities> capabilities;
  std::optional<double> time_to_first_token_ms;
  std::optional<double> output_tokens_per_second;
  std::optional<std::size_t> max_concurrent_calls;
  std::optional<std::size_t> requests_per_minute;
  std::optional<std::size_t> tokens_per_minute;
  std::optional<bool> enabled;
};

/// "state": where the budgets, caps, rates and cooldowns live. Without it,
/// in the process; with `redis`, in a Redis the replicas share.
struct StateConfig {
  /// redis://host:port/db; empty for the in-process store.
  std::string redis;
  /// Every key begins with "{key_prefix}:".
  std::string key_prefix = "torouter";
  /// "on_failure": "open" (false) serves on local state while Redis cannot
  /// be reached; "closed" (true) refuses paid calls.
  bool fail_closed = false;
  std::chrono::milliseconds timeout{250};
  std::chrono::milliseconds refresh{500};
  std::chrono::milliseconds call_expiry{600000};
};

/// Everything torouter-server reads from its configuration file.
struct ServerConfig {
  /// The file the configuration came from, for messages.
  std::string origin;
  /// Address to listen on; loopback unless the file says otherwise.
  std::string host = "127.0.0.1";
  /// Port; 0 picks a free one.
  int port = 8080;
  /// Worker threads for handlers that block. torouter-server's handlers
  /// never do (they run on the I/O threads), so it starts none; the field
  /// is read for the configs that set it.
  std::size_t threads = 64;
  /// Threads that do the connections' and upstream calls' I/O; 0 for one
  /// per core the process may run on (its CPU affinity).
  std::size_t io_threads = 0;
  /// Open client connections; past it a new one gets 503 with Retry-After.
  std::size_t max_connections = 10000;
  /// Requests that have arrived and wait for a worker; past it, 503 with
  /// Retry-After. (torouter-server's own handlers never wait for one: see
  /// `max_requests_in_flight`.)
  std::size_t max_queued_requests = 4096;
  /// Chat requests being routed or called at once; past it, 503 with
  /// Retry-After.
  std::size_t max_requests_in_flight = 10000;
  /// Bytes of answers queued for a client that reads slowly, per
  /// connection and over all of them; a client whose answer would pass
  /// either is cut off (its call cancelled).
  std::size_t max_queued_answer_bytes = 8 << 20;
  std::size_t max_queued_answer_bytes_total = 256 << 20;
  /// How long a connection may wait for its next request's first byte.
  /// nginx's default: longer than the 60 s a load balancer in front
  /// commonly keeps an idle connection to reuse (AWS asks targets for
  /// longer), and than clients' own (httpx, under OpenAI's SDK: 5 s). A
  /// server that closes first races their next request, which is lost.
  std::chrono::milliseconds idle_timeout{75000};
  /// HTTPS: the certificate chain and private key (PEM files, relative to
  /// the configuration file); both empty for plain HTTP.
  std::string tls_cert_file;
  std::string tls_key_file;
  /// Router model file (paths are relative to the configuration file).
  std::string router_model;
  /// Optional expert registry file whose fields (prices, context windows,
  /// tags, latency priors, caps) replace the model file's.
  std::string experts_file;
  /// The experts served, in order; each must be one the model predicts for.
  std::vector<ExpertConfig> experts;
  /// Default routing knobs (`router:<lambda>` replaces `lambda_cost` and
  /// drops `quality_floor`; `router:q>=<floor>` replaces `quality_floor`).
  PolicyOptions policy;
  /// Retries, failover, cooldown, timeouts and the budget.
  RouterOptions router;
  /// Accepted bearer keys; empty serves without authentication.
  std::vector<std::string> api_keys;
  /// Largest request body accepted, bytes (413 beyond).
  std::size_t max_request_bytes = 1 << 20;
  /// Whether a request may name an expert as its model ("named_calls").
  /// Named calls go through the router pinned to that expert, so its
  /// `enabled` flag, cooldown, cap and the budget apply; false refuses them
  /// (403), leaving "router" and its forms the only models.
  bool named_calls = true;
  /// "decision_log": {"path": ..., "max_bytes", "max_files", "queue_lines",
  /// "redact_prompts", "feedback_window"}: one line per chat request and
  /// per POST /v1/feedback (see torouter/decision_log.hpp); none when
  /// `decision_log.path` is empty.
  DecisionLogOptions decision_log;
  /// How many recent request ids POST /v1/feedback accepts verdicts for.
  std::size_t feedback_window = 100000;
  /// "exploration": {"epsilon", "max_cost_ratio"} for routed requests; off
  /// by default (see torouter::ExplorationOptions).
  ExplorationOptions exploration;
  /// "state": {"redis", "key_prefix", "on_failure", "timeout_ms",
  /// "refresh_ms", "call_expiry_ms"}; the budgets then hold for the fleet.
  StateConfig state;
};

/// Reads and checks a configuration file; throws `torouter::Error` naming
/// the file and the field ("server.json: experts[1].base_url: ...").
ServerConfig load_server_config(const std::string& path);

/// Same, from JSON text; relative paths are resolved against `base_dir`.
ServerConfig parse_server_config(std::string_view json, const std::string& origin,
                                 const std::string& base_dir);

}  // namespace torouter::server
