// A temp folder of the test process's own. ctest runs the test cases of one
// binary as parallel processes (scripts/test uses -j), so a fixed path under
// the temp folder would be written by several of them at once. The folder
// is removed when the process exits, so runs leave nothing behind.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <system_error>

namespace torouter::testing {

namespace detail {

/// The folders made by `process_temp_dir`, removed at exit.
class TempDirs {
 public:
  void add(const std::filesystem::path& dir) {
    const std::lock_guard<std::mutex> lock(mutex_);
    dirs_.insert(dir);
  }
  ~TempDirs() {
    for (const auto& dir : dirs_) {
      std::error_code ignored;  // a folder already gone is no failure
      std::filesystem::remove_all(dir, ignored);
    }
  }

 private:
  std::mutex mutex_;
  std::set<std::filesystem::path> dirs_;
};

inline TempDirs& temp_dirs() {
  static TempDirs dirs;
  return dirs;
}

}  // namespace detail

/// `<temp>/<name>_<pid>`, created if missing, removed when the process exits.
inline std::filesystem::path process_temp_dir(const std::string& name) {
  const auto dir =
      std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  detail::temp_dirs().add(dir);
  return dir;
}

}  // namespace torouter::testing
