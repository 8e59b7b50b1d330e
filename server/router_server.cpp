// torouter-server's HTTP layer: reads OpenAI Chat Completions requests
// (chat_request.hpp), routes them with torouter::Router, calls the upstreams through
// torouter::openai, and answers in the OpenAI shapes (plain JSON or SSE).
//
// The router scores, and hands its transports as `Request::prompt`, only the
// routing text; the full conversation and the client's parameters reach them
// as the invoke's context (`InvokeOptions::context`, a `CallContext*`).
#include "router_server.hpp"

#include <fmt/compile.h>
#include <fmt/format.h>
#include <openssl/rand.h>
#include <simdjson.h>

#include <algorithm>
#include <any>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <ctime>
#include <deque>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <utility>

#include "ascii.hpp"
#include "asio_event_loop.hpp"
#include "chat_request.hpp"
#include "http_server.hpp"
#include "json_text.hpp"
#include "metrics.hpp"
#include "open_files.hpp"
#include "torouter/cost_model.hpp"
#include "torouter/error.hpp"
#include "torouter/trainable_scorer.hpp"
#ifdef TOROUTER_SERVER_WITH_REDIS
#include "torouter/redis/redis_store.hpp"
#endif

namespace torouter::server {

namespace {

using Clock = std::chrono::steady_clock;
using detail::append_json_number;
using detail::append_json_string;
using detail::json_number;
using detail::json_string;

constexpr std::size_t kNone = static_cast<std::size_t>(-1);
// nginx's status for a request whose client left before its answer: only
// ever counted, never sent.
constexpr int kClientClosedRequest = 499;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string error_body(const ApiError& e) {
  return fmt::format("{{\"error\":{{\"message\":{},\"type\":{},\"param\":{},\"code\":{}}}}}",
                     json_string(e.message), json_string(e.type),
                     e.param.empty() ? "null" : json_string(e.param),
                     e.code.empty() ? "null" : json_string(e.code));
}

void send_error(HttpResponse& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_body(e), "application/json");
}

// What the transports need of the request being served, and what they tell
// back; each invoke's context points to one (see the file's comment).
struct CallContext {
  std::string_view messages_json;
  std::string_view extra_json;
  bool stream = false;
  std::size_t current_expert = kNone;
  int upstream_calls = 0;
  // What the last upstream call's answer says besides its text: the one
  // that answered when the invoke succeeds (it takes only the completion of
  // its latest call). Each call has its own, kept alive by its completion:
  // a call the invoke gave up on may still be writing its own.
  std::shared_ptr<openai::ChatAnswer> answer;
};

// The call context of the invoke `request` belongs to, or nullptr.
CallContext* call_context_of(const Request& request) {
  CallContext* const* held = std::any_cast<CallContext*>(request.context);
  return held != nullptr ? *held : nullptr;
}

// True when `given` equals `key`. Its time depends on the key's length
// alone, never on where `given` first differs nor on whether its length
// matches, so timing tells a client nothing about the key.
bool equal_constant_time(std::string_view given, std::string_view key) {
  std::size_t diff = given.size() ^ key.size();
  for (std::size_t i = 0; i < key.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= static_cast<unsigned char>(g ^ static_cast<unsigned char>(key[i]));
  }
  return diff == 0;
}

int calls_made(const InvokeResult& r) {
  int n = 0;
  for (const auto& a : r.attempts) n += a.outcome != AttemptOutcome::Skipped ? 1 : 0;
  return n;
}

// The status and code an invoke's own error maps to, when it has one;
// false for errors read from the attempts.
bool status_of_invoke_error(InvokeError error, ApiError& e) {
  switch (error) {
    case InvokeError::NoEligibleExpert:
      e.status = 503;
      e.code = "no_eligible_expert";
      return true;
    case InvokeError::BudgetExhausted:
      e.status = 429;
      e.type = "insufficient_quota";
      e.code = "budget_exhausted";
      return true;
    case InvokeError::AtCapacity:
      e.status = 503;
      e.code = "at_capacity";
      return true;
    case InvokeError::RateLimited:
      e.status = 429;
      e.type = "rate_limit_error";
      e.code = "rate_limited";
      return true;
    case InvokeError::StateUnavailable:
      e.status = 503;
      e.code = "state_unavailable";
      return true;
    case InvokeError::Timeout:
      e.status = 504;
      e.code = "timeout";
      return true;
    default:
      return false;
  }
}

// The HTTP error for a failed invoke.
ApiError invoke_error(const InvokeResult& r) {
  ApiError e;
  e.type = "server_error";
  std::string last;
  bool all_bad_request = true;
  bool all_context = true;
  bool all_rate_limited = true;
  bool all_timed_out = true;
  int failed = 0;
  for (const auto& a : r.attempts) {
    if (a.outcome != AttemptOutcome::Failed) continue;
    ++failed;
    last = fmt::format("; last: {} attempt {}: {}: {}", a.expert, a.number, to_string(a.failure),
                       a.detail);
    all_context = all_context && a.failure == FailureKind::ContextTooLong;
    all_bad_request = all_bad_request && (a.failure == FailureKind::BadRequest ||
                                          a.failure == FailureKind::ContextTooLong);
    all_rate_limited = all_rate_limited && a.failure == FailureKind::RateLimited;
    all_timed_out = all_timed_out && a.failure == FailureKind::Timeout;
  }
  e.message = r.error_message + last;
  if (status_of_invoke_error(r.error, e)) return e;
  if (failed > 0 && all_context) {
    e.status = 400;
    e.type = "invalid_request_error";
    e.code = "context_length_exceeded";
  } else if (failed > 0 && all_bad_request) {
    e.status = 400;
    e.type = "invalid_request_error";
    e.code = "upstream_bad_request";
  } else if (failed > 0 && all_rate_limited) {
    e.status = 429;
    e.type = "rate_limit_error";
    e.code = "upstream_rate_limited";
  } else if (failed > 0 && all_timed_out) {
    e.status = 504;  // no upstream answered in time: a gateway timeout
    e.code = "upstream_timeout";
  } else {
    e.status = 502;
    e.code = "upstream_error";
  }
  return e;
}

constexpr std::string_view kModelsPrefix = "/v1/models/";

bool is_model_path(std::string_view path) {
  return path.size() > kModelsPrefix.size() &&
         path.substr(0, kModelsPrefix.size()) == kModelsPrefix;
}

// The methods the endpoint at `path` takes (an Allow header's value);
// empty where there is no endpoint.
std::string_view methods_of(std::string_view path) {
  if (path == "/v1/chat/completions" || path == "/admin/reload" || path == "/v1/feedback") {
    return "POST";
  }
  if (path == "/v1/models" || path == "/health" || path == "/metrics" || is_model_path(path)) {
    return "GET, HEAD";
  }
  return {};
}

// A hexadecimal digit's value; -1 for another character.
int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = torouter::detail::ascii_lower(c);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

// A path segment with its %XX escapes decoded (an expert's name may hold
// characters a client escapes); a malformed escape stays as it is.
std::string percent_decoded(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const int high = i + 2 < text.size() ? hex_value(text[i + 1]) : -1;
    const int low = i + 2 < text.size() ? hex_value(text[i + 2]) : -1;
    if (text[i] == '%' && high >= 0 && low >= 0) {
      out.push_back(static_cast<char>(high * 16 + low));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

// One entry of GET /v1/models.
std::string model_object(std::string_view id) {
  return fmt::format(R"({{"id":{},"object":"model","created":0,"owned_by":"torouter"}})",
                     json_string(id));
}

// Appends the start of a `chat.completion.chunk` event to `out`, up to the
// value of its `choices`. Plain appends: this runs for every piece of every
// stream, and fmt::format_to into a string cost it several times as much.
void append_chunk_head(std::string& out, std::string_view id, long long created,
                       std::string_view model) {
  const fmt::format_int created_text(created);
  out += "data: {\"id\":\"";
  out += id;
  out += "\",\"object\":\"chat.completion.chunk\",\"created\":";
  out.append(created_text.data(), created_text.size());
  out += ",\"model\":";
  append_json_string(out, model);
  out += ",\"choices\":";
}

// Appends one `chat.completion.chunk` event to `out`: `choice` holds the
// choice's members but its index and finish reason (`"delta":{...}`, and
// `logprobs` when relayed), `finish_reason` is JSON (null or a string),
// and `extra` adds top-level members after the choices (with its leading
// comma).
void append_chunk_event(std::string& out, std::string_view id, long long created,
                        std::string_view model, std::string_view choice,
                        std::string_view finish_reason, std::string_view extra = {}) {
  append_chunk_head(out, id, created, model);
  out += "[{\"index\":0,";
  out += choice;
  out += ",\"finish_reason\":";
  out += finish_reason;
  out += "}]";
  out += extra;
  out += "}\n\n";
}

// `text` as a JSON string, or null when empty.
void append_json_or_null(std::string& out, std::string_view text) {
  if (text.empty()) {
    out += "null";
  } else {
    append_json_string(out, text);
  }
}

std::string chunk_event(std::string_view id, long long created, std::string_view model,
                        std::string_view choice, std::string_view finish_reason,
                        std::string_view extra = {}) {
  std::string out;
  append_chunk_event(out, id, created, model, choice, finish_reason, extra);
  return out;
}

// With `stream_options.include_usage`, OpenAI's chunks before the usage
// event carry a null usage.
constexpr std::string_view kNullUsage = ",\"usage\":null";
std::string_view null_usage(const ChatRequest& chat) {
  return chat.include_usage ? kNullUsage : "";
}

// The event `stream_options.include_usage` asks for: no choices, the usage.
std::string usage_event(std::string_view id, long long created, std::string_view model,
                        std::string_view usage_member) {
  std::string out;
  append_chunk_head(out, id, created, model);
  out += "[]";
  out += usage_member;
  out += "}\n\n";
  return out;
}

// A stream's first event, as OpenAI's streams begin.
constexpr std::string_view kRoleDelta = R"("delta":{"role":"assistant","content":""})";

// The finish reason relayed to the client; an upstream that gave none
// stopped on its own, or to call tools.
std::string finish_reason_of(const openai::ChatAnswer& answer) {
  if (!answer.finish_reason.empty()) return answer.finish_reason;
  return answer.tool_calls.empty() ? "stop" : "tool_calls";
}

// The answer's tool calls as a JSON array; in a stream delta each carries
// its `index`.
std::string tool_calls_json(const std::vector<openai::ToolCall>& calls, bool with_index) {
  std::string out = "[";
  for (std::size_t i = 0; i < calls.size(); ++i) {
    const openai::ToolCall& call = calls[i];
    if (i > 0) out.push_back(',');
    out += fmt::format("{{{}\"id\":{},\"type\":{},\"function\":{{\"name\":{},\"arguments\":{}}}}}",
                       with_index ? fmt::format("\"index\":{},", i) : "", json_string(call.id),
                       json_string(call.type), json_string(call.name), json_string(call.arguments));
  }
  out.push_back(']');
  return out;
}

}  // namespace

// One chat request in flight: what its invoke's callbacks need until the
// answer is sent.
// The ids of the latest chat requests, at most `capacity`: the calls
// POST /v1/feedback takes a verdict on.
class RecentIds {
 public:
  explicit RecentIds(std::size_t capacity) : capacity_(capacity) {}

  void add(std::string id) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!ids_.insert(id).second) return;
    order_.push_back(std::move(id));
    if (order_.size() > capacity_) {
      ids_.erase(order_.front());
      order_.pop_front();
    }
  }

