// speed_bench: the C++ side of benchmarks/speed.sh (issue 5). One thread
// throughout; pin the process (taskset) for steadier figures.
//
//   speed_bench route --data ../shared/data --model mlp=M.tormodel [--model ...]
//                     --json OUT.json [--prompts-out P.jsonl] [--rounds 3]
//   speed_bench rss --model M.tormodel --json OUT.json
//
// `route` times Router::route one prompt at a time (featurize, score, cost
// model, constraints, policy: end to end) on prompts of about 100, 500 and
// 4,000 characters from the shared datasets, counts heap allocations per
// warm route with a counting operator new, and measures batch scoring
// throughput (Scorer::score) at batches of 1, 32 and 1,024. Each measurement
// is repeated `rounds` times and the median round is reported with the
// spread, since the machines are shared.
//
// Timing uses a plain loop rather than Google Benchmark: percentiles of
// single calls are what a router's caller sees, and Google Benchmark reports
// means of many calls.
#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "json_text.hpp"
#include "torouter/dataset.hpp"
#include "torouter/features.hpp"
#include "torouter/router.hpp"
#include "torouter/trainable_scorer.hpp"

// ------------------------------------------------------------ allocation count

namespace {
std::atomic<long> g_allocations{0};
}

void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// g++ 12 inlines these deletes into the standard containers and, not
// seeing that the `operator new` above is malloc too, warns of a mismatch
// (-Wmismatched-new-delete) where there is none.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace {

using Clock = std::chrono::steady_clock;
using torouter::detail::json_string;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// This thread's CPU time: unlike the wall clock it does not count the time
// the scheduler gives other processes, so it shows the code's own cost on a
// shared machine (a system call, about a microsecond, so only reported next
// to the wall-clock figures).
double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// ------------------------------------------------------------ small helpers

std::string num(double x) {
  if (!std::isfinite(x)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}

// Code points, as the datasets count characters.
std::size_t chars_of(std::string_view s) {
  std::size_t n = 0;
  for (char ch : s) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
  return n;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const double pos = p / 100.0 * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(pos));
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

double median(std::vector<double> v) { return percentile(std::move(v), 50); }

// Median of the rounds, with the smallest and largest round.
struct Spread {
  double median = NAN, min = NAN, max = NAN;
};
Spread spread(const std::vector<double>& rounds) {
  Spread s;
  if (rounds.empty()) return s;
  s.median = median(rounds);
  s.min = *std::min_element(rounds.begin(), rounds.end());
  s.max = *std::max_element(rounds.begin(), rounds.end());
  return s;
}
std::string json_spread(const Spread& s) {
  return "{\"median\": " + num(s.median) + ", \"min\": " + num(s.min) + ", \"max\": " +
         num(s.max) + "}";
}

struct Args {
  std::string command;
  std::multimap<std::string, std::string> values;

  static Args parse(int argc, char** argv) {
    Args a;
    if (argc < 2) throw std::runtime_error("usage: speed_bench route|rss [--option value]...");
    a.command = argv[1];
    for (int i = 2; i < argc; ++i) {
      std::string key = argv[i];
      if (key.rfind("--", 0) != 0 || i + 1 >= argc) {
        throw std::runtime_error("speed_bench: expected --option value, got " + key);
      }
      a.values.emplace(key.substr(2), argv[++i]);
    }
    return a;
  }
  std::string get(const std::string& key, const std::string& fallback = "") const {
    auto it = values.find(key);
    if (it != values.end()) return it->second;
    if (fallback.empty()) throw std::runtime_error("speed_bench: missing --" + key);
    return fallback;
  }
  std::vector<std::string> all(const std::string& key) const {
    std::vector<std::string> out;
    auto range = values.equal_range(key);
    for (auto it = range.first; it != range.second; ++it) out.push_back(it->second);
    return out;
  }
};

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  if (!f) throw std::runtime_error("speed_bench: cannot write " + path);
}

// ------------------------------------------------------------ prompts

struct PromptClass {
  std::size_t target = 0;
  std::vector<std::string> prompts;
  std::size_t synthesized = 0;  // made by joining dataset prompts
};

