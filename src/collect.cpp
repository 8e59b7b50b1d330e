// Data preparation: every prompt to every expert, scored, journaled, written
// as a routing dataset (format: ../shared/data/README.md).
//
// The journal is the source of truth. Each finished (prompt, expert) call is
// appended to it as one JSON line and flushed before the next pair starts on
// that worker, so whatever ends the process, every answer paid for is kept;
// the dataset files are derived from it at the end. A line cut short by a
// crash (no final '\n') is dropped and truncated away on the next start.
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

#include "json_text.hpp"
#include "json_type_name.hpp"
#include "torouter/abi.hpp"
#include "torouter/cost_model.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE

namespace {

using detail::json_number;
using detail::json_string;
using simdjson::dom::element;
using simdjson::dom::element_type;
using Clock = std::chrono::steady_clock;

constexpr std::string_view kJournalHeaderKey = "torouter_collect_journal";
constexpr std::uint64_t kJournalVersion = 1;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open file", path), ErrorCode::FileAccess);
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error(fmt::format("{}: cannot read file", path), ErrorCode::FileAccess);
  return text.str();
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool is_blank(std::string_view line) {
  for (char c : line) {
    if (!is_space(c)) return false;
  }
  return true;
}

char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// Python's string.punctuation: the printable ASCII that is neither a letter,
// a digit nor a space.
bool is_ascii_punctuation(char c) {
  return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') ||
         (c >= '{' && c <= '~');
}

// Calls `fn(line, line_no)` for each line, split on '\n' only (prompts may
// hold U+2028). Blank lines are allowed at the end only, as the dataset
// reader allows them.
template <typename Fn>
void for_each_line(std::string_view text, const std::string& origin, Fn&& fn) {
  std::size_t line_no = 0;
  std::size_t start = 0;
  std::size_t first_blank = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(start, end - start);
    ++line_no;
    start = end + 1;
    if (is_blank(line)) {
      if (first_blank == 0) first_blank = line_no;
      continue;
    }
    if (first_blank != 0) throw Error(fmt::format("{}:{}: empty line", origin, first_blank));
    fn(line, line_no);
  }
}

simdjson::dom::object parse_object(simdjson::dom::parser& parser, std::string_view line,
                                   const std::string& origin, std::size_t line_no) {
  const simdjson::padded_string padded(line);
  element root;
  if (auto error = parser.parse(padded).get(root); error != simdjson::SUCCESS) {
    throw Error(
        fmt::format("{}:{}: not valid JSON: {}", origin, line_no, simdjson::error_message(error)));
  }
  simdjson::dom::object object;
  if (root.get_object().get(object) != simdjson::SUCCESS) {
    throw Error(
        fmt::format("{}:{}: expected a JSON object, got {}", origin, line_no,
                    detail::json_type_name(root)));
  }
  return object;
}

// Ties a journal entry to the text it answered, so a prompts file edited
// between runs cannot pass an old answer off as the answer to a new prompt.
std::string prompt_hash(std::string_view prompt) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : prompt) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return fmt::format("{:016x}", h);
}

// ---------------------------------------------------------------- metrics

std::vector<std::string> split_tokens(const std::string& text) {
  std::vector<std::string> tokens;
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && is_space(text[i])) ++i;
    const std::size_t begin = i;
    while (i < text.size() && !is_space(text[i])) ++i;
    if (i > begin) tokens.emplace_back(text.substr(begin, i - begin));
  }
  return tokens;
}

std::vector<std::string> squad_tokens(std::string_view text) {
  std::string cleaned;
  cleaned.reserve(text.size());
  for (char c : text) {
    if (!is_ascii_punctuation(c)) cleaned.push_back(ascii_lower(c));
  }
  std::vector<std::string> tokens = split_tokens(cleaned);
  tokens.erase(
      std::remove_if(tokens.begin(), tokens.end(),
                     [](const std::string& t) { return t == "a" || t == "an" || t == "the"; }),
      tokens.end());
  return tokens;
}

std::vector<std::string> rouge_tokens(std::string_view text) {
  std::string cleaned;
  cleaned.reserve(text.size());
  for (char c : text) cleaned.push_back(is_ascii_punctuation(c) ? ' ' : ascii_lower(c));
  return split_tokens(cleaned);
}

