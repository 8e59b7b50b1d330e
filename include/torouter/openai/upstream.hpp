// torouter/openai/upstream.hpp: an HTTP transport to OpenAI-compatible chat
// completion endpoints (OpenAI, vLLM, llama.cpp's server, TGI, ...), in the
// optional library torouter::openai, on Boost.Beast and OpenSSL.
//
//   torouter::openai::UpstreamOptions o;
//   o.base_url = "http://127.0.0.1:8000/v1";   // up to the API version
//   o.model = "Qwen/Qwen2.5-7B-Instruct";      // the upstream's model id
//   o.api_key_env = "QWEN_API_KEY";            // read once, when built
//   auto qwen = std::make_shared<torouter::openai::Upstream>(o);
//   router.set_transport("qwen", torouter::openai::make_transport(qwen));
//
// Calls are asynchronous: they do their I/O on the threads of an
// `IoThreads` (one thread shared by every upstream built without one), so
// thousands can be in flight while no thread waits. `complete` and `stream`
// are the blocking forms, for a caller that has a thread to spare.
//
// Upstream failures become the transport's failure kinds: HTTP 429 is
// `RateLimited` with its Retry-After (or retry-after-ms), 5xx and dropped
// connections `ServerError`, no answer in time `Timeout`, 413 and a 400 or
// 422 whose message speaks of the context length `ContextTooLong`, other
// 400 and 422 `BadRequest`. Other 4xx (401, 403, 404) speak of how the
// upstream is reached (its key, its model id), not of the request: they
// are `ServerError`.
// Connections are kept alive and reused, one per concurrent call; http://
// and https:// go through the same client, https:// verifying the server's
// certificate and name.
//
// What an answer says beyond its text (why it stopped, the tool calls it
// makes) stays here, out of the core's `Response`: a caller that relays it
// points `ChatCall::answer` at a `ChatAnswer`, which the call fills.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/transport.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace openai {

/// The threads on which upstream calls do their I/O: `threads` threads,
/// each running an Asio io_context of its own until this object is
/// destroyed. A call started on one of them keeps its I/O on that thread;
/// one started elsewhere goes to each in turn. Share one among all the
/// upstreams of a process.
class IoThreads {
 public:
  explicit IoThreads(std::size_t threads = 1);
  /// Stops and joins the threads; calls still in flight never complete.
  ~IoThreads();
  /// The same, ahead of the destructor, for an owner whose handlers use
  /// what it is about to destroy: when `stop` returns no handler runs any
  /// more (their objects go with the last holder of the `IoThreads`).
  /// Idempotent; from one of the threads, that thread is detached.
  void stop();
  IoThreads(const IoThreads&) = delete;
  IoThreads& operator=(const IoThreads&) = delete;

  /// The process's shared one-thread `IoThreads`, made when first asked
  /// for and kept while an upstream holds it.
  static std::shared_ptr<IoThreads> shared_default();

  /// The cores the calling thread may run on (at least 1): its CPU
  /// affinity mask, which threads inherit from the one that starts them and
  /// `taskset` and a container's cpuset narrow, where the machine's core
  /// count would start a thread per core it may not use. Past 1,024 cores
  /// (a mask larger than cpu_set_t), the machine's core count.
  static std::size_t usable_cores();

