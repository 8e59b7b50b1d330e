// Reads torouter-server's JSON configuration with simdjson; every problem is
// an Error naming the file and the field, as the expert registry's loader does.
#include "config.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "json_type_name.hpp"
#include "torouter/error.hpp"

namespace torouter::server {

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

// Typed reads of one object's fields; `where` is its path ("experts[2]").
class Fields {
 public:
  Fields(const std::string& origin, std::string where)
      : origin_(origin), where_(std::move(where)) {}

  [[noreturn]] void fail(std::string_view field, const std::string& problem) const {
    if (where_.empty()) throw Error(fmt::format("{}: {}: {}", origin_, field, problem));
    throw Error(fmt::format("{}: {}.{}: {}", origin_, where_, field, problem));
  }

  std::string path(std::string_view field) const {
    return where_.empty() ? std::string(field) : fmt::format("{}.{}", where_, field);
  }

  simdjson::dom::object object(std::string_view key, element value) const {
    simdjson::dom::object out;
    if (value.get_object().get(out))
      fail(key, fmt::format("expected an object, got {}", detail::json_type_name(value)));
    return out;
  }

  double number(std::string_view key, element value) const {
    double out = 0;
    if (value.get_double().get(out))
      fail(key, fmt::format("expected a number, got {}", detail::json_type_name(value)));
    if (!std::isfinite(out) || out < 0)
      fail(key, fmt::format("must be a finite number >= 0, got {}", out));
    return out;
  }

  double fraction(std::string_view key, element value) const {
    const double out = number(key, value);
    if (out > 1) fail(key, fmt::format("must be a number in [0, 1], got {}", out));
    return out;
  }

  std::uint64_t count(std::string_view key, element value, std::uint64_t minimum,
                      std::uint64_t maximum = UINT64_MAX) const {
    std::uint64_t out = 0;
    if (value.get_uint64().get(out)) {
      fail(key, fmt::format("expected a whole number >= {}, got {}", minimum,
                            simdjson::to_string(value)));
    }
    if (out < minimum || out > maximum) {
      fail(key, fmt::format("must be between {} and {}, got {}", minimum, maximum, out));
    }
    return out;
  }

  std::chrono::milliseconds millis(std::string_view key, element value) const {
    return std::chrono::milliseconds(
        static_cast<std::chrono::milliseconds::rep>(count(key, value, 1, 86'400'000)));
  }

  bool boolean(std::string_view key, element value) const {
    bool out = false;
    if (value.get_bool().get(out))
      fail(key, fmt::format("expected true or false, got {}", detail::json_type_name(value)));
    return out;
  }

  std::string text(std::string_view key, element value, bool allow_empty = false) const {
    std::string_view out;
    if (value.get_string().get(out))
      fail(key, fmt::format("expected a string, got {}", detail::json_type_name(value)));
    if (out.empty() && !allow_empty) fail(key, "must not be empty");
    return std::string(out);
  }

  std::vector<std::string> strings(std::string_view key, element value) const {
    simdjson::dom::array array;
    if (value.get_array().get(array)) {
      fail(key, fmt::format("expected an array of strings, got {}", detail::json_type_name(value)));
    }
    std::vector<std::string> out;
    for (element item : array) out.push_back(text(key, item));
    return out;
  }

  Capabilities capabilities(std::string_view key, element value) const {
    Capabilities out;
    const std::string problem = capabilities_from(strings(key, value), out);
    if (!problem.empty()) fail(key, problem);
    return out;
  }

 private:
  const std::string& origin_;
  std::string where_;
};

std::string resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || path.front() == '/' || base_dir.empty()) return path;
  return base_dir + "/" + path;
}

// An expert's upstream field; false when `key` is not one.
bool read_upstream_field(const Fields& f, std::string_view key, element v, ExpertConfig& e) {
  if (key == "name")
    e.name = f.text(key, v);
  else if (key == "base_url")
    e.upstream.base_url = f.text(key, v);
  else if (key == "model")
    e.upstream.model = f.text(key, v);
  else if (key == "api_key_env")
    e.upstream.api_key_env = f.text(key, v, true);
  else if (key == "connect_timeout_ms")
    e.upstream.connect_timeout = f.millis(key, v);
  else if (key == "read_timeout_ms")
    e.upstream.read_timeout = f.millis(key, v);
  else if (key == "ca_file")
    e.upstream.ca_file = f.text(key, v);
  else if (key == "max_response_bytes")
    e.upstream.max_response_bytes = f.count(key, v, 1);
  else if (key == "stream_usage")
    e.upstream.stream_usage = f.boolean(key, v);
  else
    return false;
  return true;
}

