// open_files.hpp: how many client connections the process's limit on open
// files lets the server hold.
//
// Each client connection is a descriptor, and while its request is called
// upstream, a second one. Past the limit `accept` fails: a new client then
// waits unanswered in the listen queue, and upstream connects fail as if
// the expert were down. So the server raises its soft limit to the hard
// one at start (as Go's runtime and nginx's worker_rlimit_nofile do), and
// keeps `listen.max_connections` within what the limit holds, so that the
// cap's 503 with Retry-After comes before the descriptors run out.
#pragma once

#include <cstddef>

namespace torouter::server {

/// Descriptors each I/O thread opens (its epoll, eventfd and timerfd), which
/// Asio opens with the thread's first socket or timer.
inline constexpr std::size_t kDescriptorsPerIoThread = 3;

/// Descriptors taken to be open at start where /proc/self/fd cannot be read.
inline constexpr std::size_t kDescriptorsWhenUncounted = 64;

/// Descriptors kept spare for what opens later and is not a connection:
/// a model file being read, a Redis reconnect, a log reopened.
inline constexpr std::size_t kSpareDescriptors = 16;

/// Raises the soft limit on open files to the hard limit, where it is
/// lower; returns the soft limit in force after (0 when it cannot be read).
/// A hard limit of RLIM_INFINITY is not asked for as the soft one: macOS
/// refuses it (the soft limit must stay within OPEN_MAX), and Linux caps
/// the hard limit at fs.nr_open, so never has one.
std::size_t raise_open_file_limit();

/// The soft limit on open files in force (0 when it cannot be read).
std::size_t open_file_limit();

/// Descriptors the process holds now (0 where /proc/self/fd cannot be
/// read).
std::size_t open_descriptors();

/// The most client connections `open_files` descriptors hold, each with
/// its upstream connection, once `reserved` are kept for the rest; 0 for
/// `open_files` 0 (no limit known), and at least 1 otherwise.
std::size_t connections_within(std::size_t open_files, std::size_t reserved);

}  // namespace torouter::server