  struct Impl;  // src/openai/io_threads.hpp
  Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

/// Where and how to reach one OpenAI-compatible upstream.
struct UpstreamOptions {
  /// Base URL up to the API version: "https://api.openai.com/v1",
  /// "http://127.0.0.1:8000/v1". Chat calls go to `<base_url>/chat/completions`.
  std::string base_url;
  /// Model id sent upstream in the request's `model` field.
  std::string model;
  /// Name of the environment variable that holds the API key (sent as
  /// `Authorization: Bearer`); empty sends no key. Read once, by the constructor.
  std::string api_key_env;
  /// Time to open a connection.
  std::chrono::milliseconds connect_timeout{5000};
  /// Longest wait for the answer (or, when streaming, between two pieces of
  /// it); each call also stops at its `Request::timeout`.
  std::chrono::milliseconds read_timeout{60000};
  /// Idle keep-alive connections kept for reuse.
  std::size_t max_idle_connections = 64;
  /// The largest answer body taken (a stream's, in all); a larger one
  /// fails the call as a `ServerError`.
  std::size_t max_response_bytes = 16 << 20;
  /// Streamed calls ask for the answer's token counts
  /// (`"stream_options":{"include_usage":true}`), which OpenAI and vLLM
  /// send in a stream only when asked: its cost is then counted, not
  /// estimated from its length. False for an upstream that refuses the
  /// field.
  bool stream_usage = true;
  /// A PEM file of the certificate authorities an https:// upstream's
  /// certificate must chain to; empty for the system's.
  std::string ca_file;
  /// Where the calls' I/O runs; null for `IoThreads::shared_default()`.
  std::shared_ptr<IoThreads> io;
};

/// One tool call an answer makes (an entry of the message's `tool_calls`).
struct ToolCall {
  /// The id the client's `tool` message answers ("call_abc123").
  std::string id;
  /// The tool's type; "function" for every Chat Completions tool call.
  std::string type = "function";
  /// The function's name.
  std::string name;
  /// Its arguments, as the JSON text the model wrote.
  std::string arguments;
};

/// What an answer says besides its text.
struct ChatAnswer {
  /// Why the model stopped ("stop", "length", "tool_calls",
  /// "content_filter"); empty when the upstream did not say.
  std::string finish_reason;
  /// The tool calls the answer makes, in order; a streamed answer's pieces
  /// are joined by their `index`, so each call here is whole.
  std::vector<ToolCall> tool_calls;
  /// For a relay, as the upstream sent them (JSON text, empty when absent):
  /// a plain answer's `choices` array, every choice whole (`n` > 1,
  /// `logprobs`, `reasoning_content`, `refusal`...);
  std::string choices_json;
  /// the `usage` object, with its details (a stream's from its usage event);
  std::string usage_json;
  /// and the answer's other top-level members (`system_fingerprint`,
  /// `service_tier`...), as members without braces; a stream's from its
  /// first event that has any. `id`, `object`, `created` and `model` are
  /// the relay's own, so they are not here.
  std::string other_members_json;
};

/// The conversation and parameters of one chat call, as the caller's JSON.
struct ChatCall {
  /// The `messages` array as JSON text; empty sends `Request::prompt` as one
  /// user message.
  std::string_view messages_json;
  /// Further request members, as JSON text without the braces
  /// (`"temperature":0.2,"max_tokens":64`), forwarded unchanged; may be empty.
  std::string_view extra_fields_json;
  /// When set and true, a streaming call stops at its next piece (the
  /// client went away); the call then fails with `TransportError`. (A
  /// `Request::cancel` stops any call at once.)
  const std::atomic<bool>* cancel = nullptr;
  /// When set, receives the answer's finish reason and tool calls. Cleared
  /// when the call starts, so after a failed call it holds nothing of use.
  ChatAnswer* answer = nullptr;
  /// For a relay: when true, a streamed call hands `on_chunk` not the
  /// content but what each event's choices[0] tells a client, as JSON
  /// members without braces (`"delta":{"content":"Hi"}`, then
  /// `,"logprobs":{...}` when it has them): its delta without `role` and
  /// `tool_calls` (whole in `answer` when the stream ends). An event with
  /// nothing else that is neither null nor "" goes as an empty piece, a
  /// sign of life. The response's text is still the content, joined.
  bool pieces_as_json = false;
  // The JSON texts are read when the call starts; `cancel` and `answer`,
  // when set, must outlive an asynchronous call's completion.
};

/// One OpenAI-compatible endpoint and its pool of keep-alive connections.
/// Safe to call from many threads at once.
class Upstream {
 public:
  /// Checks the URL and reads the API key; throws `torouter::Error` for a
  /// URL that is not http(s)://host[:port][/path], an unset key variable
  /// or an unreadable `ca_file`.
  explicit Upstream(UpstreamOptions options);
  ~Upstream();
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;

  /// One non-streaming chat call: starts it and returns; `on_done` gets the
  /// answer's text and billed tokens, or the failure, on a thread of the
  /// upstream's `IoThreads`.
  void complete_async(const Request& request, const ChatCall& call,
                      CompletionCallback on_done) const;
  /// One streaming chat call (`"stream": true`): each piece of the answer's
  /// content goes to `on_chunk` as it arrives, in order, then the response
  /// to `on_done`, whose text is empty on success (the router joins the
  /// pieces). An event without content (a role, a reasoning model's
  /// thinking, a tool call's piece, usage) goes as an empty piece, a sign
  /// of life (see `ChunkCallback`). Both run on the upstream's threads, one
  /// at a time.
  void stream_async(const Request& request, ChunkCallback on_chunk, const ChatCall& call,
                    CompletionCallback on_done) const;

  /// `complete_async`, waited for: never from a thread of the upstream's
  /// `IoThreads`.
  Response complete(const Request& request, const ChatCall& call = {}) const;
  /// `stream_async`, waited for (`on_chunk` runs on the upstream's thread).
  Response stream(const Request& request, const ChunkCallback& on_chunk,
                  const ChatCall& call = {}) const;

  const UpstreamOptions& options() const { return options_; }

 private:
  struct Client;
  UpstreamOptions options_;
  std::string api_key_;
  std::unique_ptr<Client> client_;
};

/// An asynchronous transport that sends `Request::prompt` as one user
/// message to `upstream`, streaming its answer when `streaming`.
Transport make_transport(std::shared_ptr<const Upstream> upstream, bool streaming = false);

/// The failure an upstream's HTTP error answer stands for: `status` with
/// its body and its Retry-After and retry-after-ms headers (empty if absent).
Response classify_http_error(int status, std::string_view body, std::string_view retry_after,
                             std::string_view retry_after_ms);

}  // namespace openai
TOROUTER_END_NAMESPACE
