// The journal of `torouter collect`; see collect_journal.hpp.
#include "collect_journal.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <utility>

#include "json_text.hpp"
#include "json_type_name.hpp"
#include "jsonl_lines.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

constexpr std::string_view kJournalHeaderKey = "torouter_collect_journal";
constexpr std::uint64_t kJournalVersion = 1;

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

}  // namespace

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

std::string pair_key(std::string_view id, std::string_view expert) {
  std::string key(id);
  key.push_back('\0');  // ids and names are JSON strings, so '\0' separates them unambiguously
  key.append(expert);
  return key;
}

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

JournalWriter::JournalWriter(const std::filesystem::path& path) : path_(path.string()) {
  std::error_code ec;
  const bool fresh =
      !std::filesystem::exists(path, ec) || std::filesystem::file_size(path, ec) == 0;
  file_ = std::fopen(path_.c_str(), "ab");
  if (file_ == nullptr)
    throw Error(fmt::format("{}: cannot open for appending", path_), ErrorCode::FileAccess);
  if (fresh) append(fmt::format("{{\"{}\":{}}}\n", kJournalHeaderKey, kJournalVersion));
}

JournalWriter::~JournalWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void JournalWriter::append(const std::string& line) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    throw Error(fmt::format("{}: cannot write the journal", path_));
  }
}

}  // namespace detail
TOROUTER_END_NAMESPACE
