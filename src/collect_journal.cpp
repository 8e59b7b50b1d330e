// The journal of `torouter collect`; see collect_journal.hpp.
#include "collect_journal.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <utility>

#include "json_text.hpp"
#include "jsonl_lines.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {


constexpr std::string_view kJournalHeaderKey = "torouter_collect_journal";
constexpr std::uint64_t kJournalVersion = 1;

// Reads one journal line; errors name the journal, the line and the field.
JournalEntry read_entry(simdjson::dom::object object, const LineFields& line) {
  JournalEntry e;
  bool saw_id = false, saw_expert = false, saw_hash = false, saw_ok = false;
  for (auto field : object) {
    const std::string_view key = field.key;
    if (key == "id") {
      e.id = line.text(key, field.value);
      saw_id = true;
    } else if (key == "expert") {
      e.expert = line.text(key, field.value);
      saw_expert = true;
    } else if (key == "prompt_hash") {
      e.hash = line.text(key, field.value);
      saw_hash = true;
    } else if (key == "ok") {
      if (field.value.get_bool().get(e.ok) != simdjson::SUCCESS)
        line.fail(key, "expected true or false");
      saw_ok = true;
    } else if (key == "quality") {
      e.quality = line.number(key, field.value);
    } else if (key == "input_tokens") {
      e.input_tokens = line.whole(key, field.value);
    } else if (key == "output_tokens") {
      e.output_tokens = line.whole(key, field.value);
    } else if (key == "output_chars") {
      e.output_chars = line.whole(key, field.value);
    } else if (key == "latency_ms") {
      e.latency_ms = line.number(key, field.value);
    } else if (key == "attempts") {
      e.attempts = static_cast<int>(line.whole(key, field.value));
    } else if (key == "failure") {
      e.failure = line.text(key, field.value);
    } else if (key == "message") {
      e.message = line.text(key, field.value);
    } else if (key == "answer") {
      e.answer = line.text(key, field.value);
    }
  }
  if (!saw_id) line.fail("id", "missing");
  if (!saw_expert) line.fail("expert", "missing");
  if (!saw_hash) line.fail("prompt_hash", "missing");
  if (!saw_ok) line.fail("ok", "missing");
  if (e.ok && !(e.quality >= 0.0 && e.quality <= 1.0)) {
    line.fail("quality", fmt::format("must be in [0, 1], got {}", e.quality));
  }
  return e;
}

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
                  JournalEntry e = read_entry(object, LineFields{origin, line_no});
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
