// The decision log: records as JSON lines, and the thread that writes and
// rotates the file (see torouter/decision_log.hpp).
#include "torouter/decision_log.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>
#include <thread>

#include "fnv.hpp"
#include "json_text.hpp"
#include "torouter/error.hpp"
#include "torouter/router.hpp"

TOROUTER_BEGIN_NAMESPACE

using detail::append_json_string;
using detail::json_number;
using detail::json_string;

namespace {

// Seconds since the epoch, with milliseconds.
std::string epoch_seconds(std::chrono::system_clock::time_point time) {
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
  return fmt::format("{}.{:03}", ms / 1000, ms % 1000);
}

std::string attempts_json(const std::vector<Attempt>& attempts) {
  std::string out = "[";
  for (const Attempt& a : attempts) {
    if (out.size() > 1) out += ", ";
    out += fmt::format(
        "{{\"expert\": {}, \"number\": {}, \"outcome\": \"{}\", \"failure\": \"{}\", "
        "\"detail\": {}, \"waited_ms\": {}, \"latency_ms\": {}, \"cost_usd\": {}}}",
        json_string(a.expert), a.number, to_string(a.outcome), to_string(a.failure),
        json_string(a.detail), a.waited.count(), a.latency.count(), json_number(a.cost_usd));
  }
  return out + "]";
}

}  // namespace

std::string prompt_hash(std::string_view text) {
  return fmt::format("{:016x}", detail::fnv1a_64(text));
}

std::string decision_log_line(const DecisionRecord& record, bool redact_prompt) {
  if (record.result == nullptr) throw Error("decision_log_line: the record has no result");
  const InvokeResult& r = *record.result;
  std::string out = "{\"type\": \"decision\", \"id\": ";
  append_json_string(out, record.request_id);
  out += fmt::format(", \"time\": {}, \"model_version\": {}, \"prompt_hash\": \"{}\", ",
                     epoch_seconds(record.time), json_string(r.decision.model_version),
                     prompt_hash(record.prompt));
  out += "\"prompt\": ";
  if (redact_prompt) {
    out += "null";
  } else {
    append_json_string(out, record.prompt);
  }
  out += fmt::format(
      ", \"propensity\": {}, \"pinned_expert\": {}, \"decision\": {}, \"attempts\": {}, "
      "\"expert\": {}, "
      "\"error\": {}, \"error_message\": {}, \"input_tokens\": {}, \"output_tokens\": {}, "
      "\"cost_usd\": {}, \"latency_ms\": {}}}",
      json_number(record.propensity),
      record.pinned_expert.empty() ? "null" : json_string(record.pinned_expert),
      to_json(r.decision), attempts_json(r.attempts),
      r.expert.empty() ? "null" : json_string(r.expert),
      r.ok() ? "null" : json_string(to_string(r.error)),
      r.ok() ? "null" : json_string(r.error_message), r.response.input_tokens,
      r.response.output_tokens, json_number(r.cost_usd), record.latency.count());
  return out;
}

std::string validate_decision_log_options(const DecisionLogOptions& options) {
  if (options.path.empty()) return "path must not be empty";
  if (options.queue_lines == 0) return "queue_lines must be at least 1";
  return {};
}

// ------------------------------------------------------------------ writer

