// See open_files.hpp.
#include "open_files.hpp"

#include <sys/resource.h>

namespace torouter::server {

std::size_t raise_open_file_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
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

std::size_t connections_within(std::size_t open_files) {
  if (open_files == 0) return 0;
  if (open_files <= 2 * kReservedDescriptors) return 1;  // too few to keep a reserve
  return (open_files - kReservedDescriptors) / 2;
}

}  // namespace torouter::server