// The `per_class` prompts whose length is closest to `target` characters,
// among those within 20% of it; where too few exist (4,000 characters is
// rare in the datasets), consecutive dataset prompts joined by blank lines
// and cut at a space near the target fill the class.
PromptClass pick_prompts(const std::vector<std::string>& pool, std::size_t target,
                         std::size_t per_class) {
  PromptClass c;
  c.target = target;
  std::vector<std::pair<std::size_t, std::size_t>> near;  // (distance, index)
  for (std::size_t i = 0; i < pool.size(); ++i) {
    const std::size_t n = chars_of(pool[i]);
    const std::size_t d = n > target ? n - target : target - n;
    if (d * 5 <= target) near.emplace_back(d, i);
  }
  std::sort(near.begin(), near.end());
  for (std::size_t k = 0; k < near.size() && c.prompts.size() < per_class; ++k) {
    c.prompts.push_back(pool[near[k].second]);
  }
  // Joined prompts start every `stride` rows so they differ.
  const std::size_t stride = std::max<std::size_t>(1, pool.size() / (per_class + 1));
  for (std::size_t start = 0; c.prompts.size() < per_class && start < pool.size(); start += stride) {
    std::string text;
    for (std::size_t i = start; chars_of(text) < target; i = (i + 1) % pool.size()) {
      if (!text.empty()) text += "\n\n";
      text += pool[i];
    }
    // Cut at the last space before the target (ASCII, so UTF-8 stays valid).
    std::size_t cut = text.size();
    while (cut > 0 && chars_of(std::string_view(text).substr(0, cut)) > target) {
      const std::size_t space = text.rfind(' ', cut - 1);
      if (space == std::string::npos || space == 0) break;
      cut = space;
    }
    text.resize(cut);
    c.prompts.push_back(std::move(text));
    ++c.synthesized;
  }
  return c;
}

// ------------------------------------------------------------ route

struct ModelEntry {
  std::string name, path;
};

// Transformer-lite shape from its spec ("tlite:64,tokens=128"), for FLOP counts;
// the defaults are the library's.
struct TliteShape {
  double d = 64, heads = 4, ff = 256, layers = 2, tokens = 64;
};
TliteShape parse_tlite(const std::string& spec) {
  TliteShape s;
  std::string rest = spec.substr(spec.find(':') == std::string::npos ? spec.size() : spec.find(':') + 1);
  std::stringstream in(rest);
  std::string part;
  bool first = true;
  while (std::getline(in, part, ',')) {
    const auto eq = part.find('=');
    if (first && eq == std::string::npos && !part.empty()) s.d = std::stod(part);
    first = false;
    if (eq == std::string::npos) continue;
    const std::string key = part.substr(0, eq);
    const std::string value = part.substr(eq + 1);
    if (key == "layers") s.layers = std::stod(value);
    if (key == "heads") s.heads = std::stod(value);
    if (key == "ff") s.ff = std::stod(value);
    if (key == "tokens") s.tokens = std::stod(value);
  }
  return s;
}

// Multiply-adds count 2 FLOPs. Only the real positions count: padding, if a
// build computes any, is overhead, not useful work.
double tlite_flops(const TliteShape& s, double length, double experts) {
  const double per_layer = 2 * 4 * length * s.d * s.d      // q, k, v, out projections
                           + 2 * 2 * length * length * s.d  // scores and context
                           + 2 * 2 * length * s.d * s.ff;   // feed-forward
  return s.layers * per_layer + 2 * 2 * s.d * experts;      // + quality, token heads
}

