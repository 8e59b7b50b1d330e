// A fleet: four torouter-server processes sharing one real redis-server,
// in front of stand-in upstreams that count the calls they serve at once,
// with 32 clients spread over the replicas. The budget, a cap and a request
// rate hold for the fleet; a cooldown reaches every replica; Redis killed
// and restarted, failing open and closed; a replica killed with calls in
// flight gives its slots back after their expiry.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "stand_in_upstream.hpp"
#include "support/default_router_files.hpp"
#include "support/raw_http.hpp"
#include "support/redis_server.hpp"
#include "support/temp_dir.hpp"

using Catch::Matchers::Contains;
using torouter::server::StandInBehaviour;
using torouter::server::StandInUpstream;
using namespace std::chrono_literals;

namespace {

const std::string& kModel = torouter::testing::kDefaultRouterModel;
const std::string& kExpertsFile = torouter::testing::kDefaultRouterExperts;
// capped: 3 calls at once in the fleet; rated: 10 requests a minute; paid:
// $20,000 per million prompt tokens (answers free), so a call costs about
// what its prompt predicts; flaky: fails; steady: answers in 100 ms.
const std::string kCapped = "gemma-2-9b-it";
const std::string kRated = "qwen2.5-7b-instruct";
const std::string kPaid = "llama-3.3-nemotron-super-49b-v1";
const std::string kFlaky = "mistral-7b-instruct-v0.3";
const std::string kSteady = "llama-3.1-8b-instruct";

std::string chat(const std::string& model, const std::string& prompt) {
  return R"({"model":")" + model + R"(","messages":[{"role":"user","content":")" + prompt +
         R"("}]})";
}

// One torouter-server process.
struct Replica {
  pid_t pid = -1;
  int port = -1;

  void kill(int signal) {
    if (pid <= 0) return;
    ::kill(pid, signal);
    ::waitpid(pid, nullptr, 0);
    pid = -1;
  }
};

// The stand-ins, Redis, and four replicas over them.
struct Fleet {
  // `expiry_ms`: the calls' expiry in Redis (the invokes' timeout stays below it).
  explicit Fleet(const std::string& on_failure = "open", int expiry_ms = 600000)
      : dir(fresh_dir()) {
    for (const auto& name : {kCapped, kRated, kPaid, kFlaky, kSteady}) {
      upstreams[name] = std::make_unique<StandInUpstream>(name);
      REQUIRE(upstreams[name]->start() > 0);
    }
    StandInBehaviour slow;
    slow.delay = 150ms;
    upstreams[kCapped]->set_behaviour(slow);
    slow.delay = 100ms;
    upstreams[kSteady]->set_behaviour(slow);
    StandInBehaviour failing;
    failing.kind = StandInBehaviour::Kind::Status;
    failing.status = 503;
    upstreams[kFlaky]->set_behaviour(failing);
    config = (dir / "fleet.json").string();
    std::ofstream(config) << config_text(on_failure, expiry_ms);
    for (int i = 0; i < 4; ++i) replicas.push_back(start_replica(i));
  }

  // A folder of its own: replicas of an earlier fleet may still be ending.
  static std::filesystem::path fresh_dir() {
    static int fleets = 0;
    const auto dir = torouter::testing::process_temp_dir("torouter_fleet_test") /
                     ("fleet" + std::to_string(++fleets));
    std::filesystem::create_directories(dir);
    return dir;
  }

  ~Fleet() {
    for (auto& r : replicas) r.kill(SIGTERM);
  }