double f_measure(std::size_t common, std::size_t answer_tokens, std::size_t reference_tokens) {
  if (answer_tokens == 0 || reference_tokens == 0) {
    return answer_tokens == reference_tokens ? 1.0 : 0.0;
  }
  if (common == 0) return 0.0;
  const double precision = static_cast<double>(common) / static_cast<double>(answer_tokens);
  const double recall = static_cast<double>(common) / static_cast<double>(reference_tokens);
  return 2.0 * precision * recall / (precision + recall);
}

// ---------------------------------------------------------------- journal

// One finished (prompt, expert) pair as the journal records it.
struct JournalEntry {
  std::string id;
  std::string expert;
  std::string hash;
  bool ok = false;
  double quality = 0.0;
  std::size_t input_tokens = 0;
  std::size_t output_tokens = 0;
  std::size_t output_chars = 0;
  double latency_ms = 0.0;
  std::string failure;
  std::string message;
  int attempts = 0;
  std::string answer;
};

std::string journal_line(const JournalEntry& e) {
  std::string line =
      fmt::format("{{\"id\":{},\"expert\":{},\"prompt_hash\":\"{}\",\"ok\":{}", json_string(e.id),
                  json_string(e.expert), e.hash, e.ok ? "true" : "false");
  if (e.ok) {
    line +=
        fmt::format(",\"quality\":{},\"input_tokens\":{},\"output_tokens\":{},\"output_chars\":{}",
                    json_number(e.quality), e.input_tokens, e.output_tokens, e.output_chars);
  } else {
    line += fmt::format(",\"failure\":{},\"message\":{}", json_string(e.failure),
                        json_string(e.message));
  }
  line += fmt::format(",\"latency_ms\":{},\"attempts\":{},\"answer\":{}}}\n",
                      json_number(e.latency_ms), e.attempts, json_string(e.answer));
  return line;
}

// Reads one journal line; errors name the journal, the line and the field.
class JournalReader {
 public:
  JournalReader(const std::string& origin, std::size_t line_no)
      : origin_(origin), line_no_(line_no) {}

  JournalEntry read(simdjson::dom::object object) const {
    JournalEntry e;
    bool saw_id = false, saw_expert = false, saw_hash = false, saw_ok = false;
    for (auto field : object) {
      const std::string_view key = field.key;
      if (key == "id") {
        e.id = text(key, field.value);
        saw_id = true;
      } else if (key == "expert") {
        e.expert = text(key, field.value);
        saw_expert = true;
      } else if (key == "prompt_hash") {
        e.hash = text(key, field.value);
        saw_hash = true;
      } else if (key == "ok") {
        if (field.value.get_bool().get(e.ok) != simdjson::SUCCESS)
          fail(key, "expected true or false");
        saw_ok = true;
      } else if (key == "quality") {
        e.quality = number(key, field.value);
      } else if (key == "input_tokens") {
        e.input_tokens = whole(key, field.value);
      } else if (key == "output_tokens") {
        e.output_tokens = whole(key, field.value);
      } else if (key == "output_chars") {
        e.output_chars = whole(key, field.value);
      } else if (key == "latency_ms") {
        e.latency_ms = number(key, field.value);
      } else if (key == "attempts") {
        e.attempts = static_cast<int>(whole(key, field.value));
      } else if (key == "failure") {
        e.failure = text(key, field.value);
      } else if (key == "message") {
        e.message = text(key, field.value);
      } else if (key == "answer") {
        e.answer = text(key, field.value);
      }
    }
    if (!saw_id) fail("id", "missing");
    if (!saw_expert) fail("expert", "missing");
    if (!saw_hash) fail("prompt_hash", "missing");
    if (!saw_ok) fail("ok", "missing");
    if (e.ok && !(e.quality >= 0.0 && e.quality <= 1.0)) {
      fail("quality", fmt::format("must be in [0, 1], got {}", e.quality));
    }
    return e;
  }

 private:
  [[noreturn]] void fail(std::string_view field, std::string_view problem) const {
    throw Error(fmt::format("{}:{}: {}: {}", origin_, line_no_, field, problem));
  }
  std::string text(std::string_view key, element value) const {
    std::string_view out;
    if (value.get_string().get(out) != simdjson::SUCCESS) {
      fail(key, fmt::format("expected a string, got {}", detail::json_type_name(value)));
    }
    return std::string(out);
  }
  double number(std::string_view key, element value) const {
    double out = 0;
    if (value.get_double().get(out) != simdjson::SUCCESS) {
      fail(key, fmt::format("expected a number, got {}", detail::json_type_name(value)));
    }
    return out;
  }
  std::size_t whole(std::string_view key, element value) const {
    std::uint64_t out = 0;
    if (value.get_uint64().get(out) != simdjson::SUCCESS) {
      fail(key, fmt::format("expected a whole number >= 0, got {}", simdjson::to_string(value)));
    }
    return static_cast<std::size_t>(out);
  }

