// torouter/collect.hpp: data preparation (the paper's phase 1): send every
// prompt to every expert, score each answer against the prompt's reference,
// and write a routing dataset folder in the shared format.
//
//   auto prompts = torouter::load_prompts("prompts.jsonl");
//   auto registry = torouter::load_expert_registry("experts.json");
//   std::map<std::string, torouter::Transport> transports = {
//       {"small", torouter::Transport::sync(call_small)},
//       {"large", torouter::Transport::sync(call_large)}};
//   torouter::CollectOptions options;
//   options.test_fraction = 0.3;  // also write test.jsonl
//   torouter::CollectSummary summary = torouter::collect_dataset(
//       prompts, registry, transports, torouter::make_metric_scorer(torouter::Metric::TokenF1),
//       "data/mine", options);
//   for (const auto& f : summary.failures) log(f.id, f.expert, f.failure, f.message);
//
// Calls run on a small thread pool with a cap on the calls in flight per
// expert. Each finished (prompt, expert) call is appended to a journal in the
// output folder at once, so a run that is interrupted (killed, or cancelled
// through `CollectOptions::cancel`) resumes where it stopped without calling
// an expert twice for the same prompt; the dataset files are written from the
// journal once every pair is done.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/expert.hpp"
#include "torouter/transport.hpp"

TOROUTER_BEGIN_NAMESPACE

/// One prompt to collect answers for, with the answer it expects.
struct CollectPrompt {
  /// Unique key of the prompt, also the dataset row's id. A prompt file line
  /// without an id gets "line-N" (its 1-based line number).
  std::string id;
  /// The prompt sent to every expert, UTF-8.
  std::string prompt;
  /// The expected answer the built-in metrics compare with; may be empty for
  /// a custom scorer that needs none.
  std::string reference;
  /// The task or benchmark the prompt comes from; may be empty.
  std::string task;
};

/// Loads a prompts file: JSONL, one `{"id": "...", "prompt": "...",
/// "reference": "...", "task": "..."}` per line (lines split on '\n' only;
/// other fields ignored; `id` a string or a whole number). `prompt` is
/// required, and `reference` too when `require_reference` is true (the
/// built-in metrics need it). Throws `Error` naming the file, the 1-based line
/// and the field ("prompts.jsonl:3: reference: missing") for an unreadable
/// file, invalid JSON, a missing or mistyped field, or a duplicate id.
std::vector<CollectPrompt> load_prompts(const std::string& path, bool require_reference = true);

/// Parses prompts JSONL text as `load_prompts` does; `origin` names it in errors.
std::vector<CollectPrompt> parse_prompts(std::string_view jsonl, const std::string& origin,
                                         bool require_reference = true);

/// A built-in way to score an answer against the reference.
enum class Metric {
  ExactMatch,  ///< 1 when the normalised answer equals the normalised reference, else 0.
  TokenF1,     ///< SQuAD's token F1 over the bags of words.
  RougeL,      ///< ROUGE-L F-measure: longest common token subsequence.
};

/// "exact", "f1" or "rougeL".
constexpr std::string_view to_string(Metric metric) {
  switch (metric) {
    case Metric::ExactMatch:
      return "exact";
    case Metric::TokenF1:
      return "f1";
    case Metric::RougeL:
      return "rougeL";
  }
  return "unknown";
}

/// The metric named "exact", "f1" or "rougeL"; throws `Error` for other names.
Metric parse_metric(std::string_view name);

/// ASCII lowercase, whitespace trimmed at both ends and runs of whitespace
/// collapsed to one space (bytes >= 0x80 pass through unchanged).
std::string normalize_answer(std::string_view text);

/// 1.0 when `normalize_answer(answer) == normalize_answer(reference)`, else 0.0.
double exact_match_score(std::string_view answer, std::string_view reference);

/// SQuAD's token F1: both texts lowercased, ASCII punctuation deleted, the
/// articles "a", "an", "the" dropped, split on whitespace; then
/// 2 P R / (P + R) with P and R the shared tokens (as multisets) over the
/// answer's and the reference's token counts. Two texts without tokens score
/// 1, one without tokens scores 0.
double token_f1_score(std::string_view answer, std::string_view reference);

/// ROUGE-L F-measure (beta = 1): both texts lowercased, ASCII punctuation
/// replaced by spaces, split on whitespace; L the length of the longest
/// common subsequence of the token sequences, P = L / answer tokens,
/// R = L / reference tokens, score 2 P R / (P + R). Two texts without tokens
/// score 1, one without tokens scores 0.
double rouge_l_score(std::string_view answer, std::string_view reference);

/// Quality in [0, 1] of an expert's `answer` to `prompt` (whose reference it
/// may use). It is called from several threads at once, so it must be
/// thread-safe; it may call another model (an LLM judge). A throw or a value
/// outside [0, 1] records the call as failed ("scoring_error").
using AnswerScorer = std::function<double(const CollectPrompt& prompt, std::string_view answer)>;

/// A scorer that applies a built-in metric to the prompt's reference.
AnswerScorer make_metric_scorer(Metric metric);

/// Progress of a collection, after each finished (prompt, expert) call.
struct CollectProgress {
  /// Pairs finished in this run (answered or failed).
  std::size_t done = 0;
  /// Pairs this run has to do (those not already in the journal).
  std::size_t total = 0;
  /// Pairs of this run that failed so far.
  std::size_t failed = 0;
};

