#include "stand_in_upstream.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <thread>

#include "http_server.hpp"
#include "json_text.hpp"
#include "torouter/cost_model.hpp"

namespace torouter::server {

struct StandInUpstream::State {
  std::string name;
  std::size_t threads;
  bool secure = false;  // serves HTTPS
  std::unique_ptr<HttpServer> server;
  std::thread thread;
  std::atomic<int> port{-1};
  std::atomic<std::size_t> requests{0};
  std::atomic<std::size_t> streams_cut{0};
  mutable std::mutex mutex;
  StandInBehaviour behaviour;
  std::deque<StandInBehaviour> queued;
  std::string last_body;
  std::string last_authorization;

  void answer(const HttpRequest& req, HttpResponse& res);

  StandInBehaviour next(const HttpRequest& request) {
    std::lock_guard<std::mutex> lock(mutex);
    last_body = request.body;
    last_authorization = std::string(request.header("authorization"));
    if (queued.empty()) return behaviour;
    StandInBehaviour b = std::move(queued.front());
    queued.pop_front();
    return b;
  }
};

namespace {

// The last user message's text (string content only), and the model asked for.
struct Asked {
  std::string model;
  std::string prompt;
  bool stream = false;
  bool valid = false;
};

Asked read_request(const std::string& body) {
  Asked asked;
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body).get(doc)) return asked;
  std::string_view text;
  if (!doc["model"].get(text)) asked.model = std::string(text);
  bool stream = false;
  if (!doc["stream"].get(stream)) asked.stream = stream;
  simdjson::dom::array messages;
  if (doc["messages"].get(messages)) return asked;
  for (simdjson::dom::element m : messages) {
    std::string_view role;
    if (!m["role"].get(role) && role == "user" && !m["content"].get(text)) {
      asked.prompt = std::string(text);
    }
  }
  asked.valid = true;
  return asked;
}

// A stream event whose delta holds `delta_fields` (JSON members, no braces).
std::string delta_event(std::string_view model, std::string_view delta_fields) {
  return fmt::format(
      "data: {{\"id\":\"chatcmpl-standin\",\"object\":\"chat.completion.chunk\",\"created\":0,"
      "\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{{}}},"
      "\"finish_reason\":null}}]}}\n\n",
      detail::json_string(model), delta_fields);
}

std::string chunk_event(std::string_view model, std::string_view content, bool first) {
  return delta_event(model, fmt::format("{}\"content\":{}", first ? "\"role\":\"assistant\"," : "",
                                        detail::json_string(content)));
}

// A whole tool call as the message of a plain answer lists it.
std::string tool_call_json(const openai::ToolCall& call) {
  return fmt::format("{{\"id\":{},\"type\":{},\"function\":{{\"name\":{},\"arguments\":{}}}}}",
                     detail::json_string(call.id), detail::json_string(call.type),
                     detail::json_string(call.name), detail::json_string(call.arguments));
}

// The stream events of tool calls: each call's id, type and name with the
// first half of its arguments, then the second half, as upstreams stream them.
std::vector<std::string> tool_call_events(std::string_view model,
                                          const std::vector<openai::ToolCall>& calls) {
  std::vector<std::string> events;
  for (std::size_t i = 0; i < calls.size(); ++i) {
    const openai::ToolCall& call = calls[i];
    const std::size_t half = call.arguments.size() / 2;
    events.push_back(
        delta_event(model, fmt::format("{}\"tool_calls\":[{{\"index\":{},\"id\":{},\"type\":{},"
                                       "\"function\":{{\"name\":{},\"arguments\":{}}}}}]",
                                       i == 0 ? "\"role\":\"assistant\",\"content\":null," : "", i,
                                       detail::json_string(call.id), detail::json_string(call.type),
                                       detail::json_string(call.name),
                                       detail::json_string(call.arguments.substr(0, half)))));
    events.push_back(delta_event(
        model, fmt::format("\"tool_calls\":[{{\"index\":{},\"function\":{{\"arguments\":{}}}}}]", i,
                           detail::json_string(call.arguments.substr(half)))));
  }
  return events;
}

}  // namespace

StandInUpstream::StandInUpstream(std::string name, std::size_t threads, std::string tls_cert_file,
                                 std::string tls_key_file)
    : state_(std::make_unique<State>()) {
  state_->name = std::move(name);
  state_->threads = threads;
  State* s = state_.get();
  HttpServerOptions options;
  options.threads = threads;
  options.max_body_bytes = 64 << 20;
  state_->secure = !tls_cert_file.empty();
  options.tls_cert_file = std::move(tls_cert_file);
  options.tls_key_file = std::move(tls_key_file);
  auto refusal = [](int, std::string_view message) {
    return fmt::format("{{\"error\":{{\"message\":{},\"type\":\"invalid_request_error\"}}}}",
                       detail::json_string(message));
  };
  s->server = std::make_unique<HttpServer>(
      options, [s](const HttpRequest& req, HttpResponse& res) { s->answer(req, res); }, refusal,
      [](int) {});
}

