// Where tests find the shared routing datasets: $TOROUTER_DATA, else
// ../shared/data beside the source tree. Tests that need them call
// `shared_data_dir()` and skip with a message when it returns nullopt.
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