  std::string config_text(const std::string& on_failure, int expiry_ms) const {
    const int invoke_timeout = std::min(20000, expiry_ms - 300);
    std::ostringstream c;
    c << R"({"router_model":")" << kModel << R"(","experts_file":")" << kExpertsFile << R"(",)"
      << R"("listen":{"port":0},)"
      << R"("policy":{"lambda_cost":0,"budget_usd":2.0},)"
      << R"("retry":{"max_attempts_per_expert":1,"max_experts_tried":1,)"
      << R"("failures_before_cooldown":2,"cooldown_ms":60000,"capacity_wait_ms":20000,)"
      << R"("attempt_timeout_ms":10000,"invoke_timeout_ms":)" << invoke_timeout
      << R"(,"stream_timeout_ms":)" << invoke_timeout << "},"
      << R"("state":{"redis":")" << redis.url() << R"(","key_prefix":"fleet",)"
      << R"("on_failure":")" << on_failure << R"(","refresh_ms":200,"timeout_ms":200,)"
      << R"("call_expiry_ms":)" << expiry_ms << "},"
      << R"("experts":[)"
      << R"({"name":")" << kCapped << R"(","base_url":")" << upstreams.at(kCapped)->base_url()
      << R"(","max_concurrent_calls":3},)"
      << R"({"name":")" << kRated << R"(","base_url":")" << upstreams.at(kRated)->base_url()
      << R"(","requests_per_minute":10},)"
      << R"({"name":")" << kPaid << R"(","base_url":")" << upstreams.at(kPaid)->base_url()
      << R"(","input_usd_per_mtok":20000,"output_usd_per_mtok":0},)"
      << R"({"name":")" << kFlaky << R"(","base_url":")" << upstreams.at(kFlaky)->base_url()
      << R"("},)"
      << R"({"name":")" << kSteady << R"(","base_url":")" << upstreams.at(kSteady)->base_url()
      << R"("}]})";
    return c.str();
  }

  Replica start_replica(int number) const {
    const auto out = dir / ("replica" + std::to_string(number) + ".out");
    const auto err = dir / ("replica" + std::to_string(number) + ".err");
    Replica r;
    std::fflush(nullptr);  // the child must not write out the test's buffered output
    const pid_t test = ::getpid();
    r.pid = ::fork();
    REQUIRE(r.pid >= 0);
    if (r.pid == 0) {
      // A test killed midway (ctest's timeout, a signal) runs no destructor:
      // its replicas die with it rather than outlive it. Only the main
      // thread starts replicas, and the signal follows the forking thread.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != test) ::_exit(125);
      if (!std::freopen(out.c_str(), "w", stdout) || !std::freopen(err.c_str(), "w", stderr)) {
        ::_exit(126);
      }
      ::execl(TOROUTER_SERVER, TOROUTER_SERVER, "--config", config.c_str(),
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 500 && r.port < 0; ++i) {
      std::ifstream in(out);
      const std::string text((std::istreambuf_iterator<char>(in)), {});
      const auto at = text.find("listening on http://127.0.0.1:");
      if (at != std::string::npos && text.find('\n', at) != std::string::npos) {
        r.port = std::atoi(text.c_str() + at + 30);
      } else {
        std::this_thread::sleep_for(10ms);
      }
    }
    INFO("replica " << number << " did not start; see " << err.string());
    REQUIRE(r.port > 0);
    return r;
  }

  std::optional<torouter::test::HttpReply> post(std::size_t replica, const std::string& body) {
    return torouter::test::http_call(replicas[replica].port, "POST", "/v1/chat/completions", {},
                                     body);
  }

  // What the replica wrote to stderr (the state store's events among it).
  std::string log(std::size_t replica) const {
    std::ifstream in(dir / ("replica" + std::to_string(replica) + ".err"));
    return std::string((std::istreambuf_iterator<char>(in)), {});
  }

  std::string metrics(std::size_t replica) {
    auto r = torouter::test::http_call(replicas[replica].port, "GET", "/metrics", {});
    return r ? r->body : std::string();
  }

  // 32 clients, client c on replica c % 4, each sending `calls` requests
  // of `body(c, i)`; returns every reply (status 0: none came).
  template <typename Body>
  std::vector<torouter::test::HttpReply> crowd(int calls, Body body) {
    std::mutex mutex;
    std::vector<torouter::test::HttpReply> replies;
    std::vector<std::thread> clients;
    for (int c = 0; c < 32; ++c) {
      clients.emplace_back([&, c] {
        for (int i = 0; i < calls; ++i) {
          auto reply = post(static_cast<std::size_t>(c % 4), body(c, i));
          std::lock_guard<std::mutex> lock(mutex);
          replies.push_back(reply ? *reply : torouter::test::HttpReply());
        }
      });
    }
    for (auto& t : clients) t.join();
    return replies;
  }

  torouter::testing::RedisServer redis;
  std::filesystem::path dir;
  std::map<std::string, std::unique_ptr<StandInUpstream>> upstreams;
  std::string config;
  std::vector<Replica> replicas;
};

std::size_t count(const std::vector<torouter::test::HttpReply>& replies, int status) {
  return static_cast<std::size_t>(
      std::count_if(replies.begin(), replies.end(),
                    [status](const torouter::test::HttpReply& r) { return r.status == status; }));
}

// "200 x 380, 503 x 4": how many replies had each status (0: none came).
std::string status_counts(const std::vector<torouter::test::HttpReply>& replies) {
  std::map<int, std::size_t> counts;
  for (const auto& r : replies) ++counts[r.status];
  std::string text;
  for (const auto& [status, n] : counts) {
    text += (text.empty() ? "" : ", ") + std::to_string(status) + " x " + std::to_string(n);
  }
  return text;
}

double header_number(const torouter::test::HttpReply& r, const std::string& name) {
  return std::atof(std::string(r.header(name)).c_str());
}