int run_route(const Args& args) {
  const std::string root = args.get("data");
  const auto rounds = static_cast<std::size_t>(std::stoul(args.get("rounds", "3")));
  const auto per_class = static_cast<std::size_t>(std::stoul(args.get("per-class", "200")));

  // Prompts of both datasets, train and test, without duplicates.
  std::vector<std::string> pool, natural;
  for (const char* name : {"llmrouter14", "routerbench3"}) {
    const torouter::RoutingDataset data = torouter::load_routing_dataset(root + "/" + name);
    for (const auto* rows : {&data.train, &data.test}) {
      for (const auto& row : *rows) pool.push_back(row.prompt);
    }
    // The batch-throughput mix: llmrouter14's test prompts as they come.
    if (std::string(name) == "llmrouter14") {
      for (const auto& row : data.test) natural.push_back(row.prompt);
    }
  }
  std::sort(pool.begin(), pool.end());
  pool.erase(std::unique(pool.begin(), pool.end()), pool.end());
  // A fixed shuffle (by hash of the text), so joined prompts mix tasks.
  std::sort(pool.begin(), pool.end(), [](const std::string& a, const std::string& b) {
    const auto ha = std::hash<std::string>{}(a), hb = std::hash<std::string>{}(b);
    return ha != hb ? ha < hb : a < b;
  });
  std::vector<PromptClass> classes;
  for (std::size_t target : {100u, 500u, 4000u}) classes.push_back(pick_prompts(pool, target, per_class));

  std::vector<ModelEntry> models;
  for (const std::string& m : args.all("model")) {
    const auto eq = m.find('=');
    if (eq == std::string::npos) throw std::runtime_error("--model wants NAME=PATH, got " + m);
    models.push_back({m.substr(0, eq), m.substr(eq + 1)});
  }

  // Prompts, with what the PyTorch peer needs to mimic the inputs' shapes.
  if (args.values.count("prompts-out")) {
    torouter::FeaturizerOptions fo;
    fo.num_buckets = static_cast<std::uint32_t>(std::stoul(args.get("mlp-buckets", "16384")));
    torouter::Featurizer featurizer(fo);
    torouter::SparseFeatures f;
    std::vector<std::uint32_t> ids;
    std::ostringstream out;
    const auto write = [&](const std::string& set, const std::string& p) {
      featurizer.featurize(p, f);
      featurizer.token_ids(p, 1u << 20, ids);
      out << "{\"set\": \"" << set << "\", \"chars\": " << chars_of(p)
          << ", \"sparse_features\": " << f.indices.size() << ", \"words\": " << ids.size()
          << ", \"prompt\": " << json_string(p) << "}\n";
    };
    for (const auto& c : classes) {
      for (const auto& p : c.prompts) write(std::to_string(c.target), p);
    }
    for (const auto& p : natural) write("natural", p);
    write_file(args.get("prompts-out"), out.str());
  }

  std::ostringstream json;
  json << "{\n \"rounds\": " << rounds << ",\n \"classes\": [";
  for (std::size_t k = 0; k < classes.size(); ++k) {
    std::vector<double> lengths;
    for (const auto& p : classes[k].prompts) lengths.push_back(static_cast<double>(chars_of(p)));
    json << (k ? ", " : "") << "{\"target_chars\": " << classes[k].target
         << ", \"prompts\": " << classes[k].prompts.size()
         << ", \"synthesized\": " << classes[k].synthesized
         << ", \"median_chars\": " << num(median(lengths)) << "}";
  }
  json << "],\n \"models\": {";

  for (std::size_t mi = 0; mi < models.size(); ++mi) {
    const ModelEntry& entry = models[mi];
    std::fprintf(stderr, "speed_bench: %s (%s)\n", entry.name.c_str(), entry.path.c_str());
    torouter::LoadedModel model = torouter::load_model(entry.path);
    const std::string spec = model.scorer->spec();
    torouter::Router router(model.experts, model.scorer);
    torouter::RouteOptions options;
    options.policy.lambda_cost = 1000;  // a cost weight, so the utility path does its work
    torouter::RouteDecision decision;

    // Warm: every prompt once, the longest last, so buffers have their size.
    for (const auto& c : classes) {
      for (const auto& p : c.prompts) router.route(p, options, decision);
    }
    long allocations = 0;
    std::size_t counted_routes = 0;
    for (const auto& c : classes) {
      for (const auto& p : c.prompts) {
        const long before = g_allocations.load();
        router.route(p, options, decision);
        allocations += g_allocations.load() - before;
        ++counted_routes;
      }
    }

    json << (mi ? "," : "") << "\n  \"" << entry.name << "\": {\"spec\": " << json_string(spec)
         << ", \"path\": " << json_string(entry.path) << ", \"warm_routes_counted\": "
         << counted_routes << ", \"allocations_per_warm_route\": "
         << num(static_cast<double>(allocations) / static_cast<double>(counted_routes))
         << ",\n   \"route_us\": {";

    // Route latency per class: each round times every prompt once.
    for (std::size_t k = 0; k < classes.size(); ++k) {
      std::vector<double> p50s, p99s, means, cpu_p50s;
      for (std::size_t r = 0; r < rounds; ++r) {
        std::vector<double> us, cpu_us;
        us.reserve(classes[k].prompts.size() * 5);
        cpu_us.reserve(classes[k].prompts.size() * 5);
        for (int rep = 0; rep < 5; ++rep) {
          for (const auto& p : classes[k].prompts) {
            const double cpu_start = thread_cpu_seconds();
            const auto start = Clock::now();
            router.route(p, options, decision);
            us.push_back(seconds_since(start) * 1e6);
            cpu_us.push_back((thread_cpu_seconds() - cpu_start) * 1e6);
          }
        }
        p50s.push_back(percentile(us, 50));
        p99s.push_back(percentile(us, 99));
        cpu_p50s.push_back(percentile(cpu_us, 50));
        double sum = 0;
        for (double u : us) sum += u;
        means.push_back(sum / static_cast<double>(us.size()));
      }
      json << (k ? ", " : "") << "\n    \"" << classes[k].target << "\": {\"p50\": "
           << json_spread(spread(p50s)) << ", \"p99\": " << json_spread(spread(p99s))
           << ", \"mean\": " << json_spread(spread(means))
           << ", \"thread_cpu_p50\": " << json_spread(spread(cpu_p50s)) << "}";
    }
    json << "},\n   \"batch\": {";

    // Batch scoring throughput on the natural mix, cycled to the batch size.
    const torouter::Scorer& scorer = *model.scorer;
    auto workspace = scorer.make_workspace();
    torouter::ScoreBatch out;
    const bool is_tlite = spec.rfind("tlite", 0) == 0;
    const TliteShape shape = is_tlite ? parse_tlite(spec) : TliteShape{};
    torouter::FeaturizerOptions tfo;
    torouter::Featurizer word_counter(tfo);
    std::vector<std::uint32_t> ids;
    const std::size_t batches[] = {1, 32, 1024};
    for (std::size_t bi = 0; bi < 3; ++bi) {
      const std::size_t b = batches[bi];
      std::vector<std::string_view> views;
      double flops = 0;
      for (std::size_t i = 0; i < b; ++i) {
        views.emplace_back(natural[i % natural.size()]);
        if (is_tlite) {
          word_counter.token_ids(views.back(), static_cast<std::size_t>(shape.tokens), ids);
          flops += tlite_flops(shape, static_cast<double>(std::max<std::size_t>(ids.size(), 1)),
                               static_cast<double>(scorer.expert_names().size()));
        }
      }
      // Cycle the start so batches of one see every prompt.
      std::vector<double> rates, cpu_rates;
      scorer.score(views.data(), b, out, workspace.get());  // warm
      for (std::size_t r = 0; r < rounds; ++r) {
        std::size_t calls = 0;
        const double cpu_start = thread_cpu_seconds();
        const auto start = Clock::now();
        double elapsed = 0;
        do {
          if (b == 1) {
            const std::string_view one = natural[calls % natural.size()];
            scorer.score(&one, 1, out, workspace.get());
          } else {
            scorer.score(views.data(), b, out, workspace.get());
          }
          ++calls;
          elapsed = seconds_since(start);
        } while (elapsed < 0.4 || calls < 3);
        rates.push_back(static_cast<double>(calls * b) / elapsed);
        cpu_rates.push_back(static_cast<double>(calls * b) / (thread_cpu_seconds() - cpu_start));
      }
      const Spread s = spread(rates);
      const Spread cpu = spread(cpu_rates);
      json << (bi ? ", " : "") << "\n    \"" << b << "\": {\"prompts_per_second\": "
           << json_spread(s) << ", \"prompts_per_cpu_second\": " << json_spread(cpu);
      if (is_tlite && b > 1) {
        const double flops_per_prompt = flops / static_cast<double>(b);
        json << ", \"useful_gflop_per_prompt\": " << num(flops_per_prompt / 1e9)
             << ", \"useful_gflop_per_second\": " << num(s.median * flops_per_prompt / 1e9)
             << ", \"useful_gflop_per_cpu_second\": " << num(cpu.median * flops_per_prompt / 1e9);
      }
      json << "}";
    }
    json << "}}";
  }
  json << "\n }\n}\n";
  write_file(args.get("json"), json.str());
  return 0;
}

