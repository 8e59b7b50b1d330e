// torouter/transport.hpp: the caller's callbacks that call an expert.
//
// torouter never opens a socket: a service hands the router one `Transport`
// per expert, in whichever of four shapes fits its client library, and the
// router calls it, retries it and fails over from it.
//
//   // synchronous: return the answer
//   auto t1 = torouter::Transport::sync([](const torouter::Request& r) {
//     return my_client.complete(r.expert, r.prompt);   // -> torouter::Response
//   });
//   // asynchronous: call `done` exactly once, from any thread
//   auto t2 = torouter::Transport::async(
//       [](const torouter::Request& r, torouter::CompletionCallback done) {
//         my_client.complete_async(r.prompt, [done](auto answer) { done(to_response(answer)); });
//       });
//   // streaming: pass each chunk to `on_chunk`, return the final response
//   auto t3 = torouter::Transport::streaming(
//       [](const torouter::Request& r, const torouter::ChunkCallback& on_chunk) { ... });
//   // streaming and asynchronous: pieces to `on_chunk`, then `done` once; no thread waits
//   auto t4 = torouter::Transport::async_streaming(
//       [](const torouter::Request& r, torouter::ChunkCallback on_chunk,
//          torouter::CompletionCallback done) { ... });
//
// A service on an event loop (torouter-server, `Router::invoke_async`) wants
// the asynchronous shapes: the synchronous ones hold a thread of its loop for
// the whole call.
// What a transport needs beyond the prompt (the whole conversation, say)
// travels with the invoke, not in globals:
//
//   torouter::InvokeOptions options;
//   options.context = &conversation;                  // a const Conversation*
//   router.invoke(routing_text, options);
//   // in the transport, on every attempt:
//   auto* held = std::any_cast<const Conversation*>(r.context);   // nullptr if none
#pragma once

#include <any>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "torouter/abi.hpp"
#include "torouter/cancel.hpp"

TOROUTER_BEGIN_NAMESPACE

/// Why a call to an expert failed; `None` means it answered.
enum class FailureKind {
  None,            ///< The expert answered.
  Timeout,         ///< No answer before the deadline.
  RateLimited,     ///< The expert refused for now (HTTP 429); see `retry_after`.
  ServerError,     ///< The expert failed (HTTP 5xx, dropped connection).
  BadRequest,      ///< The expert rejected the request itself (HTTP 4xx).
  ContextTooLong,  ///< The prompt does not fit the expert's context window.
  TransportError,  ///< The transport callback threw or broke its contract.
};

/// A short, stable name for `kind` ("timeout", "rate_limited", ...).
constexpr std::string_view to_string(FailureKind kind) {
  switch (kind) {
    case FailureKind::None: return "none";
    case FailureKind::Timeout: return "timeout";
    case FailureKind::RateLimited: return "rate_limited";
    case FailureKind::ServerError: return "server_error";
    case FailureKind::BadRequest: return "bad_request";
    case FailureKind::ContextTooLong: return "context_too_long";
    case FailureKind::TransportError: return "transport_error";
  }
  return "unknown";
}

/// True for failures worth another try on the same expert after a pause.
constexpr bool is_retryable(FailureKind kind) {
  return kind == FailureKind::Timeout || kind == FailureKind::RateLimited ||
         kind == FailureKind::ServerError || kind == FailureKind::TransportError;
}

/// True for failures the request caused (the expert refused what it was
/// sent) rather than the expert's health: they never count toward its
/// cooldown, so one client's bad requests cannot cool healthy experts down.
/// An expert that is itself misconfigured (a wrong key or model id) answers
/// 401, 403 or 404, which the OpenAI transport reports as ServerError: those
/// count, and cool it down.
constexpr bool is_request_fault(FailureKind kind) {
  return kind == FailureKind::BadRequest || kind == FailureKind::ContextTooLong;
}

/// What the router asks a transport to do.
struct Request {
  /// Name of the expert to call (as in the registry).
  std::string expert;
  /// The prompt, as the caller gave it to `Router::invoke`.
  std::string prompt;
  /// Most output tokens wanted; 0 means the expert's own default.
  std::size_t max_output_tokens = 0;
  /// Time this attempt may take. An asynchronous transport that has not
  /// completed by then is counted as timed out; a synchronous or streaming
  /// transport cannot be interrupted, so it should pass this to its client.
  /// For a streamed answer it bounds the wait for the first chunk and for
  /// each next one, not the whole stream: a healthy stream may run longer.
  std::chrono::milliseconds timeout{30000};
  /// For a streamed answer, the most the whole call may take; 0 for no cap
  /// (`RouterOptions::stream_timeout`).
  std::chrono::milliseconds stream_timeout{0};
  /// 1 for the first call to this expert within one invoke, 2 for its retry, ...
  int attempt = 1;
  /// The caller's `InvokeOptions::context`: the same object, not a copy, on
  /// every attempt, retry and failover of one invoke, whatever the
  /// transport's shape; nullptr when the transport is called outside
  /// `Router::invoke`. `std::any_cast<T>(request.context)` gives a `const T*`,
  /// or nullptr when it is null or holds no T. Like the rest of the request
  /// it is valid only during the call: an asynchronous transport whose
  /// completion needs it later copies what it holds (a `std::shared_ptr`).
  const std::any* context = nullptr;
  /// The invoke's cancel signal (`InvokeOptions::cancel`), or null when it
  /// has none. A transport that can stop its call early checks it, or
  /// registers with `on_cancel`; the invoke ends at once on a cancel either
  /// way, and ignores a completion that comes after.
  std::shared_ptr<CancelSignal> cancel;
};