double metric(const std::string& text, const std::string& line_start) {
  const auto at = text.find(line_start);
  return at == std::string::npos ? -1.0 : std::atof(text.c_str() + at + line_start.size());
}

}  // namespace

TEST_CASE("fleet: a cap of 3 holds across four replicas and 32 clients", "[fleet]") {
  Fleet fleet;
  const auto statuses = fleet.crowd(2, [](int, int) { return chat(kCapped, "hi there"); });
  INFO("answered " << count(statuses, 200) << " of " << statuses.size());
  CHECK(count(statuses, 200) == statuses.size());  // each waits its turn for a slot
  CHECK(fleet.upstreams[kCapped]->requests() == statuses.size());
  CHECK(fleet.upstreams[kCapped]->most_in_flight() <= 3);
  CHECK(fleet.upstreams[kCapped]->most_in_flight() >= 2);
}

// What answered calls cost, against their predictions.
struct Charges {
  std::size_t answered = 0;
  double spent = 0, overrun = 0;

  void add(const torouter::test::HttpReply& r) {
    const double cost = header_number(r, "X-Torouter-Cost-Usd");
    const double predicted = header_number(r, "X-Torouter-Predicted-Cost-Usd");
    ++answered;
    spent += cost;
    overrun += std::max(0.0, cost - predicted);
  }
};