/// How `collect_dataset` calls, retries, resumes and writes.
struct CollectOptions {
  /// Worker threads sending calls; calls are I/O bound, so more threads than
  /// cores is normal. At least 1.
  std::size_t threads = 8;
  /// Most calls in flight per expert; 0 takes the expert's
  /// `max_concurrent_calls`, or `default_max_concurrent_calls` when that is 0 too.
  std::size_t max_concurrent_per_expert = 0;
  /// The per-expert cap when neither the option above nor the expert sets one.
  std::size_t default_max_concurrent_calls = 4;
  /// Calls of one (prompt, expert) pair, the first included; only retryable
  /// failures (`is_retryable`) are retried.
  int max_attempts = 3;
  /// Pause before the first retry; grows by `backoff_multiplier` after each
  /// retry not timed by a `retry_after`.
  std::chrono::milliseconds initial_backoff{500};
  /// Longest pause between retries.
  std::chrono::milliseconds max_backoff{10000};
  /// Growth of the pause between successive retries.
  double backoff_multiplier = 2.0;
  /// A rate-limited expert's `retry_after` is waited out when it is within
  /// this long; past it the pair is recorded as failed at once (the
  /// router's rule, where it fails over instead; `retry_failed` calls it
  /// again on a later run).
  std::chrono::milliseconds max_retry_after{60000};
  /// Time one call may take (passed as `Request::timeout`; an asynchronous
  /// transport that has not completed by then counts as timed out).
  std::chrono::milliseconds attempt_timeout{60000};
  /// Passed to the transport as `Request::max_output_tokens`; 0 for the expert's default.
  std::size_t max_output_tokens = 0;
  /// Name of the rows file written in the output folder.
  std::string output_file = "train.jsonl";
  /// Share of the prompts written to test.jsonl instead (rounded to whole
  /// rows); 0 writes every row to `output_file` and no test.jsonl.
  double test_fraction = 0.0;
  /// Seed of the train/test shuffle: the same seed and prompts give the same split.
  std::uint64_t seed = 0;
  /// Name of the journal in the output folder; keep it to resume.
  std::string journal_file = "collect_journal.jsonl";
  /// When true, pairs the journal records as failed are called again;
  /// by default they count as done (and stay reported as failures).
  bool retry_failed = false;
  /// When set and true, no new pair is started (pairs already started finish,
  /// retries included), nothing but the journal is written, and the summary
  /// says `cancelled`; a later run resumes.
  const std::atomic<bool>* cancel = nullptr;
  /// Called after each finished pair, from the worker threads but one call
  /// at a time; it must not block for long.
  std::function<void(const CollectProgress&)> on_progress;
  /// The "source" field of the experts.json written.
  std::string source = "torouter collect";
};

/// A (prompt, expert) pair that has no outcome because its call failed.
struct CollectFailure {
  /// The prompt's id.
  std::string id;
  /// The expert's name.
  std::string expert;
  /// `to_string(FailureKind)` of the last attempt ("server_error", ...) or
  /// "scoring_error" when the answer came but the scorer failed.
  std::string failure;
  /// Detail of the failure.
  std::string message;
  /// Calls made for the pair.
  int attempts = 0;
  /// True when it failed in this run, false when recorded by an earlier run.
  bool this_run = false;
};

/// What `collect_dataset` did.
struct CollectSummary {
  /// Prompts and (enabled) experts collected over.
  std::size_t prompts = 0;
  std::size_t experts = 0;
  /// Pairs called in this run, answered or failed.
  std::size_t calls_made = 0;
  /// Transport calls in this run, retries included.
  std::size_t attempts = 0;
  /// Pairs skipped because the journal already had them.
  std::size_t skipped_done = 0;
  /// Pairs of this run that failed after their retries.
  std::size_t failed = 0;
  /// USD spent by the answered calls of this run.
  double cost_usd = 0.0;
  /// USD of every answered call in the dataset, earlier runs included.
  double total_cost_usd = 0.0;
  /// True when the run stopped on `CollectOptions::cancel`; no dataset file
  /// was written then.
  bool cancelled = false;
  /// Every pair without an outcome because of a failure, in prompt then expert order.
  std::vector<CollectFailure> failures;
  /// Rows written to `output_file` and to test.jsonl.
  std::size_t train_rows = 0;
  std::size_t test_rows = 0;
};

/// Sends every prompt to every enabled expert of `registry` through its
/// transport in `transports` (keyed by expert name), scores each answer with
/// `scorer`, and writes `out_dir`/experts.json (the experts with their prices)
/// and the rows (`options.output_file`, and test.jsonl when
/// `options.test_fraction` > 0) in the shared dataset format, creating the
/// folder if needed. Each outcome records quality, `cost_usd` (the expert's
/// prices times the response's tokens, or ceil(chars / 4) estimates where it
/// reports none), `output_chars`, `input_tokens`, `output_tokens` and
/// `latency_ms`; a row lacks the outcome of an expert whose call failed.
/// Resumes from `out_dir`/`options.journal_file` when present. Throws `Error`
/// before any call for a missing or invalid transport, duplicate prompt ids,
/// bad options, or a journal that is malformed or recorded a different prompt
/// under the same id; rethrows an exception of `on_progress` or of a journal
/// write after the workers stop.
CollectSummary collect_dataset(const std::vector<CollectPrompt>& prompts,
                               const ExpertRegistry& registry,
                               const std::map<std::string, Transport>& transports,
                               const AnswerScorer& scorer, const std::string& out_dir,
                               const CollectOptions& options = {});

TOROUTER_END_NAMESPACE
