// httplib::Server with a deeper accept queue. httplib listens with a backlog
// of 5 (CPPHTTPLIB_LISTEN_BACKLOG, fixed when Debian built the library), so
// a burst of new connections loses SYNs and waits seconds for the kernel to
// resend them; Linux lets a listening socket call listen() again with a new
// backlog.
#pragma once

#include <sys/socket.h>

#include <httplib.h>

namespace torouter::server {

class Listener : public httplib::Server {
 public:
  /// Call after binding.
  void deepen_backlog() { ::listen(svr_sock_, SOMAXCONN); }
};

}  // namespace torouter::server