  bool contains(const std::string& id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return ids_.count(id) > 0;
  }

 private:
  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::deque<std::string> order_;
  std::unordered_set<std::string> ids_;
};

// A place among the server's chats in flight, taken in one atomic step so
// that I/O threads checking the cap at the same moment cannot all get past
// it (and, unlike adding then undoing, a refused one never holds a place a
// moment, which would refuse another that fits); given back when it goes.
class InFlightPlace {
 public:
  InFlightPlace(std::atomic<std::size_t>& count, std::size_t cap) {
    std::size_t now = count.load();
    do {
      if (now >= cap) return;
    } while (!count.compare_exchange_weak(now, now + 1));
    count_ = &count;
  }
  ~InFlightPlace() { give_back(); }
  InFlightPlace(InFlightPlace&& other) noexcept : count_(std::exchange(other.count_, nullptr)) {}
  InFlightPlace(const InFlightPlace&) = delete;
  InFlightPlace& operator=(const InFlightPlace&) = delete;
  InFlightPlace& operator=(InFlightPlace&&) = delete;
  explicit operator bool() const { return count_ != nullptr; }

 private:
  void give_back() {
    if (count_ != nullptr) count_->fetch_sub(1);
    count_ = nullptr;
  }
  std::atomic<std::size_t>* count_ = nullptr;
};

struct ChatExchange {
  explicit ChatExchange(InFlightPlace p) : place(std::move(p)) {}
  ChatExchange(const ChatExchange&) = delete;
  ChatExchange& operator=(const ChatExchange&) = delete;

  InFlightPlace place;  // held until the exchange ends
  ChatRequest chat;
  CallContext call;
  std::shared_ptr<HttpResponse> res;  // deferred: finished from the callbacks
  std::string id;
  long long created = 0;
  InvokeResult shown;        // the decision the invoke starts from; a stream's headers show it
  std::string event;         // a stream's piece being written out
  bool started = false;
};

struct RouterServer::Impl {
  ServerConfig config;
  // The I/O threads of the listener, the upstream calls and the router's
  // event loop alike.
  std::size_t io_threads;
  std::shared_ptr<openai::IoThreads> io;
  std::shared_ptr<EventLoop> loop;
  std::unique_ptr<Router> router;
  // Reloads of the model: one at a time (`reloading`, whichever asked); an
  // HTTP one runs on reload_thread, joined before the next and at stop.
  std::atomic<bool> reloading{false};
  std::mutex reload_mutex;  // guards reload_thread
  std::thread reload_thread;
  std::atomic<std::uint64_t> reloads_done{0};
  std::atomic<std::uint64_t> reloads_refused{0};
  // With "decision_log" in the config: the log, and the ids it can take
  // feedback on.
  std::shared_ptr<DecisionLog> decision_log;
  std::unique_ptr<RecentIds> recent_ids;
#ifdef TOROUTER_SERVER_WITH_REDIS
  // With "state": {"redis": ...}: the store the replicas share.
  std::shared_ptr<RedisStateStore> redis_store;
#endif
  std::vector<std::shared_ptr<const openai::Upstream>> upstreams;  // registry order
  std::unique_ptr<ServerMetrics> metrics;
  std::unique_ptr<HttpServer> http;
  std::thread thread;
  std::atomic<std::size_t> chats_in_flight{0};
  int port = -1;
  // The upstreams' base URLs, which clients never see (several experts
  // may share one).
  std::vector<std::string> upstream_urls;