/// What a transport returns: an answer, or why there is none.
struct Response {
  /// `None` when the expert answered; otherwise why not.
  FailureKind failure = FailureKind::None;
  /// The answer (empty on failure).
  std::string text;
  /// Input (prompt) tokens the expert billed; 0 if unknown.
  std::size_t input_tokens = 0;
  /// Output tokens the expert billed; 0 if unknown.
  std::size_t output_tokens = 0;
  /// Wall time of the call as the transport saw it; the router measures its
  /// own and uses this only if the transport sets it.
  std::chrono::milliseconds latency{0};
  /// For `RateLimited`: how long the expert asked us to wait, if it said.
  std::chrono::milliseconds retry_after{0};
  /// Human-readable detail of a failure ("HTTP 503: overloaded").
  std::string error_message;
  /// Where the upstream's own words (its error text, a part of its body)
  /// begin in `error_message`, or `npos` when it quotes none: "HTTP 503: "
  /// is the transport's, "overloaded" the upstream's. They may name the
  /// upstream's hosts, keys or accounts, so a server that answers other
  /// clients cuts the message here (torouter-server does). They run to the
  /// end of the message: text appended after them is taken as theirs.
  std::size_t upstream_words_at = std::string::npos;
  /// The upstream's HTTP status when the failure is an answer with one
  /// (a 503, a 429); 0 otherwise.
  int http_status = 0;

  bool ok() const { return failure == FailureKind::None; }

  /// A successful response.
  static Response answer(std::string text, std::size_t input_tokens = 0,
                         std::size_t output_tokens = 0) {
    Response r;
    r.text = std::move(text);
    r.input_tokens = input_tokens;
    r.output_tokens = output_tokens;
    return r;
  }
  /// A failed response.
  static Response failed(FailureKind kind, std::string message = {},
                         std::chrono::milliseconds retry_after = std::chrono::milliseconds{0}) {
    Response r;
    r.failure = kind;
    r.error_message = std::move(message);
    r.retry_after = retry_after;
    return r;
  }
  /// A failed response that quotes the upstream: "<what>: <upstream_words>",
  /// with `upstream_words_at` where the quote begins; "<what>" alone when
  /// the upstream said nothing (an empty body).
  static Response failed_quoting(FailureKind kind, std::string_view what,
                                 std::string_view upstream_words,
                                 std::chrono::milliseconds retry_after = std::chrono::milliseconds{
                                     0}) {
    if (upstream_words.empty()) return failed(kind, std::string(what), retry_after);
    std::string message(what);
    message += ": ";
    Response r = failed(kind, std::move(message), retry_after);
    r.upstream_words_at = r.error_message.size();
    r.error_message += upstream_words;
    return r;
  }
};

/// Called by an asynchronous transport, exactly once per request.
using CompletionCallback = std::function<void(Response)>;
/// Receives each piece of a streamed answer, in order. An empty piece says
/// the stream is alive though it carried no answer text (a reasoning
/// model's thinking, a tool call's arguments, a role or usage event): it
/// restarts the wait for the next piece (`Request::timeout`) and is not
/// passed on, so it neither reaches `InvokeOptions::on_chunk` nor commits
/// the stream to its expert.
using ChunkCallback = std::function<void(std::string_view chunk)>;

/// How the router reaches one expert: exactly one of the four callbacks is set.
struct Transport {
  /// Synchronous: returns when the call is done.
  std::function<Response(const Request&)> call;
  /// Asynchronous: returns at once and calls the completion callback later,
  /// from any thread, exactly once.
  std::function<void(const Request&, CompletionCallback)> call_async;
  /// Streaming: calls `on_chunk` for each piece of the answer and returns
  /// the final response (whose `text` may be empty: the router joins chunks).
  std::function<Response(const Request&, const ChunkCallback& on_chunk)> call_streaming;
  /// Streaming and asynchronous: returns at once, then calls `on_chunk` for
  /// each piece of the answer, one call at a time and in order (from any
  /// thread), and the completion callback exactly once after the last piece.
  /// The final response's `text` may be empty: the router joins the pieces.
  /// Call `on_chunk` holding no lock of your own: called from a thread of
  /// the invoke's event loop (`EventLoop::runs_here`), it hands the piece on
  /// at once, running the caller's chunk callback (which may cancel the
  /// call) before it returns.
  std::function<void(const Request&, ChunkCallback on_chunk, CompletionCallback on_done)>
      call_async_streaming;

  static Transport sync(std::function<Response(const Request&)> fn) {
    Transport t;
    t.call = std::move(fn);
    return t;
  }
  static Transport async(std::function<void(const Request&, CompletionCallback)> fn) {
    Transport t;
    t.call_async = std::move(fn);
    return t;
  }
  static Transport streaming(
      std::function<Response(const Request&, const ChunkCallback&)> fn) {
    Transport t;
    t.call_streaming = std::move(fn);
    return t;
  }

  static Transport async_streaming(
      std::function<void(const Request&, ChunkCallback, CompletionCallback)> fn) {
    Transport t;
    t.call_async_streaming = std::move(fn);
    return t;
  }

  /// True when exactly one callback is set.
  bool valid() const {
    return (call ? 1 : 0) + (call_async ? 1 : 0) + (call_streaming ? 1 : 0) +
               (call_async_streaming ? 1 : 0) ==
           1;
  }
};

TOROUTER_END_NAMESPACE
