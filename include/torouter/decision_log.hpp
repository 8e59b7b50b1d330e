// decision_log.hpp: one record per routed call, and a JSON-lines file for
// them, so a service can learn from its own traffic (issue 14).
//
//   torouter::DecisionLogOptions options;
//   options.path = "decisions.jsonl";
//   auto log = std::make_shared<torouter::DecisionLog>(options);
//   router.set_decision_sink([log](const torouter::DecisionRecord& r) { log->record(r); });
//   ...
//   log->record_feedback("req-17", 0.9);   // a verdict on that call's answer
//
// The file holds one JSON object a line: `"type": "decision"` lines (the
// request id, time, model version, the prompt or only its hash, every
// candidate's predicted quality and cost, the pick and why, the
// probability the pick was made with, every attempt, the billed tokens,
// cost and latency) and `"type": "feedback"` lines (an id and a quality in
// [0, 1]; a later verdict on the same id replaces an earlier one). Lines
// are written by a thread of the log's own: `record` formats the line and
// queues it, and never waits for the disk; past `queue_lines` lines waiting,
// a line is dropped and counted (`dropped()`), never silently.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

struct InvokeResult;

/// One routed call, as the router hands it to its decision sink when the
/// invoke ends (see `Router::set_decision_sink`). Views: valid during the
/// sink's call only.
struct DecisionRecord {
  /// `InvokeOptions::request_id`, or one the router made.
  std::string_view request_id;
  /// When the invoke began.
  std::chrono::system_clock::time_point time;
  /// The prompt that was routed.
  std::string_view prompt;
  /// The decision, attempts, answer (tokens), cost and error.
  const InvokeResult* result = nullptr;
  /// The probability with which the pick was made (1 when the policy is
  /// deterministic).
  double propensity = 1.0;
  /// The expert the caller named (`InvokeOptions::expert`), empty when the
  /// router chose: a named call is no evidence of the router's policy.
  std::string_view pinned_expert;
  /// The whole invoke, from routing to its end.
  std::chrono::milliseconds latency{0};
};

/// Receives one record per routed call; must not block (it runs on the
/// invoke's thread as the invoke ends).
using DecisionSink = std::function<void(const DecisionRecord&)>;

/// FNV-1a-64 of `text` in 16 hex digits: what the log keeps of a prompt
/// when prompts are redacted (and what `collect`'s journal ties answers to).
std::string prompt_hash(std::string_view text);

/// `record` as one line of the decision log (JSON, no newline).
std::string decision_log_line(const DecisionRecord& record, bool redact_prompt);

struct DecisionLogOptions {
  /// The file; rotated to `path.1`, `path.2`, ... when it passes `max_bytes`.
  std::string path;
  /// Size at which the file is rotated (0: never).
  std::uint64_t max_bytes = 64ull << 20;
  /// Rotated files kept (`path.1` is the newest); older ones are removed.
  std::size_t max_files = 5;
  /// Lines waiting for the writer at most (besides the batch it is
  /// writing); past it, lines are dropped.
  std::size_t queue_lines = 10000;
  /// Log only each prompt's hash, not its text.
  bool redact_prompts = false;
};

/// Checks `options`; an empty string when valid, else the first field that
/// is not and why.
std::string validate_decision_log_options(const DecisionLogOptions& options);

/// The decision log's file and writer thread.
class DecisionLog {
 public:
  /// Opens (appends to) `options.path`; throws `Error` naming the file when
  /// it cannot be opened, or the field of `options` that is invalid.
  explicit DecisionLog(DecisionLogOptions options);
  /// Writes what is queued, then closes (it waits for the file: a file
  /// that blocks, a pipe nobody reads, blocks it).
  ~DecisionLog();
  DecisionLog(const DecisionLog&) = delete;
  DecisionLog& operator=(const DecisionLog&) = delete;

  /// Queues a decision line; never waits for the disk.
  void record(const DecisionRecord& record);
  /// Queues a feedback line: `quality` in [0, 1] for the call `request_id`
  /// (throws `Error` for a quality outside it).
  void record_feedback(std::string_view request_id, double quality);
  /// Waits until every line queued so far is written (tests, shutdown).
  void flush();

  /// Lines written, and lines dropped because the queue was full.
  std::uint64_t written() const;
  std::uint64_t dropped() const;
  const DecisionLogOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

TOROUTER_END_NAMESPACE
