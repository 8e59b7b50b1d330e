// Data preparation: every prompt to every expert, scored, journaled, written
// as a routing dataset (format: ../shared/data/README.md).
//
// The journal is the source of truth. Each finished (prompt, expert) call is
// appended to it as one JSON line and flushed before the next pair starts on
// that worker, so whatever ends the process, every answer paid for is kept;
// the dataset files are derived from it at the end. A line cut short by a
// crash (no final '\n') is dropped and truncated away on the next start.
#include "torouter/decision_log.hpp"
#include "torouter/collect.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "collect_journal.hpp"
#include "json_text.hpp"
#include "jsonl_lines.hpp"
#include "retry_rule.hpp"
#include "torouter/abi.hpp"
#include "torouter/cost_model.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE

namespace {

using detail::for_each_line;
using detail::journal_line;
using detail::JournalEntry;
using detail::JournalWriter;
using detail::json_number;
using detail::json_string;
using detail::LineFields;
using detail::pair_key;
using detail::parse_object;
using detail::read_file;
using detail::read_journal;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- calling

// Shared between a worker waiting on an asynchronous transport and its
// completion callback, which may run after the worker gave up on it.
struct AsyncCompletion {
  std::mutex mutex;
  std::condition_variable done_signal;
  bool done = false;
  Response response;
  std::string joined;  // the pieces of an asynchronous stream so far
};

Response call_transport(const Transport& transport, const Request& request) {
  try {
    if (transport.call) return transport.call(request);
    if (transport.call_streaming) {
      std::string joined;
      Response response = transport.call_streaming(
          request, [&joined](std::string_view chunk) { joined.append(chunk); });
      if (response.ok() && response.text.empty()) response.text = std::move(joined);
      return response;
    }
    auto completion = std::make_shared<AsyncCompletion>();
    auto on_done = [completion](Response response) {
      std::lock_guard<std::mutex> lock(completion->mutex);
      if (completion->done) return;
      if (response.ok() && response.text.empty()) response.text = std::move(completion->joined);
      completion->response = std::move(response);
      completion->done = true;
      completion->done_signal.notify_all();
    };
    if (transport.call_async) {
      transport.call_async(request, on_done);
    } else {
      auto on_chunk = [completion](std::string_view chunk) {
        std::lock_guard<std::mutex> lock(completion->mutex);
        if (!completion->done) completion->joined.append(chunk);
      };
      transport.call_async_streaming(request, on_chunk, on_done);
    }
    std::unique_lock<std::mutex> lock(completion->mutex);
    if (!completion->done_signal.wait_for(lock, request.timeout,
                                          [&] { return completion->done; })) {
      return Response::failed(FailureKind::Timeout,
                              fmt::format("no completion within {} ms", request.timeout.count()));
    }
    return std::move(completion->response);
  } catch (const std::exception& e) {
    return Response::failed(FailureKind::TransportError,
                            fmt::format("transport threw: {}", e.what()));
  } catch (...) {
    return Response::failed(FailureKind::TransportError, "transport threw a non-exception");
  }
}

// Hands out (expert, prompt) pairs so that no expert has more than its cap
// in flight; experts are visited round robin so one slow expert does not
// hold every worker.
class Scheduler {
 public:
  Scheduler(std::vector<std::deque<std::size_t>> pending, std::vector<std::size_t> caps,
            const std::atomic<bool>* cancel)
      : pending_(std::move(pending)),
        caps_(std::move(caps)),
        in_flight_(caps_.size(), 0),
        cancel_(cancel) {}

  // False when there is nothing more for this worker to do.
  bool next(std::size_t& expert, std::size_t& prompt) {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      if (stopped_ || cancelled()) return false;
      bool any_pending = false;
      const std::size_t n = pending_.size();
      for (std::size_t k = 0; k < n; ++k) {
        const std::size_t e = (cursor_ + k) % n;
        if (pending_[e].empty()) continue;
        any_pending = true;
        if (in_flight_[e] >= caps_[e]) continue;
        expert = e;
        prompt = pending_[e].front();
        pending_[e].pop_front();
        ++in_flight_[e];
        cursor_ = (e + 1) % n;
        return true;
      }
      if (!any_pending) return false;
      wakeup_.wait(lock);
    }
  }

