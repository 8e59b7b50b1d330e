// stream_burst: the client side of benchmarks/server_concurrency.py's burst.
// Opens --count connections to 127.0.0.1:--port, all at once or spread
// evenly over --ramp seconds, sends each the
// request read from --request (bytes as they are, `Connection: close`),
// reads each answer to the end and prints one JSON object: how many were
// answered (status 200 and, with --expect, that text in the answer), the
// seconds each answered call took from its connect to its last byte, and
// (in the same order) to its first byte: the time to first byte tells a
// slow start (accept, routing, the upstream's connect) from a slow relay.
//
// Why not Python's asyncio: 2,000 streams of 20 pieces cost it about 3 s of
// CPU on the 2 cores it shares with the server and the stand-in, so the
// client's own load became part of the "added latency" measured. This
// client runs on one thread and one Asio io_context, so its share is small.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  unsigned short port = 0;
  int count = 0;
  std::string request;
  std::string expect;
  double timeout_seconds = 120;
  double ramp_seconds = 0;  // 0: every call opens at once
};

struct Outcome {
  bool answered = false;
  double seconds = 0;
  double first_byte_seconds = 0;
};

// One call: connect, write the request, read until the server closes.
class Call : public std::enable_shared_from_this<Call> {
 public:
  Call(asio::io_context& io, const Options& options, Outcome& outcome,
       const std::function<void()>& on_end)
      : socket_(io), options_(options), outcome_(outcome), on_end_(on_end) {}
  // However the call ended (answered, refused, cut), it is over.
  ~Call() { on_end_(); }

  void start(const tcp::endpoint& server) {
    started_ = Clock::now();
    auto self = shared_from_this();
    socket_.async_connect(server, [self](boost::system::error_code ec) {
      if (ec) return;
      asio::async_write(self->socket_, asio::buffer(self->options_.request),
                        [self](boost::system::error_code ec, std::size_t) {
                          if (!ec) self->read();
                        });
    });
  }

 private:
  void read() {
    auto self = shared_from_this();
    socket_.async_read_some(asio::buffer(piece_),
                            [self](boost::system::error_code ec, std::size_t n) {
                              if (self->answer_.empty() && n > 0) self->first_byte_ = Clock::now();
                              self->answer_.append(self->piece_, n);
                              if (!ec) return self->read();
                              if (ec == asio::error::eof) self->finish();
                            });
  }

  void finish() {
    const std::string_view answer = answer_;
    const bool ok = answer.substr(0, 12) == "HTTP/1.1 200" &&
                    (options_.expect.empty() || answer.find(options_.expect) != answer.npos);
    outcome_.answered = ok;
    outcome_.seconds = std::chrono::duration<double>(Clock::now() - started_).count();
    outcome_.first_byte_seconds = std::chrono::duration<double>(first_byte_ - started_).count();
  }

  tcp::socket socket_;
  const Options& options_;
  Outcome& outcome_;
  const std::function<void()>& on_end_;
  Clock::time_point started_;
  Clock::time_point first_byte_;
  std::string answer_;
  char piece_[16 * 1024];
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "stream_burst: %s\nusage: stream_burst --port P --count N --request FILE "
               "[--expect TEXT] [--timeout SECONDS] [--ramp SECONDS]\n",
               why);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (i + 1 >= argc) usage("a flag lacks its value");
    const char* value = argv[++i];
    if (flag == "--port") {
      options.port = static_cast<unsigned short>(std::atoi(value));
    } else if (flag == "--count") {
      options.count = std::atoi(value);
    } else if (flag == "--request") {
      std::ifstream file(value, std::ios::binary);
      if (!file) usage("cannot read the --request file");
      options.request.assign(std::istreambuf_iterator<char>(file), {});
    } else if (flag == "--expect") {
      options.expect = value;
    } else if (flag == "--timeout") {
      options.timeout_seconds = std::atof(value);
    } else if (flag == "--ramp") {
      options.ramp_seconds = std::atof(value);
    } else {
      usage("unknown flag");
    }
  }
  if (options.port == 0 || options.count <= 0 || options.request.empty()) {
    usage("--port, --count and --request are required");
  }
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  // Declared before the io_context: calls it still holds when the deadline
  // stops it end (and call `on_end`) when it is destroyed.
  std::vector<Outcome> outcomes(static_cast<std::size_t>(options.count));
  std::size_t open_calls = outcomes.size();
  asio::steady_timer* deadline_pending = nullptr;
  const std::function<void()> on_end = [&open_calls, &deadline_pending] {
    if (--open_calls == 0 && deadline_pending) deadline_pending->cancel();
  };
  asio::io_context io(1);
  // A call still open at the deadline counts as unanswered.
  asio::steady_timer deadline(io, std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(options.timeout_seconds)));
  deadline.async_wait([&io](boost::system::error_code ec) {
    if (!ec) io.stop();
  });
  deadline_pending = &deadline;
  const tcp::endpoint server(asio::ip::make_address("127.0.0.1"), options.port);
  // Call i opens i * ramp / count seconds after the first (at once without
  // --ramp); a 1 ms tick opens those that are due.
  const auto first = Clock::now();
  std::size_t opened = 0;
  asio::steady_timer tick(io);
  std::function<void()> open_due = [&] {
    const double elapsed = std::chrono::duration<double>(Clock::now() - first).count();
    while (opened < outcomes.size() &&
           (options.ramp_seconds <= 0 ||
            static_cast<double>(opened) * options.ramp_seconds / options.count <= elapsed)) {
      std::make_shared<Call>(io, options, outcomes[opened++], on_end)->start(server);
    }
    if (opened == outcomes.size()) return;
    tick.expires_after(std::chrono::milliseconds(1));
    tick.async_wait([&open_due](boost::system::error_code ec) {
      if (!ec) open_due();
    });
  };
  open_due();
  io.run();
  deadline_pending = nullptr;
  int answered = 0;
  std::string seconds, first_byte;
  for (const auto& outcome : outcomes) {
    if (!outcome.answered) continue;
    const char* separator = answered++ > 0 ? ", " : "";
    seconds += separator + std::to_string(outcome.seconds);
    first_byte += separator + std::to_string(outcome.first_byte_seconds);
  }
  std::cout << "{\"seconds\": [" << seconds << "], \"first_byte_seconds\": [" << first_byte
            << "], \"answered\": " << answered << ", \"count\": " << options.count << "}\n";
}
