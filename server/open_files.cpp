// See open_files.hpp.
#include "open_files.hpp"

#include <sys/resource.h>

#include <filesystem>
#include <system_error>

namespace torouter::server {

std::size_t raise_open_file_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max && limit.rlim_max != RLIM_INFINITY) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return open_file_limit();
}

std::size_t open_file_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  return limit.rlim_cur == RLIM_INFINITY ? static_cast<std::size_t>(-1)
                                         : static_cast<std::size_t>(limit.rlim_cur);
}

std::size_t open_descriptors() {
  std::error_code error;
  std::filesystem::directory_iterator entries("/proc/self/fd", error);
  if (error) return 0;
  std::size_t count = 0;
  for (const auto& entry : entries) {
    (void)entry;
    ++count;
  }
  // The iterator's own descriptor on the folder is one of them.
  return count > 0 ? count - 1 : 0;
}

std::size_t connections_within(std::size_t open_files, std::size_t reserved) {
  if (open_files == 0) return 0;
  if (open_files <= reserved + 2) return 1;  // too few to keep the reserve
  return (open_files - reserved) / 2;
}

}  // namespace torouter::server