  explicit Impl(ServerConfig c)
      : config(std::move(c)),
        io_threads(config.io_threads > 0 ? config.io_threads : openai::IoThreads::usable_cores()),
        io(std::make_shared<openai::IoThreads>(io_threads)),
        loop(std::make_shared<AsioEventLoop>(io)) {
    if (auto problem = validate_policy_options(config.policy); !problem.empty()) {
      throw Error(fmt::format("{}: policy.{}", config.origin, problem));
    }
    LoadedModel model;
    try {
      model = load_model_file();
    } catch (const Error& e) {
      throw Error(fmt::format("{}: router_model: {}", config.origin, e.what()));
    }
    ExpertRegistry from_file;
    if (!config.experts_file.empty()) from_file = load_expert_registry(config.experts_file);
    ExpertRegistry registry;
    std::vector<std::string> names;
    for (std::size_t i = 0; i < config.experts.size(); ++i) {
      const ExpertConfig& ec = config.experts[i];
      const ExpertSpec* base = from_file.find(ec.name);
      if (base == nullptr) base = model.experts.find(ec.name);
      if (base == nullptr) {
        std::string known;
        for (const auto& e : model.experts.experts()) known += (known.empty() ? "" : ", ") + e.name;
        throw Error(
            fmt::format("{}: experts[{}].name: \"{}\" is not an expert of the router "
                        "model {} (it knows: {})",
                        config.origin, i, ec.name, config.router_model, known));
      }
      ExpertSpec spec = *base;
      if (ec.input_usd_per_mtok) spec.input_usd_per_mtok = *ec.input_usd_per_mtok;
      if (ec.output_usd_per_mtok) spec.output_usd_per_mtok = *ec.output_usd_per_mtok;
      if (ec.context_window_tokens) spec.context_window_tokens = *ec.context_window_tokens;
      if (ec.tags) spec.tags = *ec.tags;
      if (ec.capabilities) spec.capabilities = *ec.capabilities;
      if (ec.time_to_first_token_ms)
        spec.latency.time_to_first_token_ms = *ec.time_to_first_token_ms;
      if (ec.output_tokens_per_second)
        spec.latency.output_tokens_per_second = *ec.output_tokens_per_second;
      if (ec.max_concurrent_calls) spec.max_concurrent_calls = *ec.max_concurrent_calls;
      if (ec.requests_per_minute) spec.requests_per_minute = *ec.requests_per_minute;
      if (ec.tokens_per_minute) spec.tokens_per_minute = *ec.tokens_per_minute;
      if (ec.enabled) spec.enabled = *ec.enabled;
      if (auto problem = validate_expert(spec); !problem.empty()) {
        throw Error(
            fmt::format("{}: experts[{}] (\"{}\"): {}", config.origin, i, ec.name, problem));
      }
      registry.add(std::move(spec));
      names.push_back(ec.name);
      openai::UpstreamOptions upstream = ec.upstream;
      upstream.io = io;
      upstreams.push_back(std::make_shared<const openai::Upstream>(std::move(upstream)));
      upstream_urls.push_back(ec.upstream.base_url);
    }
    // Longest first: a URL that begins another ("http://h:80" and
    // "http://h:8000/v1") must not be replaced inside it.
    std::sort(upstream_urls.begin(), upstream_urls.end(),
              [](const std::string& a, const std::string& b) {
                return a.size() != b.size() ? a.size() > b.size() : a < b;
              });
    upstream_urls.erase(std::unique(upstream_urls.begin(), upstream_urls.end()),
                        upstream_urls.end());
    RouterOptions router_options = config.router;
    router_options.state_store = shared_state();
    router = std::make_unique<Router>(std::move(registry), model.scorer, nullptr, router_options);
    metrics = std::make_unique<ServerMetrics>(names);
    if (!config.decision_log.path.empty()) open_decision_log();
    for (std::size_t i = 0; i < names.size(); ++i) {
      router->set_transport(
          names[i],
          Transport::async_streaming([this, i](const Request& request, ChunkCallback on_chunk,
                                               CompletionCallback on_done) {
            call_upstream(i, request, std::move(on_chunk), std::move(on_done));
          }));
    }
    setup_http();
  }

  // The I/O threads stop before any other member goes: a completion still
  // due (an upstream call that outlived its client, a timer) must not run
  // on a half-destroyed server. The listener goes first, while they run:
  // its stop needs them.
  ~Impl() {
    stop();
    http.reset();
    io->stop();
  }

  void stop() {
    http->stop();
    if (thread.joinable()) thread.join();
    std::thread last;
    {
      std::lock_guard<std::mutex> lock(reload_mutex);
      last = std::move(reload_thread);
    }
    if (last.joinable()) last.join();
  }

  // The state store of the config's "state": null (the router's own, in
  // the process) without one.
  std::shared_ptr<StateStore> shared_state() {
    if (config.state.redis.empty()) return nullptr;
#ifdef TOROUTER_SERVER_WITH_REDIS
    RedisStoreOptions o;
    o.url = config.state.redis;
    o.key_prefix = config.state.key_prefix;
    o.on_failure = config.state.fail_closed ? RedisFailureMode::Closed : RedisFailureMode::Open;
    o.timeout = config.state.timeout;
    o.refresh = config.state.refresh;
    o.call_expiry = config.state.call_expiry;
    o.on_event = [](const std::string& line) {
      std::cerr << "torouter-server: redis: " << line << std::endl;
    };
    try {
      redis_store = std::make_shared<RedisStateStore>(std::move(o));
    } catch (const Error& e) {
      throw Error(fmt::format("{}: state: {}", config.origin, e.what()));
    }
    return redis_store;
#else
    throw Error(
        fmt::format("{}: state.redis: this torouter-server was built without Redis "
                    "support (hiredis, Debian libhiredis-dev, was not found)",
                    config.origin));
#endif
  }

  void open_decision_log() {
    try {
      decision_log = std::make_shared<DecisionLog>(config.decision_log);
    } catch (const Error& e) {
      throw Error(fmt::format("{}: decision_log.path: {}", config.origin, e.what()));
    }
    recent_ids = std::make_unique<RecentIds>(config.feedback_window);
    router->set_decision_sink(
        [this](const DecisionRecord& record) { decision_log->record(record); });
  }

  // POST /v1/feedback {"id": ..., "quality": 0..1}: a verdict on a recent
  // call's answer, written to the decision log (a later one for the same id
  // replaces it there). The chat's key rules apply.
  void handle_feedback(const HttpRequest& req, HttpResponse& res) {
    if (!authorized(req, res)) return;
    ApiError e;
    e.status = 400;
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    std::string_view id;
    double quality = 0;
    if (parser.parse(req.body).get(doc)) {
      e.message = "feedback body is not valid JSON";
    } else if (doc["id"].get(id)) {
      e.message = "missing or non-string field: id";
      e.param = "id";
    } else if (doc["quality"].get(quality) || !(quality >= 0.0 && quality <= 1.0)) {
      e.message = "quality must be a number in [0, 1]";
      e.param = "quality";
    } else if (!decision_log) {
      e.status = 404;
      e.code = "no_decision_log";
      e.message = "this server keeps no decision log (no decision_log in its config)";
    } else if (!recent_ids->contains(std::string(id))) {
      e.status = 404;
      e.code = "unknown_id";
      e.message = fmt::format("no recent call has the id {} (the server keeps the last {})",
                              json_string(id), config.feedback_window);
    } else {
      decision_log->record_feedback(id, quality);
      res.set_content(fmt::format("{{\"status\":\"recorded\",\"id\":{},\"quality\":{}}}",
                                  json_string(id), json_number(quality)),
                      "application/json");
      return;
    }
    send_error(res, e);
  }

  // Loads the configured model file again and swaps it in: checked first
  // (load_model re-scores its recorded prompts; the router checks it knows
  // every expert), so a bad file is refused and the current model keeps
  // serving. Calls in flight finish on the model they began with.
  // The model `router_model` names. Only a regular file is read: a FIFO or
  // a device would block the load, and a reload with it SIGTERM too.
  LoadedModel load_model_file() const {
    std::error_code error;
    const auto status = std::filesystem::status(config.router_model, error);
    if (!error && std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
      throw Error(fmt::format("{}: not a regular file{}", config.router_model,
                              std::filesystem::is_directory(status) ? " (a directory)" : ""));
    }
    return load_model(config.router_model);
  }

