#include "stand_in_upstream.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <atomic>
#include <boost/asio/steady_timer.hpp>
#include <deque>
#include <mutex>
#include <thread>

#include "http_server.hpp"
#include "json_text.hpp"
#include "openai/io_threads.hpp"
#include "torouter/cost_model.hpp"

namespace torouter::server {

namespace {

// Answers in flight at a stand-in, and the most at once, so tests can check
// the caps of the routers in front of it.
struct InFlight {
  std::atomic<std::size_t> now{0};
  std::atomic<std::size_t> most{0};
  void enter() {
    const std::size_t n = ++now;
    for (std::size_t seen = most.load(); n > seen && !most.compare_exchange_weak(seen, n);) {
    }
  }
  void leave() { --now; }
};

}  // namespace

struct StandInUpstream::State {
  std::string name;
  bool secure = false;  // serves HTTPS
  std::shared_ptr<openai::IoThreads> io;
  std::unique_ptr<HttpServer> server;
  std::thread thread;
  std::atomic<int> port{-1};
  std::atomic<std::size_t> requests{0};
  std::atomic<std::size_t> streams_cut{0};
  // Answers being sent (a ReplySender lives as long as its answer).
  std::shared_ptr<InFlight> in_flight = std::make_shared<InFlight>();
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

// An OpenAI-style error object.
std::string error_body(std::string_view message, std::string_view type) {
  return fmt::format("{{\"error\":{{\"message\":{},\"type\":{}}}}}", detail::json_string(message),
                     detail::json_string(type));
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
  state_->io = std::make_shared<openai::IoThreads>(threads);
  State* s = state_.get();
  HttpServerOptions options;
  options.io = state_->io;
  options.handlers_never_block = true;  // a reply waits on timers
  options.max_body_bytes = 64 << 20;
  state_->secure = !tls_cert_file.empty();
  options.tls_cert_file = std::move(tls_cert_file);
  options.tls_key_file = std::move(tls_key_file);
  auto refusal = [](int, std::string_view message) {
    return error_body(message, "invalid_request_error");
  };
  s->server = std::make_unique<HttpServer>(
      options, [s](const HttpRequest& req, HttpResponse& res) { s->answer(req, res); }, refusal,
      [](int) {});
}

namespace {

// What the stand-in sends for one request, decided when it arrives.
struct Reply {
  StandInBehaviour behaviour;
  std::string content;              // a whole answer's body
  std::vector<std::string> events;  // a streamed answer's pieces, in order
  bool stream = false;
};

// Sends a `Reply` on the I/O thread's timers, holding no thread while it
// waits: its delay first, then a whole answer, or a stream's pieces
// `chunk_gap` apart.
class ReplySender : public std::enable_shared_from_this<ReplySender> {
 public:
  ReplySender(std::shared_ptr<HttpResponse> response, Reply reply, boost::asio::io_context& context,
              std::atomic<std::size_t>& streams_cut, std::shared_ptr<InFlight> in_flight)
      : response_(std::move(response)),
        reply_(std::move(reply)),
        timer_(context),
        streams_cut_(streams_cut),
        in_flight_(std::move(in_flight)) {
    in_flight_->enter();
  }
  ~ReplySender() { in_flight_->leave(); }
  ReplySender(const ReplySender&) = delete;
  ReplySender& operator=(const ReplySender&) = delete;

  void start() {
    after(reply_.behaviour.delay, [](ReplySender& self) { self.begin(); });
  }

 private:
  using Kind = StandInBehaviour::Kind;

  template <class Step>
  void after(std::chrono::milliseconds wait, Step step) {
    if (wait.count() <= 0) {
      step(*this);
      return;
    }
    timer_.expires_after(wait);
    timer_.async_wait(
        [self = shared_from_this(), step](const boost::system::error_code&) { step(*self); });
  }

  void begin() {
    const StandInBehaviour& b = reply_.behaviour;
    HttpResponse& res = *response_;
    if (b.kind == Kind::Status) {
      res.status = b.status;
      if (!b.retry_after.empty()) res.set_header("Retry-After", b.retry_after);
      res.set_content(reply_.content, "application/json");
      res.finish();
    } else if (b.kind == Kind::Drop || (b.kind == Kind::DropMidStream && !reply_.stream)) {
      res.start_stream("application/json");
      res.abort();
    } else if (!reply_.stream) {
      res.set_content(reply_.content, "application/json");
      res.finish();
    } else if (res.start_stream("text/event-stream")) {
      send(0);
    }
  }

  // Sends piece `i` and what follows it.
  void send(std::size_t i) {
    HttpResponse& res = *response_;
    const bool last = i + 1 == reply_.events.size();
    if (reply_.behaviour.kind == Kind::DropMidStream && i + 2 == reply_.events.size()) {
      res.abort();  // the last piece of text (and the end) never come
      return;
    }
    if (!res.write(reply_.events[i])) {
      ++streams_cut_;  // the caller went away
      res.abort();
      return;
    }
    if (last) {
      res.finish();
      return;
    }
    // The end (usage and [DONE]) follows the last piece of text at once.
    const bool next_is_end = i + 2 == reply_.events.size();
    after(next_is_end ? std::chrono::milliseconds(0) : reply_.behaviour.chunk_gap,
          [i](ReplySender& self) { self.send(i + 1); });
  }

