// Internal: the journal of `torouter collect`, the source of truth of a
// collection: one JSON line per finished (prompt, expert) pair, appended
// and flushed before the worker's next pair, after a header line
// {"torouter_collect_journal": 1}.
#pragma once

#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

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

/// The entry as one journal line, '\n' included.
std::string journal_line(const JournalEntry& e);

/// The key of a (prompt id, expert) pair in `read_journal`'s map.
std::string pair_key(std::string_view id, std::string_view expert);

/// Reads the journal (latest entry per pair wins, so a retried failure
/// supersedes its earlier record), drops a torn last line, and leaves the
/// file ready to append to. A missing file is an empty journal.
std::unordered_map<std::string, JournalEntry> read_journal(const std::filesystem::path& path);

/// Appends lines and flushes each, from any worker thread; writes the
/// header line to a new journal.
class JournalWriter {
 public:
  explicit JournalWriter(const std::filesystem::path& path);
  ~JournalWriter();
  JournalWriter(const JournalWriter&) = delete;
  JournalWriter& operator=(const JournalWriter&) = delete;

  void append(const std::string& line);

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  std::mutex mutex_;
};

}  // namespace detail
TOROUTER_END_NAMESPACE
