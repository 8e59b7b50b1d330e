// A real redis-server for tests, on a free loopback port, without
// persistence; it can be killed, paused and started again on the same port
// (with its data gone, as after a crash). scripts/setup installs
// redis-server.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;

namespace torouter::testing {

class RedisServer {
 public:
  RedisServer() : port_(free_port()) { start(); }
  ~RedisServer() { stop(); }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_) + "/0"; }

  /// Starts it and waits until it accepts connections; throws when it cannot.
  void start() {
    const std::string port = std::to_string(port_);
    std::vector<std::string> args{"redis-server", "--port",     port,     "--bind",
                                  "127.0.0.1",    "--save",     "",       "--appendonly",
                                  "no",           "--loglevel", "warning"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // Its start-up banner and warnings would bury the test's own output.
    posix_spawn_file_actions_t quiet;
    posix_spawn_file_actions_init(&quiet);
    posix_spawn_file_actions_addopen(&quiet, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&quiet, 2, "/dev/null", O_WRONLY, 0);
    const int spawned = posix_spawnp(&pid_, "redis-server", &quiet, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&quiet);
    if (spawned != 0) {
      pid_ = -1;
      throw std::runtime_error("cannot run redis-server: scripts/setup installs it");
    }
    for (int i = 0; i < 500; ++i) {
      if (accepts()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    throw std::runtime_error("redis-server did not listen on port " + port);
  }

  /// Kills it (a crash: its data is gone).
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  /// Runs a command through redis-cli and returns its output, trimmed.
  std::string cli(const std::string& command) const {
    const std::string line = "redis-cli -p " + std::to_string(port_) + " " + command + " 2>&1";
    std::string out;
    if (FILE* pipe = ::popen(line.c_str(), "r")) {
      char buffer[256];
      while (std::fgets(buffer, sizeof buffer, pipe)) out += buffer;
      ::pclose(pipe);
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
  }

  /// Pauses or resumes it: a Redis that stops answering without closing.
  void pause() { ::kill(pid_, SIGSTOP); }
  void resume() { ::kill(pid_, SIGCONT); }

 private:
  // A free port below the kernel's ephemeral range. Redis is killed and
  // started again on its port; a port from that range could meanwhile be
  // handed to another test's listener (bind to port 0) or outgoing
  // connection, and then Redis could not listen there again, or the
  // replicas would talk to that other server. Below the range only an
  // explicit bind takes a port, as this one does, picked at random.
  static int free_port() {
    const auto [lowest, highest] = non_ephemeral_ports();
    std::random_device seed;
    std::mt19937 rng(seed());
    std::uniform_int_distribution<int> pick(lowest, highest);
    for (int attempt = 0; attempt < 200; ++attempt) {
      const int port = pick(rng);
      if (can_bind(port)) return port;
    }
    throw std::runtime_error("no free port below the ephemeral range for redis-server");
  }

  // [low - 10000, low - 1] of ip_local_port_range's low end (32768 unless
  // the machine says otherwise), and never below 1024.
  static std::pair<int, int> non_ephemeral_ports() {
    int low = 32768;
    if (FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
      int high = 0;
      if (std::fscanf(f, "%d %d", &low, &high) != 2) low = 32768;
      std::fclose(f);
    }
    return {std::max(1024, low - 10000), std::max(1025, low - 1)};
  }

  static bool can_bind(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    const int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);  // as redis-server binds
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    return ok;
  }

  bool accepts() const {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port_));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    return ok;
  }

  int port_;
  pid_t pid_ = -1;
};

}  // namespace torouter::testing