// ------------------------------------------------------------ rss

long status_kb(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(f, line)) {
    if (line.rfind(prefix, 0) == 0) return std::stol(line.substr(prefix.size()));
  }
  return -1;
}

// Resident memory of a loaded router that has routed (a long prompt, so its
// buffers have their largest size), over the process before loading.
int run_rss(const Args& args) {
  const long before = status_kb("VmRSS");
  torouter::LoadedModel model = torouter::load_model(args.get("model"));
  torouter::Router router(model.experts, model.scorer);
  torouter::RouteDecision decision;
  std::string prompt;
  while (prompt.size() < 4000) prompt += "Explain how a compiler optimises loops, with examples. ";
  router.route(prompt, {}, decision);
  router.route("What is 2 + 2?", {}, decision);
  const long after = status_kb("VmRSS");
  std::ostringstream json;
  json << "{\"rss_before_kb\": " << before << ", \"rss_loaded_kb\": " << after
       << ", \"router_kb\": " << after - before << ", \"peak_kb\": " << status_kb("VmHWM")
       << "}\n";
  write_file(args.get("json"), json.str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = Args::parse(argc, argv);
    if (args.command == "route") return run_route(args);
    if (args.command == "rss") return run_rss(args);
    std::fprintf(stderr, "speed_bench: unknown command %s\n", args.command.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
