// torouter collect: build a routing dataset by sending every prompt to every
// expert and scoring the answers (library: torouter/collect.hpp).
//
// The library opens no network connection, so the program reaches experts
// through a command: with --transport command:PROGRAM, each call runs
//   PROGRAM EXPERT_NAME  < prompt  > answer
// i.e. PROGRAM gets the expert's name as its only argument and the prompt on
// stdin, and writes the answer to stdout (one trailing newline is removed).
// A non-zero exit status is a server error (retried); what it wrote to stderr
// becomes the failure's message. A call running past --timeout-ms is killed
// and counts as a timeout. Any client script (curl, a Python SDK) fits.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>

#include "args.hpp"
#include "torouter/abi.hpp"
#include "torouter/collect.hpp"
#include "torouter/expert.hpp"

extern char** environ;

TOROUTER_BEGIN_NAMESPACE
namespace cli {
namespace {

using Clock = std::chrono::steady_clock;

// Set by the first Ctrl-C: workers start no new call and the journal keeps
// what is done; a second Ctrl-C ends the program at once (SA_RESETHAND).
std::atomic<bool> interrupted{false};

extern "C" void on_interrupt(int) { interrupted.store(true); }

class Pipe {
 public:
  Pipe() {
    // Close-on-exec, so a child spawned by another worker thread does not
    // inherit this call's pipe ends and keep them open past our child's exit.
    if (pipe2(fds_, O_CLOEXEC) != 0) throw Error(fmt::format("pipe: {}", std::strerror(errno)));
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  int read_end() const { return fds_[0]; }
  int write_end() const { return fds_[1]; }
  void close_read() { close_fd(fds_[0]); }
  void close_write() { close_fd(fds_[1]); }

 private:
  static void close_fd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  int fds_[2] = {-1, -1};
};

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

// Runs `program expert` with the prompt on stdin, the answer from stdout.
Response run_command(const std::string& program, const Request& request) {
  Pipe in, out, err;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in.read_end(), 0);
  posix_spawn_file_actions_adddup2(&actions, out.write_end(), 1);
  posix_spawn_file_actions_adddup2(&actions, err.write_end(), 2);
  std::string arg0 = program, arg1 = request.expert;
  char* argv[] = {arg0.data(), arg1.data(), nullptr};
  // A process group of its own: a Ctrl-C at the terminal then reaches only
  // us (which stop gracefully, letting calls in flight finish and be
  // journaled) and a timeout can kill the program's children too.
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attributes, 0);
  pid_t pid = 0;
  const int spawned = posix_spawnp(&pid, program.c_str(), &actions, &attributes, argv, environ);
  posix_spawnattr_destroy(&attributes);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) {
    return Response::failed(FailureKind::TransportError,
                            fmt::format("cannot run {}: {}", program, std::strerror(spawned)));
  }
  in.close_read();
  out.close_write();
  err.close_write();
  set_nonblocking(in.write_end());
  set_nonblocking(out.read_end());
  set_nonblocking(err.read_end());

  // Stdin is written while stdout is read: a child that answers before it
  // has read a long prompt would otherwise deadlock with us on full pipes.
  const auto deadline = Clock::now() + request.timeout;
  std::string answer, errors;
  std::size_t written = 0;
  if (request.prompt.empty()) in.close_write();
  bool out_open = true, err_open = true, timed_out = false;
  char buffer[65536];
  while (out_open || err_open) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd fds[3];
    nfds_t n = 0;
    const int in_fd = in.write_end();
    if (in_fd >= 0) fds[n++] = {in_fd, POLLOUT, 0};
    if (out_open) fds[n++] = {out.read_end(), POLLIN, 0};
    if (err_open) fds[n++] = {err.read_end(), POLLIN, 0};
    const int ready = ::poll(fds, n, static_cast<int>(std::min<long long>(left, 1000)));
    if (ready < 0 && errno != EINTR) break;
    if (ready <= 0) continue;
    for (nfds_t i = 0; i < n; ++i) {
      if (fds[i].revents == 0) continue;
      if (fds[i].fd == in_fd) {
        const ssize_t w =
            ::write(in_fd, request.prompt.data() + written, request.prompt.size() - written);
        if (w > 0) written += static_cast<std::size_t>(w);
        // EPIPE: the program does not read its input; that is its choice.
        if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == request.prompt.size()) {
          in.close_write();
        }
      } else {
        const bool is_out = fds[i].fd == out.read_end();
        const ssize_t r = ::read(fds[i].fd, buffer, sizeof buffer);
        if (r > 0) {
          (is_out ? answer : errors).append(buffer, static_cast<std::size_t>(r));
        } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
          (is_out ? out_open : err_open) = false;
        }
      }
    }
  }
  if (timed_out) ::kill(-pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    return Response::failed(
        FailureKind::Timeout,
        fmt::format("{} gave no answer within {} ms, killed", program, request.timeout.count()));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    while (!errors.empty() && (errors.back() == '\n' || errors.back() == '\r')) errors.pop_back();
    if (errors.size() > 500) errors = "..." + errors.substr(errors.size() - 500);
    const std::string how = WIFEXITED(status)
                                ? fmt::format("exited with status {}", WEXITSTATUS(status))
                                : fmt::format("was killed by signal {}", WTERMSIG(status));
    return Response::failed(
        FailureKind::ServerError,
        fmt::format("{} {}{}{}", program, how, errors.empty() ? "" : ": ", errors));
  }
  if (!answer.empty() && answer.back() == '\n') answer.pop_back();
  if (!answer.empty() && answer.back() == '\r') answer.pop_back();
  return Response::answer(std::move(answer));
}

}  // namespace