void StandInUpstream::State::answer(const HttpRequest& req, HttpResponse& res) {
  State* s = this;
  if (req.method != "POST" || req.path() != "/v1/chat/completions") {
    res.status = 404;
    res.set_content(
        "{\"error\":{\"message\":\"stand-in: no such "
        "endpoint\",\"type\":\"invalid_request_error\"}}",
        "application/json");
    return;
  }
  {
    s->requests.fetch_add(1);
    const StandInBehaviour b = s->next(req);
    if (b.delay.count() > 0) std::this_thread::sleep_for(b.delay);
    const Asked asked = read_request(req.body);
    if (!asked.valid) {
      res.status = 400;
      res.set_content(
          "{\"error\":{\"message\":\"stand-in: bad request\",\"type\":\"invalid_request_error\"}}",
          "application/json");
      return;
    }
    if (b.kind == StandInBehaviour::Kind::Status) {
      res.status = b.status;
      if (!b.retry_after.empty()) res.set_header("Retry-After", b.retry_after);
      res.set_content(b.body.empty()
                          ? fmt::format("{{\"error\":{{\"message\":\"stand-in {} says {}\","
                                        "\"type\":\"server_error\"}}}}",
                                        s->name, b.status)
                          : b.body,
                      "application/json");
      return;
    }
    if (b.kind == StandInBehaviour::Kind::Drop ||
        (b.kind == StandInBehaviour::Kind::DropMidStream && !asked.stream)) {
      res.start_stream("application/json");
      res.abort();
      return;
    }
    const std::string model = asked.model.empty() ? s->name : asked.model;
    const bool calls_tools = !b.tool_calls.empty();
    const std::string answer = calls_tools ? "" : model + " answers: " + asked.prompt;
    const std::string finish_reason = !b.finish_reason.empty() ? b.finish_reason
                                      : calls_tools            ? "tool_calls"
                                                               : "stop";
    const std::size_t in_tokens = estimate_tokens(asked.prompt);
    const std::size_t out_tokens = estimate_tokens(answer) + b.tool_calls.size() * 10;
    if (!asked.stream) {
      std::string tool_calls;
      for (const auto& call : b.tool_calls) {
        tool_calls += (tool_calls.empty() ? ",\"tool_calls\":[" : ",") + tool_call_json(call);
      }
      if (calls_tools) tool_calls.push_back(']');
      res.set_content(
          fmt::format(
              "{{\"id\":\"chatcmpl-standin\",\"object\":\"chat.completion\",\"created\":0,"
              "\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\","
              "\"content\":{}{}}},\"finish_reason\":{}}}],\"usage\":{{\"prompt_tokens\":{},"
              "\"completion_tokens\":{},\"total_tokens\":{}}}}}",
              detail::json_string(model), calls_tools ? "null" : detail::json_string(answer),
              tool_calls, detail::json_string(finish_reason), in_tokens, out_tokens,
              in_tokens + out_tokens),
          "application/json");
      return;
    }
    // Streamed: the answer in `chunks` pieces, or the tool
    // calls in pieces, then the finish reason and [DONE].
    std::vector<std::string> events = tool_call_events(model, b.tool_calls);
    // Exactly `chunks` pieces (fewer only for a shorter answer), so a
    // stream lasts the same whatever the model's name.
    const std::size_t pieces =
        std::min(answer.size(), static_cast<std::size_t>(std::max(1, b.chunks)));
    for (std::size_t k = 0; k < pieces; ++k) {
      const std::size_t from = k * answer.size() / pieces;
      const std::size_t to = (k + 1) * answer.size() / pieces;
      events.push_back(chunk_event(model, answer.substr(from, to - from), k == 0));
    }
    if (!res.start_stream("text/event-stream")) return;
    for (std::size_t i = 0; i < events.size(); ++i) {
      if (b.kind == StandInBehaviour::Kind::DropMidStream && i + 1 == events.size()) {
        res.abort();
        return;
      }
      if (i > 0 && b.chunk_gap.count() > 0) std::this_thread::sleep_for(b.chunk_gap);
      if (!res.write(events[i])) {
        ++s->streams_cut;  // the caller went away
        return;
      }
    }
    res.write(
        fmt::format("data: {{\"id\":\"chatcmpl-standin\",\"object\":\"chat.completion.chunk\","
                    "\"created\":0,\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{}},"
                    "\"finish_reason\":{}}}],\"usage\":{{\"prompt_tokens\":{},"
                    "\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
                    detail::json_string(model), detail::json_string(finish_reason), in_tokens,
                    out_tokens, in_tokens + out_tokens));
  }
}

StandInUpstream::~StandInUpstream() { stop(); }

int StandInUpstream::start(int port) {
  State* s = state_.get();
  std::string error;
  const int bound = s->server->bind("127.0.0.1", port, error);
  if (bound < 0) return -1;
  s->port = bound;
  s->thread = std::thread([s] { s->server->run(); });
  return bound;
}

bool StandInUpstream::run(int port) {
  std::string error;
  const int bound = state_->server->bind("127.0.0.1", port, error);
  if (bound < 0) return false;
  state_->port = bound;
  state_->server->run();
  return true;
}

void StandInUpstream::stop() {
  state_->server->stop();
  if (state_->thread.joinable()) state_->thread.join();
}

void StandInUpstream::set_behaviour(StandInBehaviour behaviour) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->behaviour = std::move(behaviour);
}

void StandInUpstream::push_behaviour(StandInBehaviour behaviour) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->queued.push_back(std::move(behaviour));
}

std::string StandInUpstream::base_url() const {
  return fmt::format("{}://127.0.0.1:{}/v1", state_->secure ? "https" : "http",
                     state_->port.load());
}
int StandInUpstream::port() const { return state_->port.load(); }
std::size_t StandInUpstream::requests() const { return state_->requests.load(); }

std::size_t StandInUpstream::streams_cut() const { return state_->streams_cut.load(); }

std::string StandInUpstream::last_body() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->last_body;
}

std::string StandInUpstream::last_authorization() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->last_authorization;
}

}  // namespace torouter::server