  void release(std::size_t expert) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --in_flight_[expert];
    }
    wakeup_.notify_all();
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopped_ = true;
    }
    wakeup_.notify_all();
  }

  bool cancelled() const { return cancel_ != nullptr && cancel_->load(); }

 private:
  std::mutex mutex_;
  std::condition_variable wakeup_;
  std::vector<std::deque<std::size_t>> pending_;
  std::vector<std::size_t> caps_;
  std::vector<std::size_t> in_flight_;
  std::size_t cursor_ = 0;
  bool stopped_ = false;
  const std::atomic<bool>* cancel_;
};

void validate(const CollectOptions& o) {
  auto bad = [](const std::string& what) { throw Error(fmt::format("CollectOptions: {}", what)); };
  if (o.threads == 0) bad("threads must be >= 1");
  if (o.default_max_concurrent_calls == 0) bad("default_max_concurrent_calls must be >= 1");
  if (o.max_attempts < 1) bad("max_attempts must be >= 1");
  if (o.initial_backoff.count() < 0 || o.max_backoff.count() < 0 || o.max_retry_after.count() < 0) {
    bad("backoff and retry_after limits must be >= 0");
  }
  if (!(std::isfinite(o.backoff_multiplier) && o.backoff_multiplier >= 1.0)) {
    bad("backoff_multiplier must be a finite number >= 1");
  }
  if (o.attempt_timeout.count() <= 0) bad("attempt_timeout must be > 0");
  if (!(o.test_fraction >= 0.0 && o.test_fraction <= 1.0)) {
    bad(fmt::format("test_fraction must be in [0, 1], got {}", o.test_fraction));
  }
  for (const std::string* name : {&o.output_file, &o.journal_file}) {
    if (name->empty() || name->find('/') != std::string::npos) {
      bad(fmt::format("file name \"{}\" must be non-empty and hold no '/'", *name));
    }
  }
  if (o.output_file == o.journal_file || o.output_file == "experts.json" ||
      o.journal_file == "experts.json" || o.journal_file == "test.jsonl") {
    bad("output_file, journal_file and experts.json must be distinct files");
  }
  if (o.test_fraction > 0.0 && o.output_file == "test.jsonl") {
    bad("output_file cannot be test.jsonl when test_fraction > 0 (the split writes test.jsonl)");
  }
}

void write_atomically(const std::filesystem::path& path, const std::string& text) {
  const std::filesystem::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out)
      throw Error(fmt::format("{}: cannot open for writing", temporary.string()),
                  ErrorCode::FileAccess);
    out << text;
    out.flush();
    if (!out) throw Error(fmt::format("{}: cannot write", temporary.string()));
  }
  std::error_code ec;
  std::filesystem::rename(temporary, path, ec);
  if (ec) throw Error(fmt::format("{}: cannot replace: {}", path.string(), ec.message()));
}

std::string experts_json(const std::vector<const ExpertSpec*>& experts, const std::string& source) {
  std::string out = fmt::format("{{\"source\": {}, \"experts\": {{", json_string(source));
  for (std::size_t i = 0; i < experts.size(); ++i) {
    const ExpertSpec& e = *experts[i];
    out += fmt::format("{}\n  {}: {{\"input_usd_per_mtok\": {}, \"output_usd_per_mtok\": {}",
                       i == 0 ? "" : ",", json_string(e.name), json_number(e.input_usd_per_mtok),
                       json_number(e.output_usd_per_mtok));
    if (e.context_window_tokens != std::numeric_limits<std::size_t>::max()) {
      out += fmt::format(", \"context_window_tokens\": {}", e.context_window_tokens);
    }
    if (!e.tags.empty()) {
      out += ", \"tags\": [";
      for (std::size_t t = 0; t < e.tags.size(); ++t) {
        out += (t == 0 ? "" : ", ") + json_string(e.tags[t]);
      }
      out += "]";
    }
    out += fmt::format(", \"time_to_first_token_ms\": {}, \"output_tokens_per_second\": {}",
                       json_number(e.latency.time_to_first_token_ms),
                       json_number(e.latency.output_tokens_per_second));
    if (e.max_concurrent_calls != 0) {
      out += fmt::format(", \"max_concurrent_calls\": {}", e.max_concurrent_calls);
    }
    out += "}";
  }
  out += "\n}}\n";
  return out;
}

