#include "stand_in_upstream.hpp"

#include <fmt/format.h>
#include <httplib.h>
#include <simdjson.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <thread>

#include "json_text.hpp"
#include "listener.hpp"
#include "torouter/cost_model.hpp"

namespace torouter::server {

struct StandInUpstream::State {
  std::string name;
  std::size_t threads;
  Listener server;
  std::thread thread;
  std::atomic<int> port{-1};
  std::atomic<std::size_t> requests{0};
  mutable std::mutex mutex;
  StandInBehaviour behaviour;
  std::deque<StandInBehaviour> queued;
  std::string last_body;
  std::string last_authorization;

  StandInBehaviour next(const httplib::Request& request) {
    std::lock_guard<std::mutex> lock(mutex);
    last_body = request.body;
    last_authorization = request.get_header_value("Authorization");
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

std::string chunk_event(std::string_view model, std::string_view content, bool first) {
  return fmt::format(
      "data: {{\"id\":\"chatcmpl-standin\",\"object\":\"chat.completion.chunk\",\"created\":0,"
      "\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{{}\"content\":{}}},"
      "\"finish_reason\":null}}]}}\n\n",
      detail::json_string(model), first ? "\"role\":\"assistant\"," : "",
      detail::json_string(content));
}

}  // namespace

StandInUpstream::StandInUpstream(std::string name, std::size_t threads)
    : state_(std::make_unique<State>()) {
  state_->name = std::move(name);
  state_->threads = threads;
  State* s = state_.get();
  s->server.new_task_queue = [s] { return new httplib::ThreadPool(s->threads); };
  s->server.set_tcp_nodelay(true);
  s->server.set_keep_alive_max_count(100000);
  s->server.Post("/v1/chat/completions", [s](const httplib::Request& req, httplib::Response& res) {
    s->requests.fetch_add(1);
    const StandInBehaviour b = s->next(req);
    if (b.delay.count() > 0) std::this_thread::sleep_for(b.delay);
    const Asked asked = read_request(req.body);
    if (!asked.valid) {
      res.status = 400;
      res.set_content("{\"error\":{\"message\":\"stand-in: bad request\",\"type\":\"invalid_request_error\"}}",
                      "application/json");
      return;
    }
    if (b.kind == StandInBehaviour::Kind::Status) {
      res.status = b.status;
      if (!b.retry_after.empty()) res.set_header("Retry-After", b.retry_after);
      res.set_content(b.body.empty() ? fmt::format("{{\"error\":{{\"message\":\"stand-in {} says {}\","
                                                   "\"type\":\"server_error\"}}}}",
                                                   s->name, b.status)
                                     : b.body,
                      "application/json");
      return;
    }
    if (b.kind == StandInBehaviour::Kind::Drop ||
        (b.kind == StandInBehaviour::Kind::DropMidStream && !asked.stream)) {
      res.set_content_provider(1000, "application/json",
                               [](std::size_t, std::size_t, httplib::DataSink&) { return false; });
      return;
    }
    const std::string model = asked.model.empty() ? s->name : asked.model;
    const std::string answer = model + " answers: " + asked.prompt;
    const std::size_t in_tokens = estimate_tokens(asked.prompt);
    const std::size_t out_tokens = estimate_tokens(answer);
    if (!asked.stream) {
      res.set_content(
          fmt::format("{{\"id\":\"chatcmpl-standin\",\"object\":\"chat.completion\",\"created\":0,"
                      "\"model\":{},\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\","
                      "\"content\":{}}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":{},"
                      "\"completion_tokens\":{},\"total_tokens\":{}}}}}",
                      detail::json_string(model), detail::json_string(answer), in_tokens, out_tokens,
                      in_tokens + out_tokens),
          "application/json");
      return;
    }
    // Streamed: the answer in `chunks` pieces (cut at spaces), then [DONE].
    const int pieces = std::max(1, b.chunks);
    auto parts = std::make_shared<std::vector<std::string>>();
    const std::size_t step = answer.size() / static_cast<std::size_t>(pieces) + 1;
    for (std::size_t at = 0; at < answer.size(); at += step) parts->push_back(answer.substr(at, step));
    const bool drop = b.kind == StandInBehaviour::Kind::DropMidStream;
    const std::chrono::milliseconds gap = b.chunk_gap;
    res.set_chunked_content_provider(
        "text/event-stream",
        [parts, model, drop, gap, in_tokens, out_tokens](std::size_t, httplib::DataSink& sink) {
          for (std::size_t i = 0; i < parts->size(); ++i) {
            if (drop && i + 1 == parts->size()) return false;
            if (i > 0 && gap.count() > 0) std::this_thread::sleep_for(gap);
            const std::string event = chunk_event(model, (*parts)[i], i == 0);
            if (!sink.write(event.data(), event.size())) return false;
          }
          const std::string tail = fmt::format(
              "data: {{\"id\":\"chatcmpl-standin\",\"object\":\"chat.completion.chunk\","
              "\"created\":0,\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{}},"
              "\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":{},"
              "\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
              detail::json_string(model), in_tokens, out_tokens, in_tokens + out_tokens);
          sink.write(tail.data(), tail.size());
          sink.done();
          return true;
        });
  });
}

StandInUpstream::~StandInUpstream() { stop(); }

int StandInUpstream::start(int port) {
  State* s = state_.get();
  const int bound = port == 0 ? s->server.bind_to_any_port("127.0.0.1")
                              : (s->server.bind_to_port("127.0.0.1", port) ? port : -1);
  if (bound < 0) return -1;
  s->server.deepen_backlog();
  s->port = bound;
  s->thread = std::thread([s] { s->server.listen_after_bind(); });
  // httplib's stop() does nothing before the listen loop runs: wait for it.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!s->server.is_running() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return bound;
}

bool StandInUpstream::run(int port) {
  state_->port = port;
  return state_->server.listen("127.0.0.1", port);
}

void StandInUpstream::stop() {
  state_->server.stop();
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
  return fmt::format("http://127.0.0.1:{}/v1", state_->port.load());
}
int StandInUpstream::port() const { return state_->port.load(); }
std::size_t StandInUpstream::requests() const { return state_->requests.load(); }

std::string StandInUpstream::last_body() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->last_body;
}

std::string StandInUpstream::last_authorization() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->last_authorization;
}

}  // namespace torouter::server
