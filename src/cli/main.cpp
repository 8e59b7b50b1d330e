// The torouter program: train a router from a routing dataset, and route a
// prompt with a trained model.
//
//   torouter train --data DIR --scorer mlp --out MODEL [--seed N] [--threads N]
//                  [--loss bce|soft] [--temperature T] [--epochs N]
//   torouter route --model MODEL [--experts FILE] [--lambda-cost X] PROMPT
#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include "torouter/dataset.hpp"
#include "torouter/error.hpp"
#include "torouter/router.hpp"
#include "torouter/trainable_scorer.hpp"

namespace {

constexpr const char* kUsage =
    "usage:\n"
    "  torouter train --data DIR --scorer mlp|knn|tlite|SPEC --out MODEL [--seed N]\n"
    "                 [--threads N] [--loss bce|soft] [--temperature T] [--epochs N]\n"
    "  torouter route --model MODEL [--experts FILE] [--lambda-cost X] PROMPT\n";

// Options after the command: "--name value" pairs and positional arguments.
struct Arguments {
  std::map<std::string, std::string> named;
  std::vector<std::string> positional;

  static Arguments parse(int argc, char** argv, int first) {
    Arguments out;
    for (int i = first; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg.rfind("--", 0) == 0) {
        if (i + 1 >= argc) throw torouter::Error(fmt::format("{} needs a value", arg));
        out.named[arg.substr(2)] = argv[++i];
      } else {
        out.positional.push_back(arg);
      }
    }
    return out;
  }
  std::string required(const std::string& name) const {
    auto it = named.find(name);
    if (it == named.end()) throw torouter::Error(fmt::format("missing --{}", name));
    return it->second;
  }
  std::string get(const std::string& name, const std::string& fallback) const {
    auto it = named.find(name);
    return it == named.end() ? fallback : it->second;
  }
  void allow_only(std::initializer_list<const char*> names) const {
    for (const auto& [name, value] : named) {
      bool known = false;
      for (const char* n : names) known = known || name == n;
      if (!known) throw torouter::Error(fmt::format("unknown option --{}", name));
    }
  }
};

double parse_number(const std::string& text, const std::string& what) {
  try {
    std::size_t used = 0;
    const double v = std::stod(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  throw torouter::Error(fmt::format("--{}: expected a number, got \"{}\"", what, text));
}

long long parse_whole(const std::string& text, const std::string& what, long long minimum) {
  const double v = parse_number(text, what);
  if (v != static_cast<double>(static_cast<long long>(v)) || v < static_cast<double>(minimum)) {
    throw torouter::Error(fmt::format("--{}: expected a whole number >= {}, got \"{}\"", what,
                                      minimum, text));
  }
  return static_cast<long long>(v);
}




int train(const Arguments& args) {
  args.allow_only({"data", "scorer", "out", "seed", "threads", "loss", "temperature", "epochs"});
  const std::string dir = args.required("data");
  const std::string out = args.required("out");
  torouter::TrainOptions options;
  options.seed = static_cast<std::uint64_t>(parse_whole(args.get("seed", "1"), "seed", 0));
  options.threads = static_cast<int>(parse_whole(args.get("threads", "1"), "threads", 1));
  options.max_epochs = static_cast<int>(
      parse_whole(args.get("epochs", std::to_string(options.max_epochs)), "epochs", 1));
  const std::string loss = args.get("loss", "bce");
  if (loss != "bce" && loss != "soft") {
    throw torouter::Error(fmt::format("--loss: expected bce or soft, got \"{}\"", loss));
  }
  options.loss = loss == "bce" ? torouter::Loss::Bce : torouter::Loss::Soft;
  options.temperature = parse_number(args.get("temperature", "0.1"), "temperature");
  if (!(options.temperature > 0)) throw torouter::Error("--temperature must be > 0");

  auto scorer = torouter::make_scorer(args.required("scorer"));
  std::fprintf(stderr, "loading %s\n", dir.c_str());
  torouter::RoutingDataset data = torouter::load_routing_dataset(dir);
  const torouter::TrainingSet set =
      torouter::make_training_set(data.experts, data.train, data.name + "/train.jsonl");

  // Where experts.json gives no prices but rows carry costs, learn the prices.
  torouter::ExpertRegistry prices = data.registry;
  const auto fitted = torouter::fit_prices(data, data.train);
  bool priced = false;
  for (const auto& e : data.registry.experts()) {
    priced = priced || e.input_usd_per_mtok > 0 || e.output_usd_per_mtok > 0;
  }
  if (!priced && !fitted.empty()) {
    torouter::ExpertRegistry refit;
    std::fprintf(stderr, "experts.json has no prices; fitted from cost_usd (per million tokens):\n");
    for (const auto& spec : data.registry.experts()) {
      torouter::ExpertSpec priced_spec = spec;
      for (const auto& f : fitted) {
        if (f.expert != spec.name) continue;
        priced_spec.input_usd_per_mtok = f.input_usd_per_mtok;
        priced_spec.output_usd_per_mtok = f.output_usd_per_mtok;
        std::fprintf(stderr, "  %-36s in %9.4f  out %9.4f  rmse $%.3g  mean abs error %.1f%%\n",
                     f.expert.c_str(), f.input_usd_per_mtok, f.output_usd_per_mtok, f.rmse_usd,
                     100 * f.relative_error);
      }
      refit.add(priced_spec);
    }
    prices = refit;
  }

  const bool terminal = isatty(fileno(stderr));
  options.on_epoch = [terminal](const torouter::EpochProgress& p) {
    std::fprintf(stderr, "%sepoch %3d  loss %.4f  validation loss %.4f  routed quality %.4f  %6.1fs%s%s",
                 terminal ? "\r" : "", p.epoch, p.train_loss, p.validation_loss,
                 p.validation_quality, p.elapsed_seconds, p.improved ? " *" : "  ",
                 terminal ? "" : "\n");
    std::fflush(stderr);
  };
  std::fprintf(stderr, "training %s on %zu rows, %zu experts, %d thread(s)\n",
               scorer->spec().c_str(), set.rows(), set.experts.size(), options.threads);
  const torouter::TrainReport report = scorer->train(set, options);
  if (terminal) std::fprintf(stderr, "\n");
  torouter::save_model(*scorer, out, &prices);
  std::printf("trained %s in %.1fs: %d epochs, kept epoch %d (validation loss %.4f, routed "
              "quality %.4f); wrote %s\n",
              scorer->spec().c_str(), report.seconds, report.epochs_run, report.best_epoch,
              report.validation_loss, report.validation_quality, out.c_str());
  return 0;
}

int route(const Arguments& args) {
  args.allow_only({"model", "experts", "lambda-cost"});
  if (args.positional.size() != 1) throw torouter::Error("route takes exactly one PROMPT");
  torouter::LoadedModel model = torouter::load_model(args.required("model"));
  torouter::ExpertRegistry experts =
      args.named.count("experts") ? torouter::load_expert_registry(args.required("experts"))
                                  : model.experts;
  torouter::Router router(experts, model.scorer);
  torouter::RouteOptions options;
  options.policy.lambda_cost = parse_number(args.get("lambda-cost", "0"), "lambda-cost");
  std::printf("%s\n", torouter::to_json(router.route(args.positional[0], options)).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = argv[1];
  try {
    const Arguments args = Arguments::parse(argc, argv, 2);
    if (command == "train") return train(args);
    if (command == "route") return route(args);
    if (command == "--help" || command == "help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    std::fprintf(stderr, "torouter: unknown command \"%s\"\n%s", command.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "torouter %s: %s\n", command.c_str(), e.what());
    return 1;
  }
}
