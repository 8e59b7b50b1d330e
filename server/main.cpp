// torouter-server: an OpenAI-compatible routing endpoint.
//
//   torouter-server --config server.json [--port N]
//
// Stops cleanly on SIGINT or SIGTERM; on SIGHUP loads its router model file
// again and swaps it in (a bad file is refused and the current model keeps
// serving; either way one line on standard error says so). A broken
// configuration ends with exit status 1 and one line naming the file and
// the field.
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include "memory_trim.hpp"
#include "open_files.hpp"
#include "router_server.hpp"
#include "torouter/cpu_level.hpp"
#include "torouter/error.hpp"

namespace {

int usage() {
  std::cerr << "usage: torouter-server --config FILE [--port N]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  int port = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (arg == "--port" && i + 1 < argc) {
      char* end = nullptr;
      const long value = std::strtol(argv[++i], &end, 10);
      if (*end != '\0' || value < 0 || value > 65535) return usage();
      port = static_cast<int>(value);
    } else {
      return usage();
    }
  }
  if (config_path.empty()) return usage();

  // The signals are taken by one thread with sigwait, so stopping happens
  // outside a signal handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  try {
    torouter::server::raise_open_file_limit();
    torouter::server::ServerConfig config = torouter::server::load_server_config(config_path);
    if (port >= 0) config.port = port;
    torouter::server::RouterServer server(config);
    // What bursts freed goes back to the system while no request is in
    // flight (server/memory_trim.hpp): looked at every 10 s, once resident
    // memory has grown 32 MiB since the last trim.
    torouter::server::MemoryTrimmer trimmer(std::chrono::seconds(10), std::size_t{32} << 20,
                                            [&server] { return server.requests_in_flight() == 0; });
    const int bound = server.bind();
    const char* scheme = config.tls_cert_file.empty() ? "http" : "https";
    std::cout << "torouter-server: listening on " << scheme << "://" << config.host << ":" << bound
              << " (" << config.experts.size() << " experts"
              << (config.api_keys.empty() ? "" : ", API keys required") << ", kernels "
              << torouter::kernel_level() << ")" << std::endl;
    std::thread stopper([&server, &signals] {
      int signal = 0;
      while (sigwait(&signals, &signal) == 0 && signal == SIGHUP) {
        if (server.reload().busy) std::cerr << "torouter-server: SIGHUP: a reload is in progress\n";
      }
      server.stop();
    });
    server.run();
    // run() also returns when the listener fails; wake the stopper then.
    pthread_kill(stopper.native_handle(), SIGTERM);
    stopper.join();
    return 0;
  } catch (const torouter::Error& e) {
    std::cerr << "torouter-server: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "torouter-server: " << e.what() << "\n";
    return 1;
  }
}
