// torouter::openai::Upstream: chat completion calls over a pool of keep-alive
// connections (client_connection.hpp), SSE parsing for streamed answers, and the
// mapping of HTTP and socket failures to `FailureKind`.
#include "torouter/openai/upstream.hpp"

#include <fmt/format.h>
#include <httplib.h>
#include <simdjson.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "json_text.hpp"
#include "openai/client_connection.hpp"
#include "torouter/error.hpp"

namespace torouter::openai {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Error bodies are kept up to this size for the failure's message.
constexpr std::size_t kMaxErrorBody = 64 * 1024;

milliseconds elapsed_since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

std::string lowercase(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// "1", "2.5" (seconds) or "1500" (milliseconds, with `scale` 1) as
// milliseconds; 0 when absent or not a number (an HTTP date is not honoured).
milliseconds parse_delay(std::string_view text, double scale) {
  if (text.empty()) return milliseconds{0};
  const std::string s(text);
  char* end = nullptr;
  const double value = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || !(value >= 0.0) || value > 1e7) return milliseconds{0};
  return milliseconds(static_cast<milliseconds::rep>(value * scale + 0.5));
}

// The message of an OpenAI-style error body ({"error": {"message": ...}}),
// else the body itself, shortened.
std::string error_text(std::string_view body) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (!parser.parse(body.data(), body.size()).get(doc)) {
    std::string_view message;
    if (!doc["error"]["message"].get(message)) return std::string(message);
    if (!doc["error"].get(message)) return std::string(message);
    if (!doc["message"].get(message)) return std::string(message);
  }
  std::string out(body.substr(0, 300));
  std::replace(out.begin(), out.end(), '\n', ' ');
  return out;
}

bool speaks_of_context_length(std::string_view body) {
  const std::string text = lowercase(body);
  for (const char* marker :
       {"context_length_exceeded", "context length", "context window", "maximum context",
        "too many tokens", "prompt is too long", "input is too long", "maximum input length"}) {
    if (text.find(marker) != std::string::npos) return true;
  }
  return false;
}

// Billed tokens from a `usage` object, where present.
void read_usage(simdjson::dom::element doc, Response& response) {
  simdjson::dom::object usage;
  if (doc["usage"].get(usage)) return;
  std::uint64_t n = 0;
  if (!usage["prompt_tokens"].get(n)) response.input_tokens = static_cast<std::size_t>(n);
  if (!usage["completion_tokens"].get(n)) response.output_tokens = static_cast<std::size_t>(n);
}

// Adds what `entry` says (a whole tool call, or a streamed piece of one) to
// `call`: its strings are appended, as OpenAI's own clients join deltas.
void add_tool_call_piece(simdjson::dom::element entry, ToolCall& call) {
  std::string_view text;
  if (!entry["id"].get(text)) call.id.append(text);
  if (!entry["type"].get(text)) call.type = std::string(text);
  if (!entry["function"]["name"].get(text)) call.name.append(text);
  if (!entry["function"]["arguments"].get(text)) call.arguments.append(text);
}

// The finish reason of `choice` (choices[0]), when it gives one.
void read_finish_reason(simdjson::dom::element choice, ChatAnswer& answer) {
  std::string_view reason;
  if (!choice["finish_reason"].get(reason)) answer.finish_reason = std::string(reason);
}

// A plain answer's finish reason and tool calls.
void read_answer(simdjson::dom::element choice, ChatAnswer& answer) {
  read_finish_reason(choice, answer);
  simdjson::dom::array calls;
  if (choice["message"]["tool_calls"].get(calls)) return;
  for (simdjson::dom::element entry : calls) {
    add_tool_call_piece(entry, answer.tool_calls.emplace_back());
  }
}

// One stream event's finish reason and tool call pieces, joined by their
// `index` (0 when absent). False for an index that skips ahead, which no
// whole tool call list can come from.
bool read_answer_delta(simdjson::dom::element choice, ChatAnswer& answer) {
  read_finish_reason(choice, answer);
  simdjson::dom::array pieces;
  if (choice["delta"]["tool_calls"].get(pieces)) return true;
  for (simdjson::dom::element piece : pieces) {
    std::uint64_t index = 0;
    if (piece["index"].get(index)) index = 0;
    if (index > answer.tool_calls.size()) return false;
    if (index == answer.tool_calls.size()) answer.tool_calls.emplace_back();
    add_tool_call_piece(piece, answer.tool_calls[index]);
  }
  return true;
}