  std::shared_ptr<HttpResponse> response_;
  Reply reply_;
  boost::asio::steady_timer timer_;
  std::atomic<std::size_t>& streams_cut_;
  std::shared_ptr<InFlight> in_flight_;
};

// The streamed answer's pieces: the thinking, then the text in `chunks`
// pieces, or the tool calls in pieces, then the end (finish reason, usage
// and [DONE]).
std::vector<std::string> stream_events(const StandInBehaviour& b, const std::string& model,
                                       const std::string& answer, std::string_view finish_reason,
                                       std::size_t in_tokens, std::size_t out_tokens) {
  std::vector<std::string> events;
  for (int k = 0; k < b.reasoning_chunks; ++k) {
    events.push_back(delta_event(model, k == 0 ? R"("role":"assistant","reasoning_content":"Hm.")"
                                               : R"("reasoning_content":" Hm.")"));
  }
  for (auto& event : tool_call_events(model, b.tool_calls)) events.push_back(std::move(event));
  // Exactly `chunks` pieces (fewer only for a shorter answer), so a
  // stream lasts the same whatever the model's name.
  const std::size_t pieces =
      std::min(answer.size(), static_cast<std::size_t>(std::max(1, b.chunks)));
  for (std::size_t k = 0; k < pieces; ++k) {
    const std::size_t from = k * answer.size() / pieces;
    const std::size_t to = (k + 1) * answer.size() / pieces;
    events.push_back(chunk_event(model, answer.substr(from, to - from), k == 0));
  }
  events.push_back(
      fmt::format("data: {{\"id\":\"chatcmpl-standin\",\"object\":\"chat.completion.chunk\","
                  "\"created\":0,\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{}},"
                  "\"finish_reason\":{}}}],\"usage\":{{\"prompt_tokens\":{},"
                  "\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
                  detail::json_string(model), detail::json_string(finish_reason), in_tokens,
                  out_tokens, in_tokens + out_tokens));
  return events;
}

// A plain answer's body.
std::string whole_answer(const StandInBehaviour& b, const std::string& model,
                         const std::string& answer, std::string_view finish_reason,
                         std::size_t in_tokens, std::size_t out_tokens) {
  const bool calls_tools = !b.tool_calls.empty();
  std::string tool_calls;
  for (const auto& call : b.tool_calls) {
    tool_calls += (tool_calls.empty() ? ",\"tool_calls\":[" : ",") + tool_call_json(call);
  }
  if (calls_tools) tool_calls.push_back(']');
  return fmt::format(
      "{{\"id\":\"chatcmpl-standin\",\"object\":\"chat.completion\",\"created\":0,"
      "\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\","
      "\"content\":{}{}}},\"finish_reason\":{}}}],\"usage\":{{\"prompt_tokens\":{},"
      "\"completion_tokens\":{},\"total_tokens\":{}}}}}",
      detail::json_string(model), calls_tools ? "null" : detail::json_string(answer), tool_calls,
      detail::json_string(finish_reason), in_tokens, out_tokens, in_tokens + out_tokens);
}

}  // namespace

namespace {

// What to send for a request (`asked`) that `b` says how to answer.
Reply reply_to(const std::string& name, const Asked& asked, StandInBehaviour b) {
  Reply reply;
  reply.stream = asked.stream;
  if (b.kind == StandInBehaviour::Kind::Status) {
    reply.content = !b.body.empty() ? b.body
                                    : error_body(fmt::format("stand-in {} says {}", name, b.status),
                                                 "server_error");
  } else if (b.kind == StandInBehaviour::Kind::Answer ||
             b.kind == StandInBehaviour::Kind::DropMidStream) {
    const std::string model = asked.model.empty() ? name : asked.model;
    const std::string answer = b.tool_calls.empty() ? model + " answers: " + asked.prompt : "";
    const std::string finish_reason = !b.finish_reason.empty() ? b.finish_reason
                                      : b.tool_calls.empty()   ? "stop"
                                                               : "tool_calls";
    const std::size_t in_tokens = estimate_tokens(asked.prompt);
    const std::size_t out_tokens = estimate_tokens(answer) + b.tool_calls.size() * 10;
    if (asked.stream) {
      reply.events = !b.verbatim_events.empty()
                         ? b.verbatim_events
                         : stream_events(b, model, answer, finish_reason, in_tokens, out_tokens);
    } else {
      reply.content = !b.verbatim_body.empty()
                          ? b.verbatim_body
                          : whole_answer(b, model, answer, finish_reason, in_tokens, out_tokens);
    }
  }
  reply.behaviour = std::move(b);
  return reply;
}

}  // namespace

void StandInUpstream::State::answer(const HttpRequest& req, HttpResponse& res) {
  if (req.method != "POST" || req.path() != "/v1/chat/completions") {
    res.status = 404;
    res.set_content(error_body("stand-in: no such endpoint", "invalid_request_error"),
                    "application/json");
    return;
  }
  requests.fetch_add(1);
  StandInBehaviour behaviour = next(req);
  const Asked asked = read_request(req.body);
  if (!asked.valid) {
    res.status = 400;
    res.set_content(error_body("stand-in: bad request", "invalid_request_error"),
                    "application/json");
    return;
  }
  // The handler runs on an I/O thread (`handlers_never_block`): its
  // context runs the reply's timers.
  std::make_shared<ReplySender>(res.defer(), reply_to(name, asked, std::move(behaviour)),
                                io->impl().context(), streams_cut, in_flight)
      ->start();
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
std::size_t StandInUpstream::in_flight() const { return state_->in_flight->now.load(); }
std::size_t StandInUpstream::most_in_flight() const { return state_->in_flight->most.load(); }

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