// Which prompts go to test.jsonl: a Fisher-Yates shuffle by mt19937_64 (whose
// output the standard fixes), not std::shuffle (whose algorithm it does not),
// so a seed splits the same on every standard library.
std::vector<bool> test_split(std::size_t n, double fraction, std::uint64_t seed) {
  std::vector<std::size_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  for (std::size_t i = n; i > 1; --i) {
    const auto j = static_cast<std::size_t>(rng() % i);
    std::swap(order[i - 1], order[j]);
  }
  const auto n_test =
      std::min(n, static_cast<std::size_t>(std::llround(fraction * static_cast<double>(n))));
  std::vector<bool> is_test(n, false);
  for (std::size_t k = 0; k < n_test; ++k) is_test[order[k]] = true;
  return is_test;
}

}  // namespace

// ---------------------------------------------------------------- public API

std::vector<CollectPrompt> parse_prompts(std::string_view jsonl, const std::string& origin,
                                         bool require_reference) {
  std::vector<CollectPrompt> prompts;
  std::unordered_map<std::string, std::size_t> line_of_id;
  simdjson::dom::parser parser;
  for_each_line(jsonl, origin, [&](std::string_view line, std::size_t line_no) {
    const auto object = parse_object(parser, line, origin, line_no);
    const LineFields fields{origin, line_no};
    CollectPrompt p;
    bool saw_id = false, saw_prompt = false, saw_reference = false;
    for (auto field : object) {
      const std::string_view key = field.key;
      if (key == "id") {
        std::uint64_t number = 0;
        if (field.value.get_uint64().get(number) == simdjson::SUCCESS) {
          p.id = std::to_string(number);
        } else {
          p.id = fields.text(key, field.value);
        }
        saw_id = true;
      } else if (key == "prompt") {
        p.prompt = fields.text(key, field.value);
        saw_prompt = true;
      } else if (key == "reference") {
        p.reference = fields.text(key, field.value);
        saw_reference = true;
      } else if (key == "task") {
        p.task = fields.text(key, field.value);
      }
    }
    if (!saw_prompt) fields.fail("prompt", "missing");
    if (require_reference && !saw_reference) {
      fields.fail("reference", "missing (the built-in metrics compare answers with it)");
    }
    if (!saw_id) p.id = fmt::format("line-{}", line_no);
    if (p.id.empty()) fields.fail("id", "must not be empty");
    auto [it, inserted] = line_of_id.emplace(p.id, line_no);
    if (!inserted)
      fields.fail("id", fmt::format("\"{}\" already used on line {}", p.id, it->second));
    prompts.push_back(std::move(p));
  });
  return prompts;
}

std::vector<CollectPrompt> load_prompts(const std::string& path, bool require_reference) {
  return parse_prompts(read_file(path), path, require_reference);
}