// Incremental reader of a server-sent-events body: hands each event's data
// (the `data:` lines of one event, joined by newlines) to `on_data`.
class SseReader {
 public:
  template <typename OnData>
  bool feed(const char* data, std::size_t size, OnData&& on_data) {
    buffer_.append(data, size);
    std::size_t start = 0;
    for (;;) {
      const auto newline = buffer_.find('\n', start);
      if (newline == std::string::npos) break;
      std::string_view line(buffer_.data() + start, newline - start);
      start = newline + 1;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) {
        if (has_data_ && !on_data(std::string_view(data_))) return false;
        data_.clear();
        has_data_ = false;
      } else if (line.substr(0, 5) == "data:") {
        line.remove_prefix(5);
        if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
        if (has_data_) data_.push_back('\n');
        data_.append(line);
        has_data_ = true;
      }  // comments (":"), event:, id: and retry: lines carry nothing we use
    }
    buffer_.erase(0, start);
    return true;
  }

  /// An event left without its closing blank line when the body ended.
  template <typename OnData>
  void finish(OnData&& on_data) {
    if (has_data_) on_data(std::string_view(data_));
    has_data_ = false;
  }

 private:
  std::string buffer_;
  std::string data_;
  bool has_data_ = false;
};

}  // namespace

Response classify_http_error(int status, std::string_view body, std::string_view retry_after,
                             std::string_view retry_after_ms) {
  const std::string message = fmt::format("HTTP {}: {}", status, error_text(body));
  if (status == 429) {
    milliseconds wait = parse_delay(retry_after_ms, 1.0);
    if (wait.count() == 0) wait = parse_delay(retry_after, 1000.0);
    return Response::failed(FailureKind::RateLimited, message, wait);
  }
  if (status == 408 || status == 504) return Response::failed(FailureKind::Timeout, message);
  if (status >= 500) return Response::failed(FailureKind::ServerError, message);
  if (status >= 400 && speaks_of_context_length(body)) {
    return Response::failed(FailureKind::ContextTooLong, message);
  }
  if (status >= 400) return Response::failed(FailureKind::BadRequest, message);
  return Response::failed(FailureKind::ServerError,
                          fmt::format("HTTP {}: unexpected status", status));
}

// One keep-alive connection and the JSON parser used with it.
struct Connection {
  explicit Connection(const http::Endpoint& endpoint) : client(endpoint) {}
  http::ClientConnection client;
  simdjson::dom::parser parser;
};

struct Upstream::Pool {
  explicit Pool(const std::string& base_url) : endpoint(base_url) {}
  http::Endpoint endpoint;
  std::string path;
  std::mutex mutex;
  std::vector<std::unique_ptr<Connection>> idle;

  std::unique_ptr<Connection> acquire() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (!idle.empty()) {
        auto connection = std::move(idle.back());
        idle.pop_back();
        return connection;
      }
    }
    return std::make_unique<Connection>(endpoint);
  }

  void release(std::unique_ptr<Connection> connection, std::size_t max_idle) {
    std::lock_guard<std::mutex> lock(mutex);
    if (idle.size() < max_idle) idle.push_back(std::move(connection));
  }
};

Upstream::Upstream(UpstreamOptions options)
    : options_(std::move(options)), pool_(std::make_unique<Pool>(options_.base_url)) {
  pool_->path = pool_->endpoint.path_prefix + "/chat/completions";
  if (options_.model.empty()) throw Error("model: must name the upstream's model id");
  if (!options_.api_key_env.empty()) {
    const char* key = std::getenv(options_.api_key_env.c_str());
    if (key == nullptr || *key == '\0') {
      throw Error(
          fmt::format("api_key_env: environment variable {} is not set", options_.api_key_env));
    }
    api_key_ = key;
  }
  if (pool_->endpoint.tls && !httplib::Client(pool_->endpoint.scheme_host_port).is_valid()) {
    throw Error(
        fmt::format("base_url \"{}\": this build of cpp-httplib cannot reach it "
                    "(https needs cpp-httplib with OpenSSL)",
                    options_.base_url));
  }
}

