// A temp folder of the test process's own. ctest runs the test cases of one
// binary as parallel processes (scripts/test uses -j), so a fixed path under
// the temp folder would be written by several of them at once.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

namespace torouter::testing {

/// `<temp>/<name>_<pid>`, created if missing.
inline std::filesystem::path process_temp_dir(const std::string& name) {
  const auto dir =
      std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace torouter::testing
