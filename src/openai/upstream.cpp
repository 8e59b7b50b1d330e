// torouter::openai::Upstream: chat completion calls through the
// asynchronous HTTP client (http_client.hpp), SSE parsing for streamed
// answers, and the mapping of HTTP and socket failures to `FailureKind`.
#include "torouter/openai/upstream.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <future>
#include <mutex>
#include <vector>

#include "json_parsers.hpp"
#include "json_text.hpp"
#include "openai/http_client.hpp"
#include "openai/io_threads.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace openai {

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

// A token count: a whole number, or a number with no fraction (10.0, as
// some servers write it); false for anything else.
bool read_count(simdjson::simdjson_result<simdjson::dom::element> value, std::size_t& out) {
  std::uint64_t n = 0;
  double d = 0;
  if (!value.get(n)) {
    out = static_cast<std::size_t>(n);
  } else if (!value.get(d) && d >= 0 && d < 1e18 && d == std::floor(d)) {
    out = static_cast<std::size_t>(d);
  } else {
    return false;
  }
  return true;
}

// Billed tokens from a `usage` object, where present; a count that is not
// a number of tokens is left to the router's estimate.
void read_usage(simdjson::dom::element doc, Response& response) {
  simdjson::dom::object usage;
  if (doc["usage"].get(usage)) return;
  read_count(usage["prompt_tokens"], response.input_tokens);
  read_count(usage["completion_tokens"], response.output_tokens);
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

// An answer's top-level members that a relay writes itself ("torouter"
// too: an expert may be another torouter server, whose trace would be a
// second member of that name), and "obfuscation", the random padding
// OpenAI adds to each stream event, which means nothing to pass on.
constexpr std::string_view kRelaysOwn[] = {"id",      "object", "created",  "model",
                                           "choices", "usage",  "torouter", "obfuscation"};

// The answer's other top-level members, as members without braces, onto
// `out`; a null one ("error": null) says nothing.
void read_other_members(simdjson::dom::element doc, std::string& out) {
  simdjson::dom::object top;
  if (doc.get(top)) return;
  for (auto field : top) {
    if (field.value.is_null() || std::find(std::begin(kRelaysOwn), std::end(kRelaysOwn),
                                           field.key) != std::end(kRelaysOwn)) {
      continue;
    }
    if (!out.empty()) out.push_back(',');
    detail::append_json_string(out, field.key);
    out.push_back(':');
    detail::append_minified(out, field.value);
  }
}

// The `usage` object as sent, where there is one.
void read_usage_json(simdjson::dom::element doc, ChatAnswer& answer) {
  simdjson::dom::object usage;
  if (doc["usage"].get(usage)) return;
  answer.usage_json.clear();
  detail::append_minified(answer.usage_json, usage);
}

// What stream choice `choice` tells a client (see ChatCall::pieces_as_json),
// written over `out`; `out` is left empty when that is nothing.
void relay_piece(simdjson::dom::element choice, std::string& out) {
  out.assign("\"delta\":{");
  bool news = false;
  bool first = true;
  simdjson::dom::object delta;
  if (!choice["delta"].get(delta)) {
    for (auto field : delta) {
      if (field.key == "role" || field.key == "tool_calls") continue;
      if (!first) out.push_back(',');
      first = false;
      detail::append_json_string(out, field.key);
      out.push_back(':');
      std::string_view text;
      if (!field.value.get(text)) {  // the common case, written without a copy
        detail::append_json_string(out, text);
        news = news || !text.empty();
      } else {
        detail::append_minified(out, field.value);
        news = news || !field.value.is_null();
      }
    }
  }
  out.push_back('}');
  simdjson::dom::element logprobs;
  if (!choice["logprobs"].get(logprobs) && !logprobs.is_null()) {
    out += ",\"logprobs\":";
    detail::append_minified(out, logprobs);
    news = true;
  }
  if (!news) out.clear();
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

// The failure an HTTP status (not 2xx) stands for.
FailureKind failure_of_status(int status, std::string_view body) {
  if (status == 429) return FailureKind::RateLimited;
  if (status == 408 || status == 504) return FailureKind::Timeout;
  if (status < 400 || status >= 500) return FailureKind::ServerError;
  if (status == 413) return FailureKind::ContextTooLong;
  // Only 400 and 422 speak of the request itself. Others (401, 403, 404,
  // 402...) speak of how the upstream is reached, its key or model id: the
  // expert is broken, not the caller's request.
  if (status != 400 && status != 422) return FailureKind::ServerError;
  return speaks_of_context_length(body) ? FailureKind::ContextTooLong : FailureKind::BadRequest;
}

}  // namespace

Response classify_http_error(int status, std::string_view body, std::string_view retry_after,
                             std::string_view retry_after_ms) {
  const FailureKind kind = failure_of_status(status, body);
  milliseconds wait{0};
  if (kind == FailureKind::RateLimited) {
    wait = parse_delay(retry_after_ms, 1.0);
    if (wait.count() == 0) wait = parse_delay(retry_after, 1000.0);
  }
  const std::string what = fmt::format("HTTP {}", status);
  Response r = status < 400 ? Response::failed(kind, what + ": unexpected status")
                            : Response::failed_quoting(kind, what, error_text(body), wait);
  r.http_status = status;
  return r;
}

struct Upstream::Client {
  Client(const UpstreamOptions& options)
      : client(http::Endpoint(options.base_url),
               options.io ? options.io : IoThreads::shared_default(),
               http::ClientOptions{options.max_idle_connections, options.ca_file}) {}
  http::HttpClient client;
  std::string path;
};

Upstream::Upstream(UpstreamOptions options) : options_(std::move(options)) {
  if (options_.model.empty()) throw Error("model: must name the upstream's model id");
  for (const auto& [name, value] : {std::pair{"connect_timeout", options_.connect_timeout},
                                    std::pair{"read_timeout", options_.read_timeout}}) {
    if (value.count() <= 0) throw Error(fmt::format("{}: must be above 0", name));
  }
  if (options_.max_response_bytes == 0) throw Error("max_response_bytes: must be above 0");
  client_ = std::make_unique<Client>(options_);
  client_->path = client_->client.endpoint().path_prefix + "/chat/completions";
  if (!options_.api_key_env.empty()) {
    const char* key = std::getenv(options_.api_key_env.c_str());
    if (key == nullptr || *key == '\0') {
      throw Error(
          fmt::format("api_key_env: environment variable {} is not set", options_.api_key_env));
    }
    api_key_ = key;
  }
}

Upstream::~Upstream() = default;

namespace {

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
  if (!stream) {
    body += ",\"stream\":false}";
  } else if (options.stream_usage) {
    body += ",\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
  } else {
    body += ",\"stream\":true}";
  }
  return body;
}

// One chat call's reading of its answer: the body's pieces in, the
// response out.
class ChatExchange {
 public:
  ChatExchange(const UpstreamOptions& options, const Request& request, const ChatCall& call,
               ChunkCallback on_chunk, CompletionCallback on_done)
      : url_(options.base_url),
        on_chunk_(std::move(on_chunk)),
        on_done_(std::move(on_done)),
        cancel_(call.cancel),
        answer_(call.answer),
        pieces_as_json_(call.pieces_as_json),
        start_(Clock::now()) {
    // A plain answer must come whole within the attempt's timeout; a stream
    // only within it from one piece to the next (the read timeout), and
    // within its own cap in all when it has one.
    if (!streaming()) {
      deadline_ = start_ + request.timeout;
    } else if (request.stream_timeout.count() > 0) {
      deadline_ = start_ + request.stream_timeout;
    }
    if (answer_ != nullptr) *answer_ = ChatAnswer();
  }

  bool streaming() const { return static_cast<bool>(on_chunk_); }
  Clock::time_point deadline() const { return deadline_; }

  // Takes one piece of the answer's body; false stops the call.
  bool receive(int status, std::string_view piece) {
    if (cancel_ != nullptr && cancel_->load()) {
      cancelled_ = true;
      return false;
    }
    if (Clock::now() >= deadline_) return false;
    if (status != 200 || !streaming()) {
      if (status == 200 || body_.size() < kMaxErrorBody) body_.append(piece);
      return true;
    }
    return sse_.feed(piece.data(), piece.size(),
                     [this](std::string_view data) { return on_event(data); });
  }

  // The exchange is over: the response goes to the caller.
  void end(const http::PostOutcome& outcome) {
    Response out = outcome.error == http::PostOutcome::Error::None ? read_whole(outcome)
                                                                   : read_failure(outcome);
    out.latency = elapsed_since(start_);
    CompletionCallback on_done = std::move(on_done_);
    on_done(std::move(out));
  }

 private:
  // One stream event; false ends the stream.
  bool on_event(std::string_view data) {
    if (data == "[DONE]") {
      done_ = true;
      return true;
    }
    simdjson::dom::parser own;
    simdjson::dom::parser& parser = detail::reusable_parser(data.size(), own);
    simdjson::dom::element doc;
    if (parser.parse(data.data(), data.size()).get(doc)) {
      streamed_ = Response::failed_quoting(FailureKind::ServerError, "malformed stream event",
                                           data.substr(0, 200));
      return false;
    }
    simdjson::dom::element error;
    if (!doc["error"].get(error) && !error.is_null()) {  // "error": null is no error
      streamed_ = Response::failed_quoting(FailureKind::ServerError, "error event in stream",
                                           error_text(data));
      return false;
    }
    read_usage(doc, streamed_);
    if (answer_ != nullptr) {
      read_usage_json(doc, *answer_);
      if (answer_->other_members_json.empty()) read_other_members(doc, answer_->other_members_json);
    }
    simdjson::dom::element choice;
    const bool has_choice = !doc["choices"].at(0).get(choice);
    if (answer_ != nullptr && has_choice && !read_answer_delta(choice, *answer_)) {
      streamed_ = Response::failed_quoting(FailureKind::ServerError,
                                           "malformed stream event: a tool call index skips ahead",
                                           data.substr(0, 200));
      return false;
    }
    // Last: the caller's code may parse on this thread (the parser is
    // shared), and `content` stays valid until the next parse. An event
    // without text (a reasoning model's thinking, a tool call's pieces)
    // goes on empty: the stream is alive, so its gap timer restarts.
    std::string_view content;
    if (!has_choice || choice["delta"]["content"].get(content)) content = {};
    if (!pieces_as_json_) {
      on_chunk_(content);
      return true;
    }
    streamed_.text.append(content);
    piece_.clear();
    if (has_choice) relay_piece(choice, piece_);
    on_chunk_(piece_);
    return true;
  }

  // The call reached no whole answer.
  Response read_failure(const http::PostOutcome& outcome) {
    using E = http::PostOutcome::Error;
    if (streamed_.failure != FailureKind::None) return std::move(streamed_);  // a refused event
    const milliseconds took = elapsed_since(start_);
    switch (outcome.error) {
      case E::CannotConnect:
        return Response::failed(FailureKind::ServerError,
                                fmt::format("cannot connect to {}: {}", url_, outcome.detail));
      case E::ConnectTimeout:
        return Response::failed(FailureKind::Timeout,
                                fmt::format("no connection to {} in time", url_));
      case E::Stopped:
        if (cancelled_ || outcome.cancelled) {
          return Response::failed(FailureKind::TransportError, "call cancelled");
        }
        return Response::failed(FailureKind::Timeout,
                                fmt::format("no full answer within {} ms", took.count()));
      case E::ReadTimeout:
        return Response::failed(FailureKind::Timeout,
                                fmt::format("no answer within {} ms", took.count()));
      case E::Dropped:
        if (Clock::now() >= deadline_) {
          return Response::failed(FailureKind::Timeout,
                                  fmt::format("no answer within {} ms", took.count()));
        }
        return Response::failed(FailureKind::ServerError,
                                fmt::format("{} dropped the connection", url_));
      default:
        return Response::failed(FailureKind::ServerError,
                                fmt::format("{}: {}", url_, outcome.detail));
    }
  }

  // The whole answer came: its meaning.
  Response read_whole(const http::PostOutcome& outcome) {
    if (outcome.status != 200) {
      return classify_http_error(outcome.status, body_, outcome.retry_after,
                                 outcome.retry_after_ms);
    }
    if (streaming()) {
      sse_.finish([this](std::string_view data) { return on_event(data); });
      if (streamed_.failure == FailureKind::None && !done_) {
        return Response::failed(FailureKind::ServerError,
                                fmt::format("{} ended the stream before [DONE]", url_));
      }
      return std::move(streamed_);
    }
    Response out;
    simdjson::dom::parser own;
    simdjson::dom::parser& parser = detail::reusable_parser(body_.size(), own);
    simdjson::dom::element doc;
    if (parser.parse(body_).get(doc)) {
      return Response::failed_quoting(FailureKind::ServerError, "malformed answer",
                                      std::string_view(body_).substr(0, 200));
    }
    if (doc["choices"].at(0)["message"].error()) {
      return Response::failed(FailureKind::ServerError, "answer has no choices[0].message");
    }
    std::string_view content;
    if (!doc["choices"].at(0)["message"]["content"].get(content)) out.text = std::string(content);
    read_usage(doc, out);
    simdjson::dom::element choices, choice;
    if (answer_ != nullptr && !doc["choices"].get(choices) && !choices.at(0).get(choice)) {
      read_answer(choice, *answer_);
      answer_->choices_json.clear();
      detail::append_minified(answer_->choices_json, choices);
      read_usage_json(doc, *answer_);
      read_other_members(doc, answer_->other_members_json);
    }
    return out;
  }

  const std::string url_;
  ChunkCallback on_chunk_;
  CompletionCallback on_done_;
  const std::atomic<bool>* cancel_;
  ChatAnswer* answer_;
  const bool pieces_as_json_;
  std::string piece_;  // the piece handed on, when pieces_as_json_; keeps its capacity
  const Clock::time_point start_;
  Clock::time_point deadline_ = Clock::time_point::max();
  std::string body_;  // the whole body when not streaming, else an error body
  SseReader sse_;
  Response streamed_;
  bool done_ = false;
  bool cancelled_ = false;
};

}  // namespace