Upstream::~Upstream() = default;

namespace {

// Everything one call needs, shared by the streaming and plain paths.
struct CallSetup {
  milliseconds read_timeout{0};
  Clock::time_point start;
  Clock::time_point deadline;
};

std::string request_body(const UpstreamOptions& options, const Request& request,
                         const ChatCall& call, bool stream) {
  std::string body = "{\"model\":" + detail::json_string(options.model) + ",\"messages\":";
  if (call.messages_json.empty()) {
    body += "[{\"role\":\"user\",\"content\":" + detail::json_string(request.prompt) + "}]";
  } else {
    body.append(call.messages_json);
  }
  if (!call.extra_fields_json.empty()) {
    body.push_back(',');
    body.append(call.extra_fields_json);
  }
  if (request.max_output_tokens > 0 &&
      call.extra_fields_json.find("\"max_tokens\"") == std::string_view::npos &&
      call.extra_fields_json.find("\"max_completion_tokens\"") == std::string_view::npos) {
    body += fmt::format(",\"max_tokens\":{}", request.max_output_tokens);
  }
  body += stream ? ",\"stream\":true}" : ",\"stream\":false}";
  return body;
}

// The failure a connection-level error stands for.
Response classify_connection_error(const http::PostOutcome& outcome, const CallSetup& setup,
                                   const std::string& url, bool cancelled) {
  using E = http::PostOutcome::Error;
  const milliseconds took = elapsed_since(setup.start);
  switch (outcome.error) {
    case E::CannotConnect:
      return Response::failed(FailureKind::ServerError,
                              fmt::format("cannot connect to {}: {}", url, outcome.detail));
    case E::ConnectTimeout:
      return Response::failed(FailureKind::Timeout,
                              fmt::format("no connection to {} in time", url));
    case E::Stopped:
      if (cancelled) return Response::failed(FailureKind::TransportError, "call cancelled");
      return Response::failed(FailureKind::Timeout,
                              fmt::format("no full answer within {} ms", took.count()));
    case E::ReadTimeout:
      return Response::failed(FailureKind::Timeout,
                              fmt::format("no answer within {} ms", took.count()));
    case E::Dropped:
      if (Clock::now() >= setup.deadline) {
        return Response::failed(FailureKind::Timeout,
                                fmt::format("no answer within {} ms", took.count()));
      }
      return Response::failed(FailureKind::ServerError,
                              fmt::format("{} dropped the connection", url));
    default:
      return Response::failed(FailureKind::ServerError, fmt::format("{}: {}", url, outcome.detail));
  }
}

}  // namespace

Response Upstream::complete(const Request& request, const ChatCall& call) const {
  return stream(request, ChunkCallback(), call);
}