  ReloadOutcome reload() {
    ReloadOutcome out;
    out.previous_version = std::string(router->current_scorer()->version());
    out.model_version = out.previous_version;
    if (reloading.exchange(true)) return busy_reload();
    // Cleared as this returns, before anyone is told the outcome.
    struct Done {
      std::atomic<bool>& flag;
      ~Done() { flag = false; }
    } done{reloading};
    try {
      LoadedModel model = load_model_file();
      router->replace_scorer(model.scorer);
      out.ok = true;
      out.model_version = std::string(model.scorer->version());
      ++reloads_done;
      std::cerr << fmt::format("torouter-server: reloaded {} (model {}, was {})\n",
                               config.router_model, out.model_version, out.previous_version);
    } catch (const std::exception& e) {
      out.error = e.what();
      ++reloads_refused;
      std::cerr << fmt::format("torouter-server: reload refused, model {} keeps serving: {}\n",
                               out.previous_version, out.error);
    }
    return out;
  }

  // POST /admin/reload: needs a key, so a server without keys refuses it.
  // The load runs on a thread of its own (it reads and checks a file; the
  // handler must not block an I/O thread), and the answer waits for it.
  void handle_reload(const HttpRequest& req, HttpResponse& res) {
    if (config.api_keys.empty()) {
      ApiError e;
      e.status = 403;
      e.code = "reload_needs_key";
      e.message = "POST /admin/reload needs an API key: configure api_keys";
      return send_error(res, e);
    }
    if (!authorized(req, res)) return;
    std::lock_guard<std::mutex> lock(reload_mutex);
    if (reloading) return answer_reload(res, busy_reload());
    // The last one's thread has told its outcome, so it is about to end.
    if (reload_thread.joinable()) reload_thread.join();
    auto later = res.defer();
    try {
      reload_thread = std::thread([this, later] {
        answer_reload(*later, reload());
        later->finish();
      });
    } catch (const std::system_error& e) {
      ApiError error;
      error.status = 503;
      error.message = fmt::format("cannot start the reload: {}", e.what());
      send_error(*later, error);
      later->finish();
    }
  }

  static ReloadOutcome busy_reload() {
    ReloadOutcome out;
    out.busy = true;
    out.error = "a reload is in progress";
    return out;
  }

  void answer_reload(HttpResponse& res, const ReloadOutcome& out) const {
    if (out.busy) {
      ApiError e;
      e.status = 409;
      e.code = "reload_in_progress";
      e.message = out.error;
      return send_error(res, e);
    }
    if (!out.ok) {
      ApiError e;
      e.status = 422;
      e.code = "model_refused";
      e.message = fmt::format("the model was not replaced (model {} keeps serving): {}",
                              out.previous_version, out.error);
      return send_error(res, e);
    }
    res.set_content(fmt::format("{{\"status\":\"reloaded\",\"model_version\":{},"
                                "\"previous_model_version\":{}}}",
                                json_string(out.model_version), json_string(out.previous_version)),
                    "application/json");
  }

  // One upstream call of expert `i`, with the conversation of the request
  // being served when there is one; it holds no thread.
  void call_upstream(std::size_t i, const Request& request, ChunkCallback on_chunk,
                     CompletionCallback on_done) {
    CallContext* call = call_context_of(request);
    const auto start = Clock::now();
    auto answer = call != nullptr ? std::make_shared<openai::ChatAnswer>() : nullptr;
    // `answer` is held until the call completes: the call writes it.
    auto observed = [this, i, start, cancel = request.cancel, answer,
                     on_done = std::move(on_done)](Response response) {
      // A call the client's departure cancelled is no failure of the expert.
      const bool cancelled = cancel != nullptr && cancel->cancelled();
      metrics->observe_upstream(i, seconds_since(start),
                                cancelled ? FailureKind::None : response.failure);
      on_done(std::move(response));
    };
    if (call == nullptr) {
      upstreams[i]->complete_async(request, {}, std::move(observed));
      return;
    }
    call->current_expert = i;
    ++call->upstream_calls;
    openai::ChatCall chat;
    chat.messages_json = call->messages_json;
    chat.extra_fields_json = call->extra_json;
    call->answer = answer;
    chat.answer = answer.get();
    chat.pieces_as_json = call->stream;  // relayed as they come: see stream_piece
    if (call->stream) {
      upstreams[i]->stream_async(request, std::move(on_chunk), chat, std::move(observed));
    } else {
      upstreams[i]->complete_async(request, chat, std::move(observed));
    }
  }

  InvokeOptions invoke_options(const ChatRequest& chat) const {
    InvokeOptions options;
    options.route.policy = config.policy;
    options.route.policy.lambda_cost = chat.lambda_cost;
    options.route.policy.quality_floor = chat.quality_floor;
    options.route.policy.required_capabilities = chat.needs;
    options.route.policy.max_output_tokens = chat.max_tokens;
    options.route.input_tokens = chat.input_tokens;
    options.max_output_tokens = chat.max_tokens;
    options.answers = chat.choices;
    // A call to a named expert is not the router's pick to explore.
    if (!chat.bypass) options.route.exploration = config.exploration;
    return options;
  }

  // Starts serving `x` with the router; its answer goes out from the
  // invoke's callbacks. A named expert is a pinned invoke: the same
  // retries, state, cap and budget. A client that goes away cancels it.
  void start_chat(const std::shared_ptr<ChatExchange>& x) {
    const ChatRequest& chat = x->chat;
    CallContext& call = x->call;
    call.messages_json = chat.messages_json;
    call.extra_json = chat.extra_json;
    call.stream = chat.stream;
    InvokeOptions options = invoke_options(chat);
    options.context = &call;
    options.cancel = x->res->client_gone();
    options.request_id = x->id;
    // Feedback may come before the call ends (a stream's first pieces):
    // its id is known from the start.
    if (recent_ids) recent_ids->add(x->id);
    if (chat.bypass) options.expert = router->experts()[chat.expert].name;
    metrics->count_chat_request(chat.bypass);
    if (chat.stream) {
      options.on_chunk = [this, x](std::string_view piece) { stream_piece(*x, piece); };
      options.pieces_are_text = false;  // a relay's JSON (ChatCall::pieces_as_json)
    }
    options.routed = std::shared_ptr<const RouteDecision>(x, &x->shown.decision);
    router->invoke_async(chat.routing_text, std::move(options), loop,
                         [this, x](InvokeResult r) { chat_done(*x, std::move(r)); });
  }

  void chat_done(ChatExchange& x, InvokeResult r) {
    if (r.ok()) metrics->count_answer(*router->experts().index_of(r.expert));
    if (r.error == InvokeError::Cancelled) {
      // The client went away: no one to answer. Counted as nginx logs it,
      // 499 "client closed request", unless a stream's 200 had gone out.
      if (!x.started) x.res->status = kClientClosedRequest;
      x.res->abort();
    } else if (x.chat.stream) {
      finish_stream(x, r);
    } else {
      finish_plain(x, r);
    }
  }

  // ---- HTTP ---------------------------------------------------------------

  // Whether the request carries one of the keys (or none are configured).
  bool has_key(const HttpRequest& req) const {
    if (config.api_keys.empty()) return true;
    const std::string_view header = req.header("authorization");
    constexpr std::string_view kBearer = "bearer ";
    // The scheme's name is case-insensitive (RFC 9110, section 11.1).
    if (header.size() <= kBearer.size() ||
        !std::equal(kBearer.begin(), kBearer.end(), header.begin(),
                    [](char a, char b) { return a == torouter::detail::ascii_lower(b); })) {
      return false;
    }
    const std::string_view key = header.substr(kBearer.size());
    bool ok = false;
    for (const auto& k : config.api_keys) ok = equal_constant_time(key, k) || ok;
    return ok;
  }

  // True when the request has a key; else answers 401 and returns false.
  bool authorized(const HttpRequest& req, HttpResponse& res) const {
    if (has_key(req)) return true;
    const std::string_view header = req.header("authorization");
    ApiError e;
    e.status = 401;
    e.code = "invalid_api_key";
    e.message =
        header.empty() ? "missing API key: send Authorization: Bearer <key>" : "invalid API key";
    res.set_header("WWW-Authenticate", "Bearer");
    send_error(res, e);
    return false;
  }