  const std::string& origin_;
  std::size_t line_no_;
};

std::string pair_key(std::string_view id, std::string_view expert) {
  std::string key(id);
  key.push_back('\0');  // ids and names are JSON strings, so '\0' separates them unambiguously
  key.append(expert);
  return key;
}

// Reads the journal (latest entry per pair wins, so a retried failure
// supersedes its earlier record), drops a torn last line, and leaves the file
// ready to append to.
std::unordered_map<std::string, JournalEntry> read_journal(const std::filesystem::path& path) {
  std::unordered_map<std::string, JournalEntry> entries;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return entries;
  const std::string origin = path.string();
  const std::string text = read_file(origin);
  const std::size_t last_newline = text.rfind('\n');
  const std::size_t complete = last_newline == std::string::npos ? 0 : last_newline + 1;
  if (complete < text.size()) {
    // The process died mid-write: that pair's answer never reached the
    // journal whole, so it counts as not done.
    std::filesystem::resize_file(path, complete, ec);
    if (ec)
      throw Error(fmt::format("{}: cannot truncate a torn last line: {}", origin, ec.message()));
  }
  simdjson::dom::parser parser;
  bool saw_header = false;
  for_each_line(std::string_view(text).substr(0, complete), origin,
                [&](std::string_view line, std::size_t line_no) {
                  const auto object = parse_object(parser, line, origin, line_no);
                  if (!saw_header) {
                    std::uint64_t version = 0;
                    if (object[kJournalHeaderKey].get_uint64().get(version) != simdjson::SUCCESS) {
                      throw Error(
                          fmt::format("{}:{}: not a torouter collect journal (expected "
                                      "{{\"{}\": {}}} first)",
                                      origin, line_no, kJournalHeaderKey, kJournalVersion));
                    }
                    if (version > kJournalVersion) {
                      throw Error(
                          fmt::format("{}:{}: journal version {} is newer than this "
                                      "torouter reads ({}); upgrade torouter or use a "
                                      "fresh output folder",
                                      origin, line_no, version, kJournalVersion));
                    }
                    saw_header = true;
                    return;
                  }
                  JournalEntry e = JournalReader(origin, line_no).read(object);
                  std::string key = pair_key(e.id, e.expert);
                  entries[std::move(key)] = std::move(e);
                });
  return entries;
}

// Appends lines and flushes each, from any worker thread.
class JournalWriter {
 public:
  explicit JournalWriter(const std::filesystem::path& path) : path_(path.string()) {
    std::error_code ec;
    const bool fresh =
        !std::filesystem::exists(path, ec) || std::filesystem::file_size(path, ec) == 0;
    file_ = std::fopen(path_.c_str(), "ab");
    if (file_ == nullptr)
      throw Error(fmt::format("{}: cannot open for appending", path_), ErrorCode::FileAccess);
    if (fresh) append(fmt::format("{{\"{}\":{}}}\n", kJournalHeaderKey, kJournalVersion));
  }
  ~JournalWriter() {
    if (file_ != nullptr) std::fclose(file_);
  }
  JournalWriter(const JournalWriter&) = delete;
  JournalWriter& operator=(const JournalWriter&) = delete;

