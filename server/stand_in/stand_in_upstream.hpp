// A stand-in OpenAI-compatible upstream on loopback, for tests, the README
// demo and the load benchmark. It answers POST /v1/chat/completions (plain or
// streamed as SSE, as the request asks) with "<model> answers: <last user
// message>", and can be told to answer slowly, answer with tool calls or any
// finish reason, fail with any status (429 with Retry-After, 503, 400
// "maximum context length"), drop the connection, or drop it in the middle
// of a stream.
//
//   torouter::server::StandInUpstream upstream("small");
//   int port = upstream.start();                       // 127.0.0.1, a free port
//   upstream.push_behaviour({StandInBehaviour::Kind::Status, 503});  // the next call fails
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "torouter/openai/upstream.hpp"

namespace torouter::server {

/// What a stand-in does with a request.
struct StandInBehaviour {
  enum class Kind {
    Answer,         ///< 200 with the answer (streamed if the request asks).
    Status,         ///< `status` with `body` (and Retry-After when set).
    Drop,           ///< Sends headers, then closes the connection.
    DropMidStream,  ///< Streams `chunks - 1` pieces, then closes (Drop when not streaming).
  };
  Kind kind = Kind::Answer;
  /// For `Status`.
  int status = 200;
  /// For `Status`: the body; empty gives an OpenAI-style error object.
  std::string body;
  /// For `Status`: the Retry-After header's value, if any.
  std::string retry_after;
  /// Pause before answering.
  std::chrono::milliseconds delay{0};
  /// Pieces of a streamed answer.
  int chunks = 3;
  /// Pause between streamed pieces.
  std::chrono::milliseconds chunk_gap{0};
  /// Streamed: pieces of `reasoning_content` before the answer's (a
  /// reasoning model's thinking, as vLLM streams it), `chunk_gap` apart.
  int reasoning_chunks = 0;
  /// For `Answer`: tool calls made instead of a text answer (the content is
  /// then null); streamed, each call's arguments come in two pieces.
  std::vector<openai::ToolCall> tool_calls;
  /// For `Answer`: the finish reason; empty gives "tool_calls" with tool
  /// calls, else "stop".
  std::string finish_reason;
  /// For `Answer`: what to send, as it is, in place of the stand-in's own
  /// answer (to test what a relay passes on): a plain request's JSON body,
  /// or a streamed one's events (each "data: ...\n\n", `chunk_gap` apart).
  std::string verbatim_body;
  std::vector<std::string> verbatim_events;
};

/// One stand-in server with its own I/O threads. Its delays and a stream's
/// gaps are timers: it holds no thread while it waits, so a few threads
/// serve any number of slow answers at once.
class StandInUpstream {
 public:
  /// `name` appears in answers when the request names no model. With a
  /// certificate chain and key (PEM files) it serves HTTPS.
  explicit StandInUpstream(std::string name, std::size_t threads = 1,
                           std::string tls_cert_file = {}, std::string tls_key_file = {});
  ~StandInUpstream();
  StandInUpstream(const StandInUpstream&) = delete;
  StandInUpstream& operator=(const StandInUpstream&) = delete;

  /// Listens on 127.0.0.1 (`port`, 0 for a free one) in the background;
  /// returns the port, or -1 when it cannot bind.
  int start(int port = 0);
  /// Serves on the calling thread until `stop`.
  bool run(int port);
  void stop();

  /// Behaviour for every request without a queued one.
  void set_behaviour(StandInBehaviour behaviour);
  /// Behaviour for the next request only (queued in order).
  void push_behaviour(StandInBehaviour behaviour);

  /// "http://127.0.0.1:<port>/v1" (https:// when it serves HTTPS).
  std::string base_url() const;
  int port() const;
  /// Chat requests received.
  std::size_t requests() const;
  /// Chat answers being sent now (from the request to the answer's end),
  /// and the most there have been at once.
  std::size_t in_flight() const;
  std::size_t most_in_flight() const;
  /// Streamed answers cut short because the caller stopped taking them.
  std::size_t streams_cut() const;
  /// The last chat request's body and Authorization header.
  std::string last_body() const;
  std::string last_authorization() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace torouter::server