  // What a client is told of attempt `a`: how its expert failed, not where
  // the upstream lives (its URL reads `<upstream of EXPERT>`) nor, unless
  // the request was at fault, what the upstream said, which may name
  // internal hosts or accounts. The server's log has it all.
  std::string client_detail(const Attempt& a) const {
    // The client needs the upstream's reason to fix its request: a 400's or
    // 422's (a 413 is often a proxy's page, naming its host and version).
    const bool requests_fault =
        a.failure == FailureKind::BadRequest || a.failure == FailureKind::ContextTooLong;
    const bool quote = requests_fault && a.http_status != 413;
    std::string text = a.detail;
    if (!quote && a.quoted_at < text.size()) {
      text.resize(a.quoted_at);
      text += "<in the server's log>";
    }
    const std::string name = fmt::format("<upstream of {}>", a.expert);
    for (const std::string& url : upstream_urls) {
      for (auto at = text.find(url); at != std::string::npos; at = text.find(url, at)) {
        text.replace(at, url.size(), name);
        at += name.size();
      }
    }
    return text;
  }

  // The error object for a failed invoke, its details (upstream URLs and
  // messages included) in the server's log.
  ApiError failed_invoke(const InvokeResult& r) const {
    InvokeResult told;
    told.error = r.error;
    told.error_message = r.error_message;
    told.attempts = r.attempts;
    for (auto& a : told.attempts) {
      if (a.outcome != AttemptOutcome::Failed) continue;
      std::cerr << fmt::format("torouter-server: {} attempt {} failed: {}: {}\n", a.expert,
                               a.number, to_string(a.failure), a.detail);
      a.detail = client_detail(a);
      a.quoted_at = std::string::npos;  // cut (or kept) above
    }
    return invoke_error(told);
  }

  // A failed invoke's error, with `Retry-After` when upstreams asked for a
  // pause (the soonest of their waits, in whole seconds), or 1 s when the
  // refusal is a moment's (every slot taken, the shared state unreachable),
  // as for the server's own limits.
  void send_failed_invoke(HttpResponse& res, const InvokeResult& r) const {
    const ApiError e = failed_invoke(r);
    if (e.code == "at_capacity" || e.code == "state_unavailable") {
      res.set_header("Retry-After", "1");
    } else if (e.code == "upstream_rate_limited") {
      std::chrono::milliseconds soonest{0};
      for (const auto& a : r.attempts) {
        if (a.retry_after.count() > 0 && (soonest.count() == 0 || a.retry_after < soonest)) {
          soonest = a.retry_after;
        }
      }
      if (soonest.count() > 0) {
        res.set_header("Retry-After", std::to_string((soonest.count() + 999) / 1000));
      }
    }
    send_error(res, e);
  }

  // Why this expert, as the headers and the trace say it: a named call's
  // "bypass"; "last_resort" when every expert the request could use was
  // cooling down and the invoke tried them anyway (the decision's own
  // reason, `none_eligible`, would say nobody answered).
  static std::string_view reason_shown(const InvokeResult& r, const ChatRequest& chat) {
    if (chat.bypass) return "bypass";
    if (r.last_resort) return "last_resort";
    return to_string(r.decision.reason);
  }

  // The answer's `torouter` member. Built in place with formats fmt
  // compiles, as it is made for every answer: a string per field and a
  // format parsed per call were a twentieth of a request's instructions.
  std::string trace_json(const InvokeResult& r, const ChatRequest& chat) const {
    std::string out;
    out.reserve(256 + 192 * r.attempts.size());
    auto to = std::back_inserter(out);
    out += "{\"expert\":";
    append_json_or_null(out, r.expert);
    out += ",\"routed_expert\":";
    // A named call has no routed pick (nor an X-Torouter-Routed-Expert).
    const Candidate* pick = chat.bypass ? nullptr : r.decision.pick();
    append_json_or_null(out, pick ? std::string_view(pick->name) : std::string_view());
    fmt::format_to(to, FMT_COMPILE(",\"reason\":\"{}\",\"lambda_cost\":"), reason_shown(r, chat));
    append_json_number(out, chat.lambda_cost);
    out += ",\"quality_floor\":";
    if (chat.quality_floor) {
      append_json_number(out, *chat.quality_floor);
    } else {
      out += "null";
    }
    out += ",\"model_version\":";
    append_json_string(out, r.decision.model_version);
    out += ",\"cost_usd\":";
    append_json_number(out, r.cost_usd);
    out += ",\"attempts\":[";
    for (const auto& a : r.attempts) {
      if (&a != &r.attempts.front()) out.push_back(',');
      out += "{\"expert\":";
      append_json_string(out, a.expert);
      fmt::format_to(
          to, FMT_COMPILE(",\"number\":{},\"outcome\":\"{}\",\"failure\":\"{}\",\"detail\":"),
          a.number, to_string(a.outcome), to_string(a.failure));
      append_json_string(out, client_detail(a));
      fmt::format_to(to, FMT_COMPILE(",\"waited_ms\":{},\"latency_ms\":{},\"cost_usd\":"),
                     a.waited.count(), a.latency.count());
      append_json_number(out, a.cost_usd);
      out.push_back('}');
    }
    out += "]}";
    return out;
  }

  // The candidate the headers describe: the expert that answered; without
  // an answer, the expert a named call asked for (not the router's pick,
  // which it never called), else the router's pick.
  const Candidate* described(const InvokeResult& r, const ChatRequest& chat,
                             std::string_view expert) const {
    if (!expert.empty()) return r.decision.find(expert);
    if (chat.bypass) return r.decision.find(router->experts()[chat.expert].name);
    return r.decision.pick();
  }

  void set_decision_headers(HttpResponse& res, const InvokeResult& r, const ChatRequest& chat,
                            std::string_view expert, int attempts) const {
    const Candidate* pick = r.decision.pick();
    const Candidate* shown = described(r, chat, expert);
    if (!expert.empty()) res.set_header("X-Torouter-Expert", expert);
    if (pick != nullptr && !chat.bypass) res.set_header("X-Torouter-Routed-Expert", pick->name);
    // Each value formatted in a buffer on the stack, with a format fmt
    // compiles: these headers go on every answer.
    fmt::memory_buffer value;
    const auto set = [&](std::string_view name) {
      res.set_header(name, std::string_view(value.data(), value.size()));
      value.clear();
    };
    if (shown != nullptr) {
      fmt::format_to(std::back_inserter(value), FMT_COMPILE("{:.4f}"), shown->predicted_quality);
      set("X-Torouter-Predicted-Quality");
      // For the routed pick only: a failover's expert was not picked as the
      // top, and a named call has no routed pick.
      if (shown == pick && !chat.bypass && std::isfinite(r.decision.expected_quality)) {
        fmt::format_to(std::back_inserter(value), FMT_COMPILE("{:.4f}"),
                       r.decision.expected_quality);
        set("X-Torouter-Expected-Quality");
      }
      fmt::format_to(std::back_inserter(value), FMT_COMPILE("{:.6g}"), shown->cost_usd);
      set("X-Torouter-Predicted-Cost-Usd");
    }
    res.set_header("X-Torouter-Reason", reason_shown(r, chat));
    fmt::format_to(std::back_inserter(value), FMT_COMPILE("{}"), attempts);
    set("X-Torouter-Attempts");
    fmt::format_to(std::back_inserter(value), FMT_COMPILE("{}"), chat.lambda_cost);
    set("X-Torouter-Lambda-Cost");
    if (chat.quality_floor) {
      fmt::format_to(std::back_inserter(value), FMT_COMPILE("{}"), *chat.quality_floor);
      set("X-Torouter-Quality-Floor");
    }
    res.set_header("X-Torouter-Model-Version", r.decision.model_version);
  }