// Whether replica 0 comes to read the fleet's spend as `spent` within 2 s:
// then every settlement has reached Redis.
bool fleet_spend_reaches(Fleet& fleet, double spent) {
  for (int i = 0; i < 100; ++i) {
    const double fleet_spend =
        metric(fleet.metrics(0), "torouter_fleet_spend_usd{scope=\"fleet\"} ");
    if (std::abs(fleet_spend - spent) < 1e-6) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

TEST_CASE("fleet: one budget for the whole fleet, within the stated bound", "[fleet]") {
  Fleet fleet;
  // A paid call costs about $0.15; the fleet's $2 holds about thirteen.
  const auto replies = fleet.crowd(2, [](int c, int i) {
    return chat(kPaid, "call " + std::to_string(c * 2 + i) + " of the fleet....");
  });
  Charges charges;
  for (const auto& r : replies) {
    if (r.status == 200) charges.add(r);
  }
  INFO("the crowd: " << status_counts(replies) << ", spent $" << charges.spent << ", overrun $"
                     << charges.overrun);
  CHECK(charges.answered >= 5);
  CHECK(count(replies, 429) == replies.size() - charges.answered);  // budget_exhausted
  // The bound (docs/SCALING.md): the budget, plus what the calls cost
  // beyond their predictions.
  CHECK(charges.spent <= 2.0 + charges.overrun + 1e-9);
  REQUIRE(fleet_spend_reaches(fleet, charges.spent));

  // The crowd's last refusals counted reservations that settled for less
  // than predicted. With every call settled, one call at a time uses what
  // is left, up to the next call's prediction.
  torouter::test::HttpReply refused;
  for (int i = 0; i < 40 && refused.status == 0; ++i) {
    auto r = fleet.post(static_cast<std::size_t>(i % 4),
                        chat(kPaid, "call " + std::to_string(100 + i) + " of the fleet..."));
    REQUIRE(r);
    if (r->status == 200) {
      charges.add(*r);
      REQUIRE(fleet_spend_reaches(fleet, charges.spent));
    } else {
      refused = *r;
    }
  }
  INFO("with the calls one at a time: spent $" << charges.spent << ", refused: " << refused.body);
  REQUIRE(refused.status == 429);
  CHECK_THAT(refused.body, Contains("budget_exhausted"));
  CHECK(charges.spent <= 2.0 + charges.overrun + 1e-9);
  const double asked = header_number(refused, "X-Torouter-Predicted-Cost-Usd");
  REQUIRE(asked > 0);
  CHECK(charges.spent > 2.0 - asked - 1e-9);
  // Each replica counts its own spend; together, the fleet's.
  double replicas = 0;
  for (std::size_t r = 0; r < 4; ++r) {
    const double own = metric(fleet.metrics(r), "torouter_fleet_spend_usd{scope=\"replica\"} ");
    REQUIRE(own >= 0);
    replicas += own;
  }
  CHECK(replicas == Approx(charges.spent));
}

TEST_CASE("fleet: one request rate for the whole fleet", "[fleet]") {
  Fleet fleet;
  const auto replies = fleet.crowd(1, [](int, int) { return chat(kRated, "hello"); });
  const std::size_t sent = fleet.upstreams[kRated]->requests();
  // Ten a minute; twenty when the crowd straddles a minute's turn.
  CHECK(sent >= 10);
  CHECK(sent <= 20);
  CHECK(count(replies, 200) == sent);
  CHECK(count(replies, 429) == replies.size() - sent);
  for (const auto& r : replies) {
    if (r.status == 429) CHECK_THAT(r.body, Contains("rate_limited"));
  }
}

TEST_CASE("fleet: an expert failing for one replica cools down for all within a second",
          "[fleet]") {
  Fleet fleet;
  for (int i = 0; i < 2; ++i) {
    auto r = fleet.post(0, chat(kFlaky, "hello"));
    REQUIRE(r);
    CHECK(r->status >= 500);
  }
  const std::string cooling = "torouter_expert_cooling_down{expert=\"" + kFlaky + "\"} 1";
  CHECK_THAT(fleet.metrics(0), Contains(cooling));
  const auto cooled_at = std::chrono::steady_clock::now();
  bool everywhere = false;
  while (!everywhere && std::chrono::steady_clock::now() - cooled_at < 3s) {
    everywhere = true;
    for (std::size_t r = 1; r < 4; ++r) {
      everywhere = everywhere && fleet.metrics(r).find(cooling) != std::string::npos;
    }
  }
  CHECK(everywhere);
  CHECK(std::chrono::steady_clock::now() - cooled_at < 1s);
}

TEST_CASE("fleet: Redis killed and restarted, failing open: every request answered", "[fleet]") {
  Fleet fleet("open");
  std::thread outage([&] {
    std::this_thread::sleep_for(300ms);
    fleet.redis.stop();
    std::this_thread::sleep_for(700ms);
    fleet.redis.start();  // empty, as after a crash
  });
  // 32 clients, 12 calls of 100 ms each: about 1.2 s, the outage inside it.
  const auto replies = fleet.crowd(12, [](int, int) { return chat(kSteady, "steady"); });
  outage.join();
  INFO("statuses: " << status_counts(replies) << "; replica 1's log:\n" << fleet.log(1));
  CHECK(count(replies, 200) == replies.size());
  double local = 0;
  for (std::size_t r = 0; r < 4; ++r) {
    local +=
        metric(fleet.metrics(r), "torouter_state_store_events_total{event=\"admitted_local\"} ");
  }
  CHECK(local > 0);
  bool reconnected = false;
  for (int i = 0; i < 200 && !reconnected; ++i) {
    reconnected = fleet.metrics(1).find("torouter_state_store_connected 1") != std::string::npos;
    if (!reconnected) std::this_thread::sleep_for(50ms);
  }
  CHECK(reconnected);
}

TEST_CASE("fleet: failing closed, paid calls are refused while Redis is down", "[fleet]") {
  Fleet fleet("closed");
  auto before = fleet.post(0, chat(kPaid, "before"));
  REQUIRE(before);
  REQUIRE(before->status == 200);
  fleet.redis.stop();
  auto refused = fleet.post(1, chat(kPaid, "during"));
  REQUIRE(refused);
  CHECK(refused->status == 503);
  CHECK_THAT(refused->body, Contains("state_unavailable") || Contains("failing closed"));
  fleet.redis.start();
  bool served = false;
  for (int i = 0; i < 200 && !served; ++i) {
    auto r = fleet.post(1, chat(kPaid, "after"));
    served = r && r->status == 200;
    if (!served) std::this_thread::sleep_for(50ms);
  }
  CHECK(served);
}

TEST_CASE("fleet: a replica killed with calls in flight gives its slots back after expiry",
          "[fleet]") {
  Fleet fleet("open", 1500);
  StandInBehaviour stuck;
  stuck.delay = 4s;  // past the calls' expiry; short, so the stand-in stops soon after
  fleet.upstreams[kCapped]->set_behaviour(stuck);
  std::vector<std::thread> doomed;
  for (int i = 0; i < 3; ++i) {
    doomed.emplace_back([&] { fleet.post(0, chat(kCapped, "never answered")); });
  }
  for (int i = 0; i < 200 && fleet.upstreams[kCapped]->in_flight() < 3; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  REQUIRE(fleet.upstreams[kCapped]->in_flight() == 3);
  fleet.replicas[0].kill(SIGKILL);  // its three slots stay taken in Redis
  StandInBehaviour quick;
  fleet.upstreams[kCapped]->set_behaviour(quick);
  const auto killed_at = std::chrono::steady_clock::now();
  // Each call waits for a slot until its invoke_timeout (1.2 s), then 503s
  // or 504s; once the dead replica's calls expire (1.5 s after they began),
  // the fleet's slots are free again.
  int status = 0;
  while (status != 200 && std::chrono::steady_clock::now() - killed_at < 15s) {
    auto r = fleet.post(1, chat(kCapped, "after the crash"));
    status = r ? r->status : 0;
  }
  CHECK(status == 200);
  CHECK(std::chrono::steady_clock::now() - killed_at > 1s);
  for (auto& t : doomed) t.join();
}