// An expert's registry override; false when `key` is not one.
bool read_registry_field(const Fields& f, std::string_view key, element v, ExpertConfig& e) {
  if (key == "input_usd_per_mtok")
    e.input_usd_per_mtok = f.number(key, v);
  else if (key == "output_usd_per_mtok")
    e.output_usd_per_mtok = f.number(key, v);
  else if (key == "context_window_tokens")
    e.context_window_tokens = f.count(key, v, 1);
  else if (key == "tags")
    e.tags = f.strings(key, v);
  else if (key == "capabilities")
    e.capabilities = f.capabilities(key, v);
  else if (key == "time_to_first_token_ms")
    e.time_to_first_token_ms = f.number(key, v);
  else if (key == "output_tokens_per_second")
    e.output_tokens_per_second = f.number(key, v);
  else if (key == "max_concurrent_calls")
    e.max_concurrent_calls = f.count(key, v, 0);
  else if (key == "requests_per_minute")
    e.requests_per_minute = f.count(key, v, 0);
  else if (key == "tokens_per_minute")
    e.tokens_per_minute = f.count(key, v, 0);
  else if (key == "enabled")
    e.enabled = f.boolean(key, v);
  else
    return false;
  return true;
}

ExpertConfig read_expert(const std::string& origin, std::size_t index, element value) {
  const std::string where = fmt::format("experts[{}]", index);
  Fields f(origin, where);
  simdjson::dom::object object;
  if (value.get_object().get(object)) {
    throw Error(fmt::format("{}: {}: expected an object, got {}", origin, where,
                            detail::json_type_name(value)));
  }
  ExpertConfig e;
  for (auto field : object) {
    const std::string_view key = field.key;
    const element v = field.value;
    if (read_upstream_field(f, key, v, e) || read_registry_field(f, key, v, e)) continue;
    f.fail(key,
           "unknown field (known: name, base_url, model, api_key_env, connect_timeout_ms, "
           "read_timeout_ms, ca_file, max_response_bytes, stream_usage, input_usd_per_mtok, "
           "output_usd_per_mtok, "
           "context_window_tokens, tags, capabilities, time_to_first_token_ms, "
           "output_tokens_per_second, max_concurrent_calls, requests_per_minute, "
           "tokens_per_minute, enabled)");
  }
  if (e.name.empty()) f.fail("name", "missing");
  if (e.upstream.base_url.empty()) f.fail("base_url", "missing");
  if (e.upstream.model.empty()) e.upstream.model = e.name;
  try {
    // Checks the URL, the key's variable and the CA file now, so the message
    // names the field.
    openai::Upstream check(e.upstream);
  } catch (const Error& error) {
    throw Error(fmt::format("{}: {}.{}", origin, where, error.what()));
  }
  return e;
}

void read_listen(const Fields& top, element value, const std::string& base_dir, ServerConfig& c) {
  Fields f(c.origin, "listen");
  for (auto field : top.object("listen", value)) {
    const std::string_view key = field.key;
    if (key == "host")
      c.host = f.text(key, field.value);
    else if (key == "port")
      c.port = static_cast<int>(f.count(key, field.value, 0, 65535));
    else if (key == "threads")
      c.threads = f.count(key, field.value, 1, 4096);
    else if (key == "io_threads")
      c.io_threads = f.count(key, field.value, 0, 256);
    else if (key == "max_connections")
      c.max_connections = f.count(key, field.value, 1, 1000000);
    else if (key == "max_queued_requests")
      c.max_queued_requests = f.count(key, field.value, 0, 1000000);
    else if (key == "max_requests_in_flight")
      c.max_requests_in_flight = f.count(key, field.value, 1, 10000000);
    else if (key == "max_queued_answer_bytes")
      c.max_queued_answer_bytes = f.count(key, field.value, 1024, std::size_t{1} << 40);
    else if (key == "max_queued_answer_bytes_total")
      c.max_queued_answer_bytes_total = f.count(key, field.value, 1024, std::size_t{1} << 40);
    else if (key == "idle_timeout_ms")
      c.idle_timeout = f.millis(key, field.value);
    else if (key == "tls_cert_file")
      c.tls_cert_file = resolve(base_dir, f.text(key, field.value));
    else if (key == "tls_key_file")
      c.tls_key_file = resolve(base_dir, f.text(key, field.value));
    else
      f.fail(key,
             "unknown field (known: host, port, threads, io_threads, max_connections, "
             "max_queued_requests, max_requests_in_flight, max_queued_answer_bytes, "
             "max_queued_answer_bytes_total, idle_timeout_ms, tls_cert_file, tls_key_file)");
  }
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    f.fail(c.tls_cert_file.empty() ? "tls_cert_file" : "tls_key_file",
           "missing: HTTPS needs both tls_cert_file and tls_key_file");
  }
}