  // An answer's id, which is also the decision log's and what feedback
  // names: 128 random bits, so ids never repeat across restarts and
  // replicas, and no client can guess another's to rate its calls.
  // The bytes come from a store per thread that OpenSSL refills 256 ids at
  // a time: each RAND_bytes call costs a system call (its fork check), one
  // per answer otherwise.
  static std::string completion_id() {
    constexpr std::size_t kIdBytes = 16;
    thread_local std::array<unsigned char, 256 * kIdBytes> store;
    thread_local std::size_t used = store.size();
    if (used == store.size()) {
      if (RAND_bytes(store.data(), static_cast<int>(store.size())) != 1) {
        throw Error("no random bytes for an answer id");
      }
      used = 0;
    }
    constexpr std::string_view kPrefix = "chatcmpl-torouter-";
    constexpr char kHex[] = "0123456789abcdef";
    std::string id(kPrefix.size() + 2 * kIdBytes, '\0');
    kPrefix.copy(id.data(), kPrefix.size());
    for (std::size_t i = 0; i < kIdBytes; ++i) {
      const unsigned char byte = store[used + i];
      id[kPrefix.size() + 2 * i] = kHex[byte >> 4];
      id[kPrefix.size() + 2 * i + 1] = kHex[byte & 0xF];
    }
    used += kIdBytes;
    return id;
  }

  void handle_chat(const HttpRequest& req, HttpResponse& res) {
    if (!authorized(req, res)) return;
    InFlightPlace place(chats_in_flight, config.max_requests_in_flight);
    if (!place) {
      ApiError e;
      e.status = 503;
      e.type = "server_error";
      e.code = "server_busy";
      e.message = fmt::format("the server is busy: {} chat requests are being routed or called",
                              config.max_requests_in_flight);
      res.set_header("Retry-After", "1");
      send_error(res, e);
      return;
    }
    ChatRequest chat;
    if (auto error =
            parse_chat_request(req.body, router->experts(), config.policy.lambda_cost, chat)) {
      send_error(res, *error);
      return;
    }
    if (chat.bypass && !config.named_calls) {
      ApiError e;
      e.status = 403;
      e.code = "named_calls_off";
      e.param = "model";
      e.message = fmt::format(
          "model \"{}\": this server does not take calls to a named expert (named_calls is "
          "false); use \"router\", \"router:<lambda>\" or \"router:q>=<floor>\"",
          router->experts()[chat.expert].name);
      send_error(res, e);
      return;
    }
    // Plain "router" takes the configured floor; headers and trace show it.
    if (!chat.bypass && !chat.lambda_given && !chat.quality_floor) {
      chat.quality_floor = config.policy.quality_floor;
    }
    auto x = std::make_shared<ChatExchange>(std::move(place));
    x->chat = std::move(chat);
    x->id = completion_id();  // the answer's id, and the decision log's
    x->created = static_cast<long long>(std::time(nullptr));
    // Routed here, and timed for /metrics: the invoke starts from this
    // decision (InvokeOptions::routed), and a stream's headers, which leave
    // before the invoke's result exists, show it.
    const auto routing = Clock::now();
    x->shown.decision = router->route(x->chat.routing_text, invoke_options(x->chat).route);
    metrics->observe_route(seconds_since(routing));
    x->res = res.defer();
    start_chat(x);
  }

  void finish_plain(ChatExchange& x, const InvokeResult& r) {
    HttpResponse& res = *x.res;
    const ChatRequest& chat = x.chat;
    const CallContext& call = x.call;
    set_decision_headers(res, r, chat, r.expert, calls_made(r));
    if (!r.ok()) {
      send_failed_invoke(res, r);
      res.finish();
      return;
    }
    fmt::memory_buffer cost;
    fmt::format_to(std::back_inserter(cost), FMT_COMPILE("{:.6g}"), r.cost_usd);
    res.set_header("X-Torouter-Cost-Usd", std::string_view(cost.data(), cost.size()));
    const std::size_t in =
        r.response.input_tokens > 0 ? r.response.input_tokens : chat.input_tokens;
    const std::size_t out =
        r.response.output_tokens > 0 ? r.response.output_tokens : estimate_tokens(r.response.text);
    // The upstream's choices, usage and other members go on as it sent
    // them (every choice of `n`, logprobs, reasoning, usage details); the
    // id, the model (the expert) and the trace are the server's.
    const openai::ChatAnswer& answer = *call.answer;
    const std::string choices =
        !answer.choices_json.empty() ? answer.choices_json : built_choices(r, answer);
    const std::string usage = usage_shown(r, answer, in, out);
    const std::string others =
        answer.other_members_json.empty() ? "" : "," + answer.other_members_json;
    const std::string trace = trace_json(r, chat);
    std::string body;
    body.reserve(128 + x.id.size() + r.expert.size() + choices.size() + usage.size() +
                 others.size() + trace.size());
    fmt::format_to(std::back_inserter(body),
                   FMT_COMPILE("{{\"id\":\"{}\",\"object\":\"chat.completion\",\"created\":{},"
                               "\"model\":"),
                   x.id, x.created);
    append_json_string(body, r.expert);
    fmt::format_to(std::back_inserter(body),
                   FMT_COMPILE(",\"choices\":{},\"usage\":{}{},\"torouter\":{}}}"), choices, usage,
                   others, trace);
    res.set_content(std::move(body), "application/json");
    res.finish();
  }

  // The choices of an answer whose upstream's own are not at hand.
  static std::string built_choices(const InvokeResult& r, const openai::ChatAnswer& answer) {
    // A message that only calls tools has null content, as OpenAI sends it.
    const bool calls_tools = !answer.tool_calls.empty();
    const std::string content =
        calls_tools && r.response.text.empty() ? "null" : json_string(r.response.text);
    const std::string tool_calls =
        calls_tools ? ",\"tool_calls\":" + tool_calls_json(answer.tool_calls, false) : "";
    return fmt::format(
        "[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{}{}}},"
        "\"finish_reason\":{}}}]",
        content, tool_calls, json_string(finish_reason_of(answer)));
  }

  static std::string usage_json(std::size_t in, std::size_t out) {
    return fmt::format(R"({{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{}}})", in,
                       out, in + out);
  }

  // The usage a client is shown: the upstream's as it sent it, details and
  // all, when its counts were read and believed; else the counts billed
  // (`in`, `out`, estimated where the upstream gave none, cut down where it
  // was not believed: `Attempt::usage_capped`).
  static std::string usage_shown(const InvokeResult& r, const openai::ChatAnswer& answer,
                                 std::size_t in, std::size_t out) {
    const bool counted = r.response.input_tokens > 0 && r.response.output_tokens > 0;
    const bool believed = r.attempts.empty() || !r.attempts.back().usage_capped;
    return counted && believed && !answer.usage_json.empty() ? answer.usage_json
                                                             : usage_json(in, out);
  }

  // A stream: its headers leave with the first piece of the answer, so they
  // can name the expert that answers; until then the router may fail over.
  // After it, a failure becomes an error event.
  void start_stream(ChatExchange& x, const InvokeResult& shown, std::string_view expert,
                    int attempts) {
    x.started = true;
    set_decision_headers(*x.res, shown, x.chat, expert, attempts);
    x.res->set_header("Cache-Control", "no-cache");
    x.res->start_stream("text/event-stream");
  }

  // `piece` is what an upstream event's choice tells the client, as JSON
  // members (`"delta":{"content":"Hi"}`: ChatCall::pieces_as_json).
  void stream_piece(ChatExchange& x, std::string_view piece) {
    const std::string& expert = router->experts()[x.call.current_expert].name;
    // Built in the exchange's own buffer, which keeps its capacity: a long
    // stream's events allocate nothing once it has warmed up.
    x.event.clear();
    if (!x.started) {
      // An answer though the decision had no eligible pick: the invoke's
      // last resort (the stream's result, which says so, comes at its end).
      x.shown.last_resort = x.shown.decision.pick() == nullptr;
      start_stream(x, x.shown, expert, x.call.upstream_calls);
      append_chunk_event(x.event, x.id, x.created, expert, kRoleDelta, "null", null_usage(x.chat));
    }
    append_chunk_event(x.event, x.id, x.created, expert, piece, "null", null_usage(x.chat));
    x.res->write(x.event);
  }

