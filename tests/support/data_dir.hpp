// Where tests find the shared routing datasets: $TOROUTER_DATA, else
// ../shared/data beside the source tree. A test that needs them starts with
// TOROUTER_SHARED_DATA_OR_SKIP(dir), which skips it with a message when the
// folder is absent.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

namespace torouter::testing {

/// The datasets folder, or nullopt (with the reason in `why_absent`).
inline std::optional<std::filesystem::path> shared_data_dir(std::string* why_absent = nullptr) {
  std::filesystem::path dir;
  if (const char* env = std::getenv("TOROUTER_DATA"); env != nullptr && *env != '\0') {
    dir = env;
  } else {
    dir = std::filesystem::path(TOROUTER_SOURCE_DIR) / ".." / "shared" / "data";
  }
  std::error_code ec;
  if (std::filesystem::is_directory(dir, ec)) return dir;
  if (why_absent) *why_absent = "no routing datasets at " + dir.string() + " (set TOROUTER_DATA)";
  return std::nullopt;
}

}  // namespace torouter::testing

/// Declares `dir` (a std::filesystem::path) as the datasets folder, or ends
/// the test case with a warning that says why it was skipped. Catch2 2 has
/// no skip, and the test programs run with `--warn NoAssertions` (a test that
/// checks nothing fails), so the skip is recorded as an explicit success.
#define TOROUTER_SHARED_DATA_OR_SKIP(dir)                                          \
  std::string dir##_absent_because;                                                \
  const auto dir##_found = torouter::testing::shared_data_dir(&dir##_absent_because); \
  if (!dir##_found) {                                                              \
    WARN("skipped: " << dir##_absent_because);                                     \
    SUCCEED("skipped: the shared datasets are absent");                            \
    return;                                                                        \
  }                                                                                \
  const std::filesystem::path dir = *dir##_found