  void append(const std::string& line) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
      throw Error(fmt::format("{}: cannot write the journal", path_));
    }
  }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  std::mutex mutex_;
};

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
    auto fail = [&](std::string_view field, const std::string& problem) {
      throw Error(fmt::format("{}:{}: {}: {}", origin, line_no, field, problem));
    };
    auto text = [&](std::string_view field, element value) {
      std::string_view out;
      if (value.get_string().get(out) != simdjson::SUCCESS) {
        fail(field, fmt::format("expected a string, got {}", detail::json_type_name(value)));
      }
      return std::string(out);
    };
    CollectPrompt p;
    bool saw_id = false, saw_prompt = false, saw_reference = false;
    for (auto field : object) {
      const std::string_view key = field.key;
      if (key == "id") {
        std::uint64_t number = 0;
        if (field.value.get_uint64().get(number) == simdjson::SUCCESS) {
          p.id = std::to_string(number);
        } else {
          p.id = text(key, field.value);
        }
        saw_id = true;
      } else if (key == "prompt") {
        p.prompt = text(key, field.value);
        saw_prompt = true;
      } else if (key == "reference") {
        p.reference = text(key, field.value);
        saw_reference = true;
      } else if (key == "task") {
        p.task = text(key, field.value);
      }
    }
    if (!saw_prompt) fail("prompt", "missing");
    if (require_reference && !saw_reference) {
      fail("reference", "missing (the built-in metrics compare answers with it)");
    }
    if (!saw_id) p.id = fmt::format("line-{}", line_no);
    if (p.id.empty()) fail("id", "must not be empty");
    auto [it, inserted] = line_of_id.emplace(p.id, line_no);
    if (!inserted) fail("id", fmt::format("\"{}\" already used on line {}", p.id, it->second));
    prompts.push_back(std::move(p));
  });
  return prompts;
}

std::vector<CollectPrompt> load_prompts(const std::string& path, bool require_reference) {
  return parse_prompts(read_file(path), path, require_reference);
}

Metric parse_metric(std::string_view name) {
  for (Metric m : {Metric::ExactMatch, Metric::TokenF1, Metric::RougeL}) {
    if (name == to_string(m)) return m;
  }
  throw Error(fmt::format("unknown metric \"{}\" (known: exact, f1, rougeL)", name));
}

std::string normalize_answer(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool pending_space = false;
  for (char c : text) {
    if (is_space(c)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(ascii_lower(c));
  }
  return out;
}

double exact_match_score(std::string_view answer, std::string_view reference) {
  return normalize_answer(answer) == normalize_answer(reference) ? 1.0 : 0.0;
}

double token_f1_score(std::string_view answer, std::string_view reference) {
  std::vector<std::string> a = squad_tokens(answer);
  std::vector<std::string> r = squad_tokens(reference);
  // Shared tokens as multisets: merge the two sorted lists.
  std::sort(a.begin(), a.end());
  std::sort(r.begin(), r.end());
  std::size_t common = 0;
  for (std::size_t i = 0, j = 0; i < a.size() && j < r.size();) {
    if (a[i] == r[j]) {
      ++common;
      ++i;
      ++j;
    } else if (a[i] < r[j]) {
      ++i;
    } else {
      ++j;
    }
  }
  return f_measure(common, a.size(), r.size());
}

double rouge_l_score(std::string_view answer, std::string_view reference) {
  const std::vector<std::string> a = rouge_tokens(answer);
  const std::vector<std::string> r = rouge_tokens(reference);
  // LCS length by dynamic programming, two rows of the table at a time.
  std::vector<std::size_t> previous(r.size() + 1, 0), current(r.size() + 1, 0);
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= r.size(); ++j) {
      current[j] =
          a[i - 1] == r[j - 1] ? previous[j - 1] + 1 : std::max(previous[j], current[j - 1]);
    }
    std::swap(previous, current);
  }
  return f_measure(previous[r.size()], a.size(), r.size());
}

AnswerScorer make_metric_scorer(Metric metric) {
  switch (metric) {
    case Metric::ExactMatch:
      return [](const CollectPrompt& p, std::string_view a) {
        return exact_match_score(a, p.reference);
      };
    case Metric::TokenF1:
      return
          [](const CollectPrompt& p, std::string_view a) { return token_f1_score(a, p.reference); };
    case Metric::RougeL:
      return
          [](const CollectPrompt& p, std::string_view a) { return rouge_l_score(a, p.reference); };
  }
  throw Error("make_metric_scorer: unknown metric");
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
      hashes.push_back(prompt_hash(prompts[i].prompt));
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
      auto pause = std::chrono::milliseconds(static_cast<std::int64_t>(
          std::min(backoff_ms, static_cast<double>(options.max_backoff.count()))));
      if (response.failure == FailureKind::RateLimited) {
        pause = std::max(pause, std::min(response.retry_after, options.max_retry_after));
      }
      // The slot stays held while waiting: a struggling expert should not get
      // more calls in flight, only fewer.
      std::this_thread::sleep_for(pause);
      backoff_ms *= options.backoff_multiplier;
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