void read_decision_log(const Fields& top, element value, const std::string& base_dir,
                       ServerConfig& c) {
  Fields f(c.origin, "decision_log");
  for (auto field : top.object("decision_log", value)) {
    const std::string_view key = field.key;
    const element v = field.value;
    if (key == "path")
      c.decision_log.path = resolve(base_dir, f.text(key, v));
    else if (key == "max_bytes")
      c.decision_log.max_bytes = f.count(key, v, 0);
    else if (key == "max_files")
      c.decision_log.max_files = f.count(key, v, 0, 1000);
    else if (key == "queue_lines")
      c.decision_log.queue_lines = f.count(key, v, 1, 10000000);
    else if (key == "redact_prompts")
      c.decision_log.redact_prompts = f.boolean(key, v);
    else if (key == "feedback_window")
      c.feedback_window = f.count(key, v, 1, 100000000);
    else
      f.fail(key,
             "unknown field (known: path, max_bytes, max_files, queue_lines, redact_prompts, "
             "feedback_window)");
  }
  if (c.decision_log.path.empty()) f.fail("path", "missing");
}

void read_exploration(const Fields& top, element value, ServerConfig& c) {
  Fields f(c.origin, "exploration");
  for (auto field : top.object("exploration", value)) {
    const std::string_view key = field.key;
    if (key == "epsilon")
      c.exploration.epsilon = f.fraction(key, field.value);
    else if (key == "max_cost_ratio")
      c.exploration.max_cost_ratio = f.number(key, field.value);
    else
      f.fail(key, "unknown field (known: epsilon, max_cost_ratio)");
  }
  if (auto problem = validate_exploration_options(c.exploration); !problem.empty()) {
    const auto dot = problem.find(' ');
    f.fail(problem.substr(0, dot), problem.substr(dot + 1));
  }
}

BudgetWindow budget_window(const Fields& f, const std::string& name) {
  for (BudgetWindow w : {BudgetWindow::Lifetime, BudgetWindow::Minute, BudgetWindow::Hour,
                         BudgetWindow::Day, BudgetWindow::Month}) {
    if (name == to_string(w)) return w;
  }
  f.fail("window", fmt::format("expected lifetime, minute, hour, day or month, got \"{}\"", name));
}

// "state": {"redis": "redis://...", "key_prefix": "...", "on_failure": "open"|"closed", ...}
void read_state(const Fields& top, element value, ServerConfig& c) {
  Fields f(c.origin, "state");
  for (auto field : top.object("state", value)) {
    const std::string_view key = field.key;
    const element v = field.value;
    if (key == "redis") {
      c.state.redis = f.text(key, v);
    } else if (key == "key_prefix") {
      c.state.key_prefix = f.text(key, v);
    } else if (key == "on_failure") {
      const std::string mode = f.text(key, v);
      if (mode != "open" && mode != "closed") {
        f.fail(key, fmt::format("expected \"open\" or \"closed\", got \"{}\"", mode));
      }
      c.state.fail_closed = mode == "closed";
    } else if (key == "timeout_ms") {
      c.state.timeout = f.millis(key, v);
    } else if (key == "refresh_ms") {
      c.state.refresh = f.millis(key, v);
    } else if (key == "call_expiry_ms") {
      c.state.call_expiry = f.millis(key, v);
    } else {
      f.fail(key,
             "unknown field (known: redis, key_prefix, on_failure, timeout_ms, refresh_ms, "
             "call_expiry_ms)");
    }
  }
  if (c.state.redis.empty()) f.fail("redis", "missing (redis://host:port/db)");
  if (c.state.refresh > std::chrono::milliseconds(1000)) {
    f.fail("refresh_ms", "must be at most 1000: cooldowns are read at most 1 s old");
  }
}

// A call's slot in Redis is given back at its expiry, whatever the call is
// doing: no call may last that long, streams (not bound by the invoke's
// timeout) included.
void check_call_expiry(const Fields& f, const ServerConfig& c) {
  const auto expiry = c.state.call_expiry;
  if (expiry <= c.router.invoke_timeout) {
    f.fail("state.call_expiry_ms",
           fmt::format("must be above retry.invoke_timeout_ms ({} ms): a call's slot is given "
                       "back at its expiry",
                       c.router.invoke_timeout.count()));
  }
  if (c.router.stream_timeout.count() == 0 || c.router.stream_timeout >= expiry) {
    f.fail("retry.stream_timeout_ms",
           fmt::format("must be set, below state.call_expiry_ms ({} ms), with a shared state: a "
                       "stream that outlives its call's expiry would lose its slot",
                       expiry.count()));
  }
}