int collect(const Arguments& args) {
  args.allow_only({"prompts", "experts", "out", "metric", "threads", "transport", "test-fraction",
                   "seed", "output-file", "attempts", "timeout-ms", "max-concurrent"});
  const std::string prompts_path = args.required("prompts");
  const std::string experts_path = args.required("experts");
  const std::string out_dir = args.required("out");
  const std::string transport_spec = args.required("transport");
  const Metric metric = parse_metric(args.get("metric", "exact"));

  const std::string scheme = "command:";
  if (transport_spec.rfind(scheme, 0) != 0 || transport_spec.size() == scheme.size()) {
    throw Error(fmt::format("--transport: expected command:PROGRAM, got \"{}\"", transport_spec));
  }
  const std::string program = transport_spec.substr(scheme.size());
  if (program.find('/') != std::string::npos && ::access(program.c_str(), X_OK) != 0) {
    throw Error(fmt::format("--transport: {} is not an executable file", program));
  }

  CollectOptions options;
  options.threads = static_cast<std::size_t>(parse_whole(args.get("threads", "8"), "threads", 1));
  options.test_fraction = parse_number(args.get("test-fraction", "0"), "test-fraction");
  options.seed = static_cast<std::uint64_t>(parse_whole(args.get("seed", "0"), "seed", 0));
  options.output_file = args.get("output-file", options.output_file);
  options.max_attempts = static_cast<int>(parse_whole(args.get("attempts", "3"), "attempts", 1));
  options.attempt_timeout =
      std::chrono::milliseconds(parse_whole(args.get("timeout-ms", "60000"), "timeout-ms", 1));
  options.max_concurrent_per_expert =
      static_cast<std::size_t>(parse_whole(args.get("max-concurrent", "0"), "max-concurrent", 0));
  options.cancel = &interrupted;
  options.source = fmt::format("torouter collect --prompts {}", prompts_path);

  const auto prompts = load_prompts(prompts_path, /*require_reference=*/true);
  const ExpertRegistry registry = load_expert_registry(experts_path);
  std::map<std::string, Transport> transports;
  for (const ExpertSpec& spec : registry.experts()) {
    transports[spec.name] = Transport::sync(
        [program](const Request& request) { return run_command(program, request); });
  }

  std::size_t reported = 0;
  options.on_progress = [&reported](const CollectProgress& p) {
    // About twenty progress lines per run, whatever its size.
    const std::size_t step = std::max<std::size_t>(1, p.total / 20);
    if (p.done == p.total || p.done >= reported + step) {
      reported = p.done;
      std::fprintf(stderr, "collect: %zu/%zu calls done, %zu failed\n", p.done, p.total, p.failed);
    }
  };

  // A child that exits without reading its stdin must not kill us with SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  action.sa_flags = SA_RESETHAND;
  ::sigaction(SIGINT, &action, nullptr);

  const auto start = Clock::now();
  const CollectSummary s =
      collect_dataset(prompts, registry, transports, make_metric_scorer(metric), out_dir, options);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  std::printf(
      "%zu prompts x %zu experts: %zu calls made (%zu attempts), %zu skipped as already "
      "done, %zu failed, in %.1f s\n",
      s.prompts, s.experts, s.calls_made, s.attempts, s.skipped_done, s.failed, seconds);
  std::printf("cost: $%.6g this run, $%.6g for the whole dataset\n", s.cost_usd, s.total_cost_usd);
  for (const CollectFailure& f : s.failures) {
    std::fprintf(stderr, "failed%s: prompt \"%s\", expert \"%s\": %s after %d attempt(s): %s\n",
                 f.this_run ? "" : " (earlier run)", f.id.c_str(), f.expert.c_str(),
                 f.failure.c_str(), f.attempts, f.message.c_str());
  }
  if (s.cancelled) {
    std::printf(
        "interrupted: the journal in %s keeps what is done; run the same command again "
        "to resume\n",
        out_dir.c_str());
    return 130;
  }
  std::printf("wrote %s/%s (%zu rows)", out_dir.c_str(), options.output_file.c_str(), s.train_rows);
  if (options.test_fraction > 0)
    std::printf(", %s/test.jsonl (%zu rows)", out_dir.c_str(), s.test_rows);
  std::printf(", %s/experts.json\n", out_dir.c_str());
  if (!s.failures.empty()) {
    std::fprintf(stderr,
                 "warning: %zu (prompt, expert) pairs have no outcome; rows lack them. Failed "
                 "pairs are not called again by a rerun.\n",
                 s.failures.size());
  }
  return 0;
}

}  // namespace cli
TOROUTER_END_NAMESPACE