struct DecisionLog::Impl {
  explicit Impl(DecisionLogOptions o) : options(std::move(o)) {
    if (auto problem = validate_decision_log_options(options); !problem.empty()) {
      throw Error("DecisionLogOptions." + problem, ErrorCode::Misuse);
    }
    open();
    writer = std::thread([this] { write_queued(); });
  }

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
    }
    changed.notify_all();
    writer.join();
    if (file != nullptr) std::fclose(file);
  }

  void open() {
    file = std::fopen(options.path.c_str(), "ab");
    if (file == nullptr) {
      throw Error(fmt::format("decision log {}: cannot open: {}", options.path,
                              std::strerror(errno)));
    }
    std::error_code ec;
    const auto size = std::filesystem::file_size(options.path, ec);
    file_bytes = ec ? 0 : size;
  }

  // Queues a line, or drops and counts it when the queue is full.
  void push(std::string line) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (queue.size() >= options.queue_lines) {
        ++dropped;
        return;
      }
      queue.push_back(std::move(line));
    }
    changed.notify_all();
  }

  // The writer thread: takes what is queued, writes it, rotates as needed.
  void write_queued() {
    std::unique_lock<std::mutex> lock(mutex);
    for (;;) {
      changed.wait(lock, [this] { return stopping || !queue.empty(); });
      if (queue.empty() && stopping) return;
      std::deque<std::string> batch;
      batch.swap(queue);
      writing = true;
      lock.unlock();
      std::uint64_t ok = 0;
      for (const std::string& line : batch) ok += write_line(line) ? 1 : 0;
      if (file != nullptr) std::fflush(file);
      lock.lock();
      writing = false;
      written += ok;
      dropped += batch.size() - ok;
      changed.notify_all();  // flush() waits for this
    }
  }

  // False when the line could not be written (it counts as dropped).
  bool write_line(const std::string& line) {
    if (file != nullptr && options.max_bytes > 0 && file_bytes > 0 &&
        file_bytes + line.size() + 1 > options.max_bytes) {
      rotate();
    }
    if (file == nullptr) file = std::fopen(options.path.c_str(), "ab");  // retry a failed reopen
    if (file == nullptr) return false;
    const bool ok = std::fwrite(line.data(), 1, line.size(), file) == line.size() &&
                    std::fputc('\n', file) != EOF;
    file_bytes += line.size() + 1;
    return ok;
  }

  // path -> path.1 -> path.2 ... ; the oldest beyond max_files goes.
  void rotate() {
    std::fclose(file);
    file = nullptr;
    std::error_code ec;
    const auto numbered = [this](std::size_t i) { return options.path + "." + std::to_string(i); };
    if (options.max_files == 0) {
      std::filesystem::remove(options.path, ec);
    } else {
      std::filesystem::remove(numbered(options.max_files), ec);
      for (std::size_t i = options.max_files; i > 1; --i) {
        std::filesystem::rename(numbered(i - 1), numbered(i), ec);
      }
      std::filesystem::rename(options.path, numbered(1), ec);
    }
    file = std::fopen(options.path.c_str(), "ab");  // null: write_line retries, lines drop
    file_bytes = 0;
  }

  DecisionLogOptions options;
  std::FILE* file = nullptr;
  std::uint64_t file_bytes = 0;
  mutable std::mutex mutex;
  std::condition_variable changed;
  std::deque<std::string> queue;
  bool writing = false;
  bool stopping = false;
  std::uint64_t written = 0;
  std::uint64_t dropped = 0;
  std::thread writer;
};

DecisionLog::DecisionLog(DecisionLogOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

DecisionLog::~DecisionLog() = default;

void DecisionLog::record(const DecisionRecord& record) {
  impl_->push(decision_log_line(record, impl_->options.redact_prompts));
}

void DecisionLog::record_feedback(std::string_view request_id, double quality) {
  if (!(quality >= 0.0 && quality <= 1.0)) {
    throw Error(fmt::format("feedback quality must be in [0, 1], got {}", quality),
                ErrorCode::Misuse);
  }
  std::string line = "{\"type\": \"feedback\", \"id\": ";
  append_json_string(line, request_id);
  line += fmt::format(", \"time\": {}, \"quality\": {}}}",
                      epoch_seconds(std::chrono::system_clock::now()), json_number(quality));
  impl_->push(std::move(line));
}

void DecisionLog::flush() {
  std::unique_lock<std::mutex> lock(impl_->mutex);
  impl_->changed.wait(lock, [this] { return impl_->queue.empty() && !impl_->writing; });
}

std::uint64_t DecisionLog::written() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->written;
}

std::uint64_t DecisionLog::dropped() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->dropped;
}

const DecisionLogOptions& DecisionLog::options() const { return impl_->options; }

TOROUTER_END_NAMESPACE