// "budgets": [{"limit_usd": 5, "window": "day", "expert": "...", "tag": "..."}]
std::vector<BudgetRule> read_budgets(const std::string& origin, element value) {
  simdjson::dom::array array;
  if (value.get_array().get(array)) {
    throw Error(fmt::format("{}: policy.budgets: expected an array, got {}", origin,
                            detail::json_type_name(value)));
  }
  std::vector<BudgetRule> rules;
  for (element item : array) {
    const std::string where = fmt::format("policy.budgets[{}]", rules.size());
    Fields f(origin, where);
    simdjson::dom::object object;
    if (item.get_object().get(object)) {
      throw Error(fmt::format("{}: {}: expected an object, got {}", origin, where,
                              detail::json_type_name(item)));
    }
    BudgetRule rule;
    bool limited = false;
    for (auto field : object) {
      const std::string_view key = field.key;
      if (key == "limit_usd") {
        rule.limit_usd = f.number(key, field.value);
        limited = true;
      } else if (key == "window") {
        rule.window = budget_window(f, f.text(key, field.value));
      } else if (key == "expert") {
        rule.expert = f.text(key, field.value);
      } else if (key == "tag") {
        rule.tag = f.text(key, field.value);
      } else {
        f.fail(key, "unknown field (known: limit_usd, window, expert, tag)");
      }
    }
    if (!limited) f.fail("limit_usd", "missing");
    if (!(rule.limit_usd >= 0)) f.fail("limit_usd", "must be >= 0");
    rules.push_back(std::move(rule));
  }
  return rules;
}

void read_policy(const Fields& top, element value, ServerConfig& c) {
  Fields f(c.origin, "policy");
  for (auto field : top.object("policy", value)) {
    const std::string_view key = field.key;
    const element v = field.value;
    if (key == "lambda_cost")
      c.policy.lambda_cost = f.number(key, v);
    else if (key == "lambda_latency")
      c.policy.lambda_latency = f.number(key, v);
    else if (key == "required_tags")
      c.policy.required_tags = f.strings(key, v);
    else if (key == "max_cost_usd")
      c.policy.max_cost_usd = f.number(key, v);
    else if (key == "max_latency_ms")
      c.policy.max_latency_ms = f.number(key, v);
    else if (key == "quality_floor")
      c.policy.quality_floor = f.fraction(key, v);
    else if (key == "budget_usd")
      c.router.budget_usd = f.number(key, v);
    else if (key == "budgets")
      c.router.budgets = read_budgets(c.origin, v);
    else if (key == "budget_mode") {
      const std::string mode = f.text(key, v);
      if (mode == "refuse")
        c.router.budget_mode = BudgetMode::Refuse;
      else if (mode == "downgrade")
        c.router.budget_mode = BudgetMode::Downgrade;
      else
        f.fail(key, fmt::format("expected \"refuse\" or \"downgrade\", got \"{}\"", mode));
    } else {
      f.fail(key,
             "unknown field (known: lambda_cost, lambda_latency, required_tags, "
             "max_cost_usd, max_latency_ms, quality_floor, budget_usd, budgets, "
             "budget_mode)");
    }
  }
}

void read_retry(const Fields& top, element value, ServerConfig& c) {
  Fields f(c.origin, "retry");
  RouterOptions& r = c.router;
  for (auto field : top.object("retry", value)) {
    const std::string_view key = field.key;
    const element v = field.value;
    if (key == "max_attempts_per_expert")
      r.max_attempts_per_expert = static_cast<int>(f.count(key, v, 1, 100));
    else if (key == "max_experts_tried")
      r.max_experts_tried = f.count(key, v, 1, 1000);
    else if (key == "initial_backoff_ms")
      r.initial_backoff = f.millis(key, v);
    else if (key == "max_backoff_ms")
      r.max_backoff = f.millis(key, v);
    else if (key == "max_retry_after_ms")
      r.max_retry_after = f.millis(key, v);
    else if (key == "attempt_timeout_ms")
      r.attempt_timeout = f.millis(key, v);
    else if (key == "invoke_timeout_ms")
      r.invoke_timeout = f.millis(key, v);
    else if (key == "stream_timeout_ms")
      r.stream_timeout = f.millis(key, v);
    else if (key == "failures_before_cooldown")
      r.failures_before_cooldown = static_cast<int>(f.count(key, v, 1, 1000000));
    else if (key == "cooldown_ms")
      r.cooldown = f.millis(key, v);
    else if (key == "capacity_wait_ms")
      r.capacity_wait = f.millis(key, v);
    else {
      f.fail(key,
             "unknown field (known: max_attempts_per_expert, max_experts_tried, "
             "initial_backoff_ms, max_backoff_ms, max_retry_after_ms, attempt_timeout_ms, "
             "invoke_timeout_ms, stream_timeout_ms, failures_before_cooldown, cooldown_ms, "
             "capacity_wait_ms)");
    }
  }
}

}  // namespace