CollectSummary collect_dataset(const std::vector<CollectPrompt>& prompts,
                               const ExpertRegistry& registry,
                               const std::map<std::string, Transport>& transports,
                               const AnswerScorer& scorer, const std::string& out_dir,
                               const CollectOptions& options) {
  validate(options);
  if (!scorer) throw Error("collect_dataset: no scorer given");

  std::vector<const ExpertSpec*> experts;
  std::vector<const Transport*> expert_transport;
  std::vector<std::size_t> caps;
  for (const ExpertSpec& spec : registry.experts()) {
    if (!spec.enabled) continue;  // a disabled expert is never routed to, so not worth paying for
    auto it = transports.find(spec.name);
    if (it == transports.end()) {
      throw Error(fmt::format("collect_dataset: no transport for expert \"{}\"", spec.name));
    }
    if (!it->second.valid()) {
      throw Error(
          fmt::format("collect_dataset: the transport of expert \"{}\" must set exactly "
                      "one of call, call_async, call_streaming, call_async_streaming",
                      spec.name));
    }
    experts.push_back(&spec);
    expert_transport.push_back(&it->second);
    caps.push_back(options.max_concurrent_per_expert != 0 ? options.max_concurrent_per_expert
                   : spec.max_concurrent_calls != 0       ? spec.max_concurrent_calls
                                                          : options.default_max_concurrent_calls);
  }
  if (experts.empty()) throw Error("collect_dataset: the registry has no enabled expert");

  std::vector<std::string> hashes;
  {
    std::unordered_map<std::string_view, std::size_t> seen;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      if (prompts[i].id.empty())
        throw Error(fmt::format("collect_dataset: prompt {} has no id", i));
      if (!seen.emplace(prompts[i].id, i).second) {
        throw Error(fmt::format("collect_dataset: duplicate prompt id \"{}\"", prompts[i].id));
      }
      // Ties a journal entry to the text it answered, so a prompts file
      // edited between runs cannot pass an old answer off as a new one's.
      hashes.push_back(torouter::prompt_hash(prompts[i].prompt));
    }
  }

  const std::filesystem::path folder(out_dir);
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  if (ec) throw Error(fmt::format("{}: cannot create the folder: {}", out_dir, ec.message()));
  const std::filesystem::path journal_path = folder / options.journal_file;
  std::unordered_map<std::string, JournalEntry> journal = read_journal(journal_path);

  CollectSummary summary;
  summary.prompts = prompts.size();
  summary.experts = experts.size();
  std::vector<std::deque<std::size_t>> pending(experts.size());
  std::size_t total = 0;
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    for (std::size_t e = 0; e < experts.size(); ++e) {
      auto it = journal.find(pair_key(prompts[p].id, experts[e]->name));
      if (it != journal.end()) {
        if (it->second.hash != hashes[p]) {
          throw Error(fmt::format(
              "{}: prompt \"{}\" was recorded with a different prompt text; use a fresh output "
              "folder or remove the journal",
              journal_path.string(), prompts[p].id));
        }
        if (it->second.ok || !options.retry_failed) {
          ++summary.skipped_done;
          continue;
        }
      }
      pending[e].push_back(p);
      ++total;
    }
  }

  JournalWriter writer(journal_path);
  Scheduler scheduler(std::move(pending), caps, options.cancel);
  std::mutex results_mutex;  // guards the journal map, the summary and progress
  std::exception_ptr first_error;
  std::unordered_set<std::string> failed_this_run;
  CollectProgress progress;
  progress.total = total;
  const CostModel cost_model;

  auto run_pair = [&](std::size_t e, std::size_t p) {
    const ExpertSpec& spec = *experts[e];
    const CollectPrompt& prompt = prompts[p];
    Request request;
    request.expert = spec.name;
    request.prompt = prompt.prompt;
    request.max_output_tokens = options.max_output_tokens;
    request.timeout = options.attempt_timeout;
    Response response;
    std::chrono::milliseconds latency{0};
    double backoff_ms = static_cast<double>(options.initial_backoff.count());
    int attempts = 0;
    for (int attempt = 1; attempt <= options.max_attempts; ++attempt) {
      request.attempt = attempt;
      const auto start = Clock::now();
      response = call_transport(*expert_transport[e], request);
      latency = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
      attempts = attempt;
      if (response.ok() || !is_retryable(response.failure) || attempt == options.max_attempts)
        break;
      const auto backoff = std::chrono::milliseconds(static_cast<std::int64_t>(
          std::min(backoff_ms, static_cast<double>(options.max_backoff.count()))));
      const auto pause = detail::retry_wait(response, backoff, options.max_retry_after);
      if (!pause) {  // told to wait past max_retry_after: failed, for a later run
        response.error_message +=
            fmt::format(" (retry_after {} ms exceeds max_retry_after {} ms)",
                        response.retry_after.count(), options.max_retry_after.count());
        break;
      }
      // The slot stays held while waiting: a struggling expert should not get
      // more calls in flight, only fewer.
      std::this_thread::sleep_for(*pause);
      if (!detail::said_when_to_retry(response)) backoff_ms *= options.backoff_multiplier;
    }
    scheduler.release(e);

    JournalEntry entry;
    entry.id = prompt.id;
    entry.expert = spec.name;
    entry.hash = hashes[p];
    entry.attempts = attempts;
    entry.latency_ms =
        static_cast<double>((response.latency.count() > 0 ? response.latency : latency).count());
    if (response.ok()) {
      entry.answer = response.text;
      entry.input_tokens =
          response.input_tokens > 0 ? response.input_tokens : estimate_tokens(prompt.prompt);
      entry.output_tokens =
          response.output_tokens > 0 ? response.output_tokens : estimate_tokens(response.text);
      entry.output_chars = count_characters(response.text);
      try {
        entry.quality = scorer(prompt, response.text);
        if (!(entry.quality >= 0.0 && entry.quality <= 1.0)) {
          entry.failure = "scoring_error";
          entry.message = fmt::format("the scorer returned {}, outside [0, 1]", entry.quality);
        }
      } catch (const std::exception& ex) {
        entry.failure = "scoring_error";
        entry.message = fmt::format("the scorer threw: {}", ex.what());
      } catch (...) {
        entry.failure = "scoring_error";
        entry.message = "the scorer threw a non-exception";
      }
      entry.ok = entry.failure.empty();
    } else {
      entry.failure = std::string(to_string(response.failure));
      entry.message = response.error_message;
    }
    writer.append(journal_line(entry));

    std::lock_guard<std::mutex> lock(results_mutex);
    ++summary.calls_made;
    summary.attempts += static_cast<std::size_t>(attempts);
    if (entry.ok) {
      summary.cost_usd += cost_model.cost_usd(spec, static_cast<double>(entry.input_tokens),
                                              static_cast<double>(entry.output_tokens));
    }
    std::string key = pair_key(entry.id, entry.expert);
    if (!entry.ok) {
      ++summary.failed;
      ++progress.failed;
      failed_this_run.insert(key);
    }
    ++progress.done;
    journal[std::move(key)] = std::move(entry);
    if (options.on_progress) options.on_progress(progress);
  };

  auto worker = [&] {
    std::size_t e = 0, p = 0;
    while (scheduler.next(e, p)) {
      try {
        run_pair(e, p);
      } catch (...) {
        {
          std::lock_guard<std::mutex> lock(results_mutex);
          if (!first_error) first_error = std::current_exception();
        }
        scheduler.stop();
      }
    }
  };
  const std::size_t n_threads = std::min(options.threads, total);
  std::vector<std::thread> workers;
  workers.reserve(n_threads);
  for (std::size_t t = 0; t < n_threads; ++t) workers.emplace_back(worker);
  for (auto& t : workers) t.join();
  if (first_error) std::rethrow_exception(first_error);

  // Every pair without an answer, this run's and earlier ones, is reported.
  std::vector<std::vector<const JournalEntry*>> outcome_of(
      prompts.size(), std::vector<const JournalEntry*>(experts.size()));
  std::size_t missing = 0;
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    for (std::size_t e = 0; e < experts.size(); ++e) {
      auto it = journal.find(pair_key(prompts[p].id, experts[e]->name));
      if (it == journal.end()) {
        ++missing;
        continue;
      }
      const JournalEntry& entry = it->second;
      if (entry.ok) {
        outcome_of[p][e] = &entry;
        summary.total_cost_usd +=
            cost_model.cost_usd(*experts[e], static_cast<double>(entry.input_tokens),
                                static_cast<double>(entry.output_tokens));
      } else {
        CollectFailure f;
        f.id = entry.id;
        f.expert = entry.expert;
        f.failure = entry.failure;
        f.message = entry.message;
        f.attempts = entry.attempts;
        f.this_run = failed_this_run.count(it->first) != 0;
        summary.failures.push_back(std::move(f));
      }
    }
  }
  if (missing > 0) {
    // Only a cancel leaves pairs undone (a worker's error was rethrown above).
    summary.cancelled = true;
    return summary;
  }

  // Costs come from the current prices and the recorded tokens, so the
  // experts.json written beside the rows always agrees with them.
  const std::vector<bool> is_test = test_split(prompts.size(), options.test_fraction, options.seed);
  std::string train_text, test_text;
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    const CollectPrompt& prompt = prompts[p];
    std::string line = fmt::format("{{\"id\": {}", json_string(prompt.id));
    if (!prompt.task.empty()) line += fmt::format(", \"task\": {}", json_string(prompt.task));
    line += fmt::format(", \"prompt\": {}, \"outcomes\": {{", json_string(prompt.prompt));
    bool first = true;
    for (std::size_t e = 0; e < experts.size(); ++e) {
      const JournalEntry* entry = outcome_of[p][e];
      if (entry == nullptr) continue;
      const double cost = cost_model.cost_usd(*experts[e], static_cast<double>(entry->input_tokens),
                                              static_cast<double>(entry->output_tokens));
      line += fmt::format(
          "{}{}: {{\"quality\": {}, \"cost_usd\": {}, \"output_chars\": {}, \"input_tokens\": {}, "
          "\"output_tokens\": {}, \"latency_ms\": {}}}",
          first ? "" : ", ", json_string(experts[e]->name), json_number(entry->quality),
          json_number(cost), entry->output_chars, entry->input_tokens, entry->output_tokens,
          json_number(entry->latency_ms));
      first = false;
    }
    line += "}}\n";
    if (is_test[p]) {
      test_text += line;
      ++summary.test_rows;
    } else {
      train_text += line;
      ++summary.train_rows;
    }
  }
  write_atomically(folder / "experts.json", experts_json(experts, options.source));
  write_atomically(folder / options.output_file, train_text);
  if (options.test_fraction > 0.0) write_atomically(folder / "test.jsonl", test_text);
  return summary;
}

TOROUTER_END_NAMESPACE
