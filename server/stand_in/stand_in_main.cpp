// torouter-stand-in: a stand-in OpenAI-compatible upstream on 127.0.0.1 for
// the README demo and the load benchmark. It answers every model with
// "<model> answers: <last user message>", at once or after --delay-ms; a
// streamed answer in --chunks pieces, --chunk-gap-ms apart.
//
//   torouter-stand-in --port 9000 [--threads 1] [--delay-ms 0]   (port 0: a free one)
//
// --threads is its I/O threads: waits are timers, so one serves thousands of
// slow answers at once.
//                     [--chunks 3] [--chunk-gap-ms 0]
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include "stand_in_upstream.hpp"

namespace {

int usage() {
  std::cerr << "usage: torouter-stand-in --port N [--threads N] [--delay-ms N] [--chunks N] "
               "[--chunk-gap-ms N]\n";
  return 2;
}

bool read_number(const char* text, long minimum, long maximum, long& out) {
  char* end = nullptr;
  out = std::strtol(text, &end, 10);
  return *end == '\0' && out >= minimum && out <= maximum;
}

}  // namespace

int main(int argc, char** argv) {
  long port = -1;
  long threads = 1;
  long delay_ms = 0;
  long chunks = 3;
  long chunk_gap_ms = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    bool ok = false;
    if (arg == "--port")
      ok = read_number(argv[i + 1], 0, 65535, port);
    else if (arg == "--threads")
      ok = read_number(argv[i + 1], 1, 256, threads);
    else if (arg == "--delay-ms")
      ok = read_number(argv[i + 1], 0, 600000, delay_ms);
    else if (arg == "--chunks")
      ok = read_number(argv[i + 1], 1, 100000, chunks);
    else if (arg == "--chunk-gap-ms")
      ok = read_number(argv[i + 1], 0, 600000, chunk_gap_ms);
    if (!ok) return usage();
  }
  if (argc % 2 == 0 || port < 0) return usage();

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  torouter::server::StandInUpstream upstream("stand-in", static_cast<std::size_t>(threads));
  torouter::server::StandInBehaviour behaviour;
  behaviour.delay = std::chrono::milliseconds(delay_ms);
  behaviour.chunks = static_cast<int>(chunks);
  behaviour.chunk_gap = std::chrono::milliseconds(chunk_gap_ms);
  upstream.set_behaviour(behaviour);
  if (upstream.start(static_cast<int>(port)) < 0) {
    std::cerr << "torouter-stand-in: cannot listen on 127.0.0.1:" << port << "\n";
    return 1;
  }
  std::cout << "torouter-stand-in: listening on " << upstream.base_url() << std::endl;
  int signal = 0;
  sigwait(&signals, &signal);
  upstream.stop();
  return 0;
}