  void finish_stream(ChatExchange& x, const InvokeResult& r) {
    HttpResponse& res = *x.res;
    const bool role_sent = x.started;
    if (!x.started) {
      if (!r.ok()) {
        set_decision_headers(res, r, x.chat, r.expert, calls_made(r));
        send_failed_invoke(res, r);
        res.finish();
        return;
      }
      start_stream(x, r, r.expert, calls_made(r));
    }
    std::string tail;
    if (r.ok()) {
      const openai::ChatAnswer& answer = *x.call.answer;
      const std::vector<openai::ToolCall>& calls = answer.tool_calls;
      // The role goes in the first delta, when no content came before.
      std::string role = role_sent ? "" : "\"role\":\"assistant\"";
      if (!calls.empty()) {
        // Tool calls leave whole, once the upstream's stream has ended well:
        // until then the router may still fail over, and the client must
        // not see half a call from an expert that failed.
        tail += chunk_event(x.id, x.created, r.expert,
                            "\"delta\":{" + role + (role.empty() ? "" : ",") +
                                "\"tool_calls\":" + tool_calls_json(calls, true) + "}",
                            "null", null_usage(x.chat));
        role.clear();
      }
      const std::size_t in =
          r.response.input_tokens > 0 ? r.response.input_tokens : x.chat.input_tokens;
      const std::size_t out = r.response.output_tokens > 0 ? r.response.output_tokens
                                                           : estimate_tokens(r.response.text);
      const std::string usage = usage_shown(r, answer, in, out);
      const std::string others =
          answer.other_members_json.empty() ? "" : "," + answer.other_members_json;
      const std::string usage_member = fmt::format(",\"usage\":{}", usage);
      tail += chunk_event(
          x.id, x.created, r.expert, "\"delta\":{" + role + "}",
          json_string(finish_reason_of(answer)),
          fmt::format("{}{},\"torouter\":{}",
                      x.chat.include_usage ? kNullUsage : std::string_view(usage_member), others,
                      trace_json(r, x.chat)));
      if (x.chat.include_usage) tail += usage_event(x.id, x.created, r.expert, usage_member);
      tail += "data: [DONE]\n\n";
    } else {
      metrics->count_stream_broken();
      ApiError e = failed_invoke(r);
      e.code = "stream_broken";
      e.message = r.error_message;
      if (!r.attempts.empty()) e.message += ": " + client_detail(r.attempts.back());
      tail = "data: " + error_body(e) + "\n\n";
    }
    res.write(tail);
    res.finish();
  }

  void handle_models(const HttpRequest& req, HttpResponse& res) const {
    if (!authorized(req, res)) return;
    std::string data = model_object("router");
    for (const auto& e : router->experts().experts()) data += "," + model_object(e.name);
    res.set_content("{\"object\":\"list\",\"data\":[" + data + "]}", "application/json");
  }

  // GET /v1/models/{id}: one of the list's models, as OpenAI's retrieve
  // answers; "router:<...>" forms are not models of their own.
  void handle_model(const HttpRequest& req, HttpResponse& res) const {
    if (!authorized(req, res)) return;
    const std::string id = percent_decoded(req.path().substr(kModelsPrefix.size()));
    if (id == "router" || router->experts().index_of(id)) {
      return res.set_content(model_object(id), "application/json");
    }
    ApiError e;
    e.status = 404;
    e.code = "model_not_found";
    e.param = "model";
    e.message = fmt::format("The model '{}' does not exist", id);
    send_error(res, e);
  }

  // Open to load balancers without a key: then it says only that the
  // server is up (200 either way: every replica shares the upstreams, so
  // taking this one out of a pool would help nothing). With the key, the
  // experts' state and the model version, and "degraded" while no expert
  // can be called (each disabled or cooling down).
  void handle_health(const HttpRequest& req, HttpResponse& res) const {
    if (!has_key(req)) {
      res.set_content("{\"status\":\"ok\"}", "application/json");
      return;
    }
    std::string experts;
    bool any_callable = false;
    for (const auto& e : router->experts().experts()) {
      const ExpertStatus s = router->status(e.name);
      any_callable = any_callable || (s.enabled && !s.cooling_down);
      if (!experts.empty()) experts.push_back(',');
      experts += fmt::format("{{\"name\":{},\"enabled\":{},\"cooling_down\":{},\"in_flight\":{}}}",
                             json_string(e.name), s.enabled, s.cooling_down, s.in_flight);
    }
    const auto scorer = router->current_scorer();  // held while its version is read
    res.set_content(
        fmt::format("{{\"status\":\"{}\",\"model_version\":{},\"experts\":[{}]}}",
                    any_callable ? "ok" : "degraded", json_string(scorer->version()), experts),
        "application/json");
  }

  // What this server's calls spent (a shared store's `spent_usd` is the fleet's).
  double own_spend() const {
#ifdef TOROUTER_SERVER_WITH_REDIS
    if (redis_store) return redis_store->counters().own_spent_usd;
#endif
    return router->spent_usd();
  }

  // The shared store's health and the fleet's spend beside this replica's.
  std::string state_store_metrics() const {
#ifdef TOROUTER_SERVER_WITH_REDIS
    if (!redis_store) return {};
    const RedisStoreCounters c = redis_store->counters();
    std::string out =
        "# HELP torouter_fleet_spend_usd USD spent by every replica sharing the state store "
        "(as last read), and by this one.\n# TYPE torouter_fleet_spend_usd gauge\n";
    out += fmt::format("torouter_fleet_spend_usd{{scope=\"fleet\"}} {}\n", c.fleet_spent_usd);
    out += fmt::format("torouter_fleet_spend_usd{{scope=\"replica\"}} {}\n", c.own_spent_usd);
    out +=
        "# HELP torouter_state_store_connected 1 while Redis answers.\n"
        "# TYPE torouter_state_store_connected gauge\n";
    out += fmt::format("torouter_state_store_connected {}\n", c.connected ? 1 : 0);
    out +=
        "# HELP torouter_state_store_events_total What the Redis store did: connections "
        "made and lost, calls admitted by Redis or on local state, refused while failing "
        "closed, expired calls reclaimed, round trips.\n"
        "# TYPE torouter_state_store_events_total counter\n";
    for (const auto& [event, n] :
         {std::pair{"connected", c.connects}, std::pair{"disconnected", c.disconnects},
          std::pair{"admitted_shared", c.admitted_shared},
          std::pair{"admitted_local", c.admitted_local},
          std::pair{"refused_unavailable", c.refused_unavailable},
          std::pair{"reclaimed", c.reclaimed}, std::pair{"round_trip", c.round_trips}}) {
      out += fmt::format("torouter_state_store_events_total{{event=\"{}\"}} {}\n", event, n);
    }
    out +=
        "# HELP torouter_state_store_settlements_waiting Settlements held until Redis "
        "answers again.\n# TYPE torouter_state_store_settlements_waiting gauge\n";
    out += fmt::format("torouter_state_store_settlements_waiting {}\n", c.settlements_waiting);
    return out;
#else
    return {};
#endif
  }