Response Upstream::stream(const Request& request, const ChunkCallback& on_chunk,
                          const ChatCall& call) const {
  const bool streaming = static_cast<bool>(on_chunk);
  CallSetup setup;
  setup.start = Clock::now();
  setup.read_timeout = std::min(options_.read_timeout, request.timeout);
  // A plain answer must come whole within the attempt's timeout; a stream
  // only within it from one chunk to the next (the socket's read timeout),
  // and within its own cap in all when it has one.
  if (!streaming) {
    setup.deadline = setup.start + request.timeout;
  } else if (request.stream_timeout.count() > 0) {
    setup.deadline = setup.start + request.stream_timeout;
  } else {
    setup.deadline = Clock::time_point::max();
  }
  const std::string body_text = request_body(options_, request, call, streaming);
  const std::string authorization = api_key_.empty() ? std::string() : "Bearer " + api_key_;
  http::PostRequest post;
  post.path = pool_->path;
  post.body = body_text;
  post.accept = streaming ? "text/event-stream" : "application/json";
  post.authorization = authorization;
  post.connect_timeout = options_.connect_timeout;
  post.read_timeout = setup.read_timeout;
  post.deadline = setup.deadline;

  if (call.answer != nullptr) *call.answer = ChatAnswer();
  std::unique_ptr<Connection> connection = pool_->acquire();

  int status = 0;
  std::string body;  // the whole body when not streaming, else an error body
  SseReader sse;
  Response streamed;
  bool done = false;
  bool cancelled = false;
  auto on_event = [&](std::string_view data) {
    if (data == "[DONE]") {
      done = true;
      return true;
    }
    simdjson::dom::element doc;
    if (connection->parser.parse(data.data(), data.size()).get(doc)) {
      streamed = Response::failed(FailureKind::ServerError,
                                  fmt::format("malformed stream event: {}", data.substr(0, 200)));
      return false;
    }
    if (doc["error"].error() == simdjson::SUCCESS) {
      streamed =
          Response::failed(FailureKind::ServerError, "error event in stream: " + error_text(data));
      return false;
    }
    read_usage(doc, streamed);
    std::string_view content;
    if (!doc["choices"].at(0)["delta"]["content"].get(content) && !content.empty()) {
      on_chunk(content);
    }
    simdjson::dom::element choice;
    if (call.answer != nullptr && !doc["choices"].at(0).get(choice) &&
        !read_answer_delta(choice, *call.answer)) {
      streamed =
          Response::failed(FailureKind::ServerError,
                           fmt::format("malformed stream event: a tool call index skips ahead: {}",
                                       data.substr(0, 200)));
      return false;
    }
    return true;
  };

  auto receive = [&](int answer_status, std::string_view piece) {
    status = answer_status;
    if (call.cancel != nullptr && call.cancel->load()) {
      cancelled = true;
      return false;
    }
    if (Clock::now() >= setup.deadline) return false;
    if (status != 200 || !streaming) {
      if (status == 200 || body.size() < kMaxErrorBody) body.append(piece);
      return true;
    }
    return sse.feed(piece.data(), piece.size(), on_event);
  };

  const http::PostOutcome outcome = connection->client.post(post, receive);
  const std::string& url = options_.base_url;
  Response out;
  if (outcome.error != http::PostOutcome::Error::None) {
    if (streamed.failure != FailureKind::None) {
      out = std::move(streamed);  // an event the receiver refused
    } else {
      out = classify_connection_error(outcome, setup, url, cancelled);
    }
    out.latency = elapsed_since(setup.start);
    if (connection->client.reusable())
      pool_->release(std::move(connection), options_.max_idle_connections);
    return out;
  }
  status = outcome.status;
  if (status != 200) {
    out = classify_http_error(status, body, outcome.retry_after, outcome.retry_after_ms);
  } else if (streaming) {
    sse.finish(on_event);
    if (streamed.failure != FailureKind::None) {
      out = std::move(streamed);
    } else if (!done) {
      out = Response::failed(FailureKind::ServerError,
                             fmt::format("{} ended the stream before [DONE]", url));
    } else {
      out = std::move(streamed);
    }
  } else {
    simdjson::dom::element doc;
    std::string_view content;
    if (connection->parser.parse(body).get(doc)) {
      out = Response::failed(FailureKind::ServerError,
                             fmt::format("malformed answer: {}", body.substr(0, 200)));
    } else if (doc["choices"].at(0)["message"].error()) {
      out = Response::failed(FailureKind::ServerError, "answer has no choices[0].message");
    } else {
      auto content_field = doc["choices"].at(0)["message"]["content"];
      if (!content_field.get(content)) out.text = std::string(content);
      read_usage(doc, out);
      simdjson::dom::element choice;
      if (call.answer != nullptr && !doc["choices"].at(0).get(choice))
        read_answer(choice, *call.answer);
    }
  }
  out.latency = elapsed_since(setup.start);
  if (connection->client.reusable())
    pool_->release(std::move(connection), options_.max_idle_connections);
  return out;
}

Transport make_transport(std::shared_ptr<const Upstream> upstream, bool streaming) {
  if (streaming) {
    return Transport::streaming([upstream](const Request& request, const ChunkCallback& on_chunk) {
      return upstream->stream(request, on_chunk);
    });
  }
  return Transport::sync(
      [upstream](const Request& request) { return upstream->complete(request); });
}

}  // namespace torouter::openai