ServerConfig parse_server_config(std::string_view json, const std::string& origin,
                                 const std::string& base_dir) {
  ServerConfig c;
  c.origin = origin;
  simdjson::dom::parser parser;
  element doc;
  if (auto error = parser.parse(json.data(), json.size()).get(doc)) {
    throw Error(fmt::format("{}: not valid JSON: {}", origin, simdjson::error_message(error)));
  }
  Fields f(origin, "");
  simdjson::dom::object top;
  if (doc.get_object().get(top)) throw Error(fmt::format("{}: expected a JSON object", origin));
  bool saw_experts = false;
  for (auto field : top) {
    const std::string_view key = field.key;
    const element v = field.value;
    if (key == "listen") {
      read_listen(f, v, base_dir, c);
    } else if (key == "router_model") {
      c.router_model = resolve(base_dir, f.text(key, v));
    } else if (key == "experts_file") {
      c.experts_file = resolve(base_dir, f.text(key, v));
    } else if (key == "experts") {
      simdjson::dom::array array;
      if (v.get_array().get(array))
        f.fail(key, fmt::format("expected an array, got {}", detail::json_type_name(v)));
      std::size_t i = 0;
      for (element item : array) {
        ExpertConfig e = read_expert(origin, i, item);
        for (const auto& other : c.experts) {
          if (other.name == e.name) {
            throw Error(
                fmt::format("{}: experts[{}].name: duplicate expert \"{}\"", origin, i, e.name));
          }
        }
        c.experts.push_back(std::move(e));
        ++i;
      }
      saw_experts = true;
    } else if (key == "policy") {
      read_policy(f, v, c);
    } else if (key == "retry") {
      read_retry(f, v, c);
    } else if (key == "api_keys") {
      // An empty list is most likely a template that filled in nothing:
      // it would open the server to anyone, so it must be said by leaving
      // the field out.
      const auto keys = f.strings(key, v);
      if (keys.empty()) f.fail(key, "empty; leave the field out to serve without API keys");
      for (const auto& k : keys) c.api_keys.push_back(k);
    } else if (key == "api_keys_env") {
      // Comma-separated keys in an environment variable, so none sit in the file.
      const std::string name = f.text(key, v);
      const char* value = std::getenv(name.c_str());
      if (value == nullptr || *value == '\0') {
        f.fail(key, fmt::format("environment variable {} is not set", name));
      }
      std::stringstream keys(value);
      const std::size_t before = c.api_keys.size();
      for (std::string k; std::getline(keys, k, ',');) {
        if (!k.empty()) c.api_keys.push_back(k);
      }
      if (c.api_keys.size() == before) {
        f.fail(key, fmt::format("environment variable {} holds no key", name));
      }
    } else if (key == "max_request_bytes") {
      c.max_request_bytes = f.count(key, v, 256);
    } else if (key == "named_calls") {
      c.named_calls = f.boolean(key, v);
    } else if (key == "decision_log") {
      read_decision_log(f, v, base_dir, c);
    } else if (key == "exploration") {
      read_exploration(f, v, c);
    } else if (key == "state") {
      read_state(f, v, c);
    } else if (key == "description") {
      f.text(key, v, true);
    } else {
      f.fail(key,
             "unknown field (known: listen, router_model, experts_file, experts, policy, "
             "retry, api_keys, api_keys_env, max_request_bytes, named_calls, decision_log, "
             "exploration, state, description)");
    }
  }
  if (c.router_model.empty()) f.fail("router_model", "missing");
  if (!c.state.redis.empty()) check_call_expiry(f, c);
  if (!saw_experts || c.experts.empty()) f.fail("experts", "missing or empty");
  return c;
}

ServerConfig load_server_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the file", path));
  std::stringstream text;
  text << in.rdbuf();
  const auto slash = path.find_last_of('/');
  const std::string base_dir = slash == std::string::npos ? "" : path.substr(0, slash);
  return parse_server_config(text.str(), path, base_dir);
}

}  // namespace torouter::server