  void handle_metrics(const HttpRequest& req, HttpResponse& res) const {
    if (!authorized(req, res)) return;
    std::string extra;
    extra +=
        "# HELP torouter_spend_usd_total USD spent on answered calls (routed and named) by "
        "this server.\n"
        "# TYPE torouter_spend_usd_total counter\n";
    extra += fmt::format("torouter_spend_usd_total {}\n", own_spend());
    extra +=
        "# HELP torouter_model_reloads_total Reloads of the router model (SIGHUP, "
        "POST /admin/reload), by outcome.\n# TYPE torouter_model_reloads_total counter\n";
    extra +=
        fmt::format("torouter_model_reloads_total{{outcome=\"done\"}} {}\n", reloads_done.load());
    extra += fmt::format("torouter_model_reloads_total{{outcome=\"refused\"}} {}\n",
                         reloads_refused.load());
    if (decision_log) {
      extra +=
          "# HELP torouter_decision_log_lines_total Decision log lines written, and dropped "
          "because its queue was full.\n# TYPE torouter_decision_log_lines_total counter\n";
      extra += fmt::format("torouter_decision_log_lines_total{{outcome=\"written\"}} {}\n",
                           decision_log->written());
      extra += fmt::format("torouter_decision_log_lines_total{{outcome=\"dropped\"}} {}\n",
                           decision_log->dropped());
    }
    if (std::isfinite(config.router.budget_usd)) {
      extra +=
          "# HELP torouter_budget_usd The router's budget.\n# TYPE torouter_budget_usd gauge\n";
      extra += fmt::format("torouter_budget_usd {}\n", config.router.budget_usd);
    }
    extra += state_store_metrics();
    extra += fmt::format(
        "# HELP torouter_invokes_waiting_for_slot Requests waiting for an expert's capacity "
        "slot (max_concurrent_calls; capacity_wait_ms).\n"
        "# TYPE torouter_invokes_waiting_for_slot gauge\ntorouter_invokes_waiting_for_slot {}\n",
        router->invokes_waiting_for_slot());
    extra +=
        "# HELP torouter_expert_in_flight Upstream calls in flight, per expert.\n"
        "# TYPE torouter_expert_in_flight gauge\n";
    std::string cooling =
        "# HELP torouter_expert_cooling_down 1 while an expert rests after repeated failures.\n"
        "# TYPE torouter_expert_cooling_down gauge\n";
    for (const auto& e : router->experts().experts()) {
      const ExpertStatus s = router->status(e.name);
      extra += fmt::format("torouter_expert_in_flight{{expert={}}} {}\n", json_string(e.name),
                           s.in_flight);
      cooling += fmt::format("torouter_expert_cooling_down{{expert={}}} {}\n", json_string(e.name),
                             s.cooling_down ? 1 : 0);
    }
    res.set_content(metrics->render(extra + cooling), "text/plain; version=0.0.4");
  }

  void handle(const HttpRequest& req, HttpResponse& res) {
    const std::string_view path = req.path();
    const std::string& method = req.method;
    // HEAD is GET without the body, which the HTTP layer leaves out.
    const bool get = method == "GET" || method == "HEAD";
    const bool post = method == "POST";
    if (path == "/v1/chat/completions" && post) return handle_chat(req, res);
    if (path == "/v1/models" && get) return handle_models(req, res);
    if (is_model_path(path) && get) return handle_model(req, res);
    if (path == "/health" && get) return handle_health(req, res);
    if (path == "/metrics" && get) return handle_metrics(req, res);
    if (path == "/admin/reload" && post) return handle_reload(req, res);
    if (path == "/v1/feedback" && post) return handle_feedback(req, res);
    ApiError e;
    e.status = 404;
    e.code = "not_found";
    e.message = fmt::format("no endpoint {} {}", method, path);
    if (const std::string_view allow = methods_of(path); !allow.empty()) {
      // The endpoint exists, for other methods (RFC 9110, section 15.5.6).
      e.status = 405;
      e.code = "method_not_allowed";
      e.message = fmt::format("{} takes {}, not {}", path, allow, method);
      res.set_header("Allow", allow);
    }
    send_error(res, e);
  }

  // The answer to a request the HTTP layer refused, or to a handler that threw.
  static std::string refusal(int status, std::string_view message) {
    ApiError e;
    e.status = status;
    e.type = status >= 500 ? "server_error" : "invalid_request_error";
    e.message = std::string(message);
    switch (status) {
      case 408:
        e.code = "request_timeout";
        break;
      case 413:
        e.code = "request_too_large";
        break;
      case 414:
        e.code = "uri_too_long";
        break;
      case 431:
        e.code = "request_headers_too_large";
        break;
      case 500:
        e.code = "internal_error";
        break;
      case 501:
        e.code = "not_implemented";
        break;
      case 503:
        e.code = "server_busy";
        break;
      default:
        e.code = "bad_request";
        break;
    }
    return error_body(e);
  }

  // Descriptors the server needs besides its connections: what it holds
  // now, the listener's, its I/O threads' (Asio opens them with a thread's
  // first socket or timer, after this count), each expert's pool of idle
  // upstream connections (an expert no longer picked keeps its pool), the
  // connections being refused past the cap (kMostRefusalsAtOnce), and a
  // spare few (open_files.hpp).
  std::size_t reserved_descriptors() const {
    const std::size_t open = open_descriptors();
    std::size_t reserved = (open > 0 ? open : kDescriptorsWhenUncounted) + 1 + kSpareDescriptors;
    reserved += kDescriptorsPerIoThread * io_threads + kMostRefusalsAtOnce;
    for (const auto& expert : config.experts) reserved += expert.upstream.max_idle_connections;
    return reserved;
  }

  // `listen.max_connections`, lowered (and said so) to what the limit on
  // open files holds.
  std::size_t connection_cap() const {
    const std::size_t limit = open_file_limit();
    const std::size_t reserved = reserved_descriptors();
    const std::size_t within = connections_within(limit, reserved);
    if (within == 0 || config.max_connections <= within) return config.max_connections;
    std::cerr << fmt::format(
        "torouter-server: listen.max_connections lowered from {} to {}: the process may open "
        "{} files, and each connection may need two (its client's and its upstream's) besides "
        "{} for the rest (open now, I/O threads, idle upstream pools, refusals past the cap, "
        "spare); raise the limit "
        "(ulimit -n, systemd's LimitNOFILE=) to hold more\n",
        config.max_connections, within, limit, reserved);
    return within;
  }

  void setup_http() {
    HttpServerOptions options;
    options.threads = config.threads;
    options.io = io;
    // Every handler answers at once or defers: none waits on an upstream.
    options.handlers_never_block = true;
    options.max_connections = connection_cap();
    options.idle_timeout = config.idle_timeout;
    options.tls_cert_file = config.tls_cert_file;
    options.tls_key_file = config.tls_key_file;
    options.max_queued_requests = config.max_queued_requests;
    options.max_queued_answer_bytes = config.max_queued_answer_bytes;
    options.max_queued_answer_bytes_total = config.max_queued_answer_bytes_total;
    options.max_body_bytes = config.max_request_bytes;
    // Every route that takes a body needs a key: without one, the 401
    // comes before the body, not after a 100 Continue asked for it.
    options.wants_body = [this](const HttpRequest& head) { return has_key(head); };
    http = std::make_unique<HttpServer>(
        options, [this](const HttpRequest& req, HttpResponse& res) { handle(req, res); }, refusal,
        [this](int status) { metrics->count_response(status); });
  }
};

RouterServer::RouterServer(ServerConfig config)
    : impl_(std::make_unique<Impl>(std::move(config))) {}

RouterServer::~RouterServer() = default;

int RouterServer::bind() {
  const ServerConfig& c = impl_->config;
  std::string error;
  const int port = impl_->http->bind(c.host, c.port, error);
  if (port < 0) {
    throw Error(
        fmt::format("{}: listen: cannot listen on {}:{}: {}", c.origin, c.host, c.port, error));
  }
  impl_->port = port;
  return port;
}

void RouterServer::run() { impl_->http->run(); }

int RouterServer::start() {
  const int port = bind();
  impl_->thread = std::thread([this] { impl_->http->run(); });
  return port;
}

void RouterServer::stop() { impl_->stop(); }

const ServerConfig& RouterServer::config() const { return impl_->config; }

std::size_t RouterServer::requests_in_flight() const { return impl_->chats_in_flight.load(); }

ReloadOutcome RouterServer::reload() { return impl_->reload(); }

}  // namespace torouter::server