void Upstream::complete_async(const Request& request, const ChatCall& call,
                              CompletionCallback on_done) const {
  stream_async(request, ChunkCallback(), call, std::move(on_done));
}

void Upstream::stream_async(const Request& request, ChunkCallback on_chunk, const ChatCall& call,
                            CompletionCallback on_done) const {
  auto exchange = std::make_shared<ChatExchange>(options_, request, call, std::move(on_chunk),
                                                 std::move(on_done));
  http::PostRequest post;
  post.path = client_->path;
  post.body = request_body(options_, request, call, exchange->streaming());
  post.accept = exchange->streaming() ? "text/event-stream" : "application/json";
  if (!api_key_.empty()) post.authorization = "Bearer " + api_key_;
  post.connect_timeout = options_.connect_timeout;
  post.read_timeout = std::min(options_.read_timeout, request.timeout);
  post.deadline = exchange->deadline();
  post.max_body_bytes = options_.max_response_bytes;
  client_->client.post(
      std::move(post),
      [exchange](int status, std::string_view piece) { return exchange->receive(status, piece); },
      [exchange](http::PostOutcome outcome) { exchange->end(outcome); }, request.cancel);
}

Response Upstream::complete(const Request& request, const ChatCall& call) const {
  return stream(request, ChunkCallback(), call);
}

Response Upstream::stream(const Request& request, const ChunkCallback& on_chunk,
                          const ChatCall& call) const {
  std::promise<Response> answered;
  auto future = answered.get_future();
  ChunkCallback pass_on;
  if (on_chunk) pass_on = [&on_chunk](std::string_view piece) { on_chunk(piece); };
  stream_async(request, std::move(pass_on), call,
               [&answered](Response response) { answered.set_value(std::move(response)); });
  return future.get();
}

Transport make_transport(std::shared_ptr<const Upstream> upstream, bool streaming) {
  if (streaming) {
    return Transport::async_streaming(
        [upstream](const Request& request, ChunkCallback on_chunk, CompletionCallback on_done) {
          upstream->stream_async(request, std::move(on_chunk), ChatCall(), std::move(on_done));
        });
  }
  return Transport::async([upstream](const Request& request, CompletionCallback on_done) {
    upstream->complete_async(request, ChatCall(), std::move(on_done));
  });
}

}  // namespace openai
TOROUTER_END_NAMESPACE
