// torouter train: learn a scorer from a routing dataset and write its model.
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>

#include "../scorers.hpp"
#include "args.hpp"
#include "torouter/abi.hpp"
#include "torouter/dataset.hpp"
#include "torouter/log_training.hpp"
#include "torouter/model_selection.hpp"
#include "torouter/trainable_scorer.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace cli {

namespace {

void print_candidate(const CandidateFigures& c) {
  std::fprintf(stderr, "  %-40s AIQ %.4f (folds' SE %.4f)  gap won %+.3f  ECE %.3f  %6.1fs\n",
               c.name.c_str(), c.aiq, detail::standard_error(c.fold_aiq), c.gap_won, c.ece,
               c.seconds);
}

// Why the trained candidate: its paired gap to the best pooled AIQ.
void print_choice(const ModelSelection& selection) {
  const CandidateFigures& chosen = selection.candidates[selection.chosen];
  std::size_t best = 0;
  for (std::size_t i = 1; i < selection.candidates.size(); ++i) {
    if (selection.candidates[i].aiq > selection.candidates[best].aiq) best = i;
  }
  if (best == selection.chosen) {
    const bool stack = chosen.name.rfind("stack:", 0) == 0;
    std::fprintf(stderr, "chose %s: the best AIQ%s\n", chosen.name.c_str(),
                 stack ? "; none with fewer members is within one standard error of it" : "");
    return;
  }
  const detail::PairedGap gap = detail::paired_gap(selection.candidates[best], chosen);
  std::fprintf(stderr,
               "chose %s: below the best (%s) by %.4f a fold, within one standard error "
               "(%.4f), with fewer members\n",
               chosen.name.c_str(), selection.candidates[best].name.c_str(), gap.mean,
               gap.standard_error);
}

// --out-of-fold: every candidate's calibrated out-of-fold quality for every
// training row, with the row's fold, so other tools can judge the same
// predictions: a header `candidate,id,fold,<expert>,...`, then each
// candidate's lines, one per training row in the file's order.
std::function<void(const CandidateFigures&, const Eigen::MatrixXf&, const std::vector<int>&)>
out_of_fold_writer(const std::string& path, const RoutingDataset& data) {
  auto out = std::make_shared<std::ofstream>(path);
  if (!*out) throw Error(fmt::format("--out-of-fold: {}: cannot write", path));
  *out << "candidate,id,fold";
  for (const auto& name : data.experts) *out << ',' << name;
  *out << '\n';
  return [out, &data](const CandidateFigures& c, const Eigen::MatrixXf& quality,
                      const std::vector<int>& fold) {
    for (Eigen::Index r = 0; r < quality.rows(); ++r) {
      *out << '"' << c.name << "\"," << data.train[static_cast<std::size_t>(r)].id << ','
           << fold[static_cast<std::size_t>(r)];
      for (Eigen::Index e = 0; e < quality.cols(); ++e)
        *out << fmt::format(",{:.9g}", quality(r, e));
      *out << '\n';
    }
    out->flush();
  };
}

// "gbt;mlp:64/soft;knn:40": candidates separated by ';'.
std::vector<CandidateScorer> parse_candidates(const std::string& text) {
  std::vector<CandidateScorer> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(';', start), text.size());
    out.push_back(parse_candidate(std::string_view(text).substr(start, end - start)));
    make_scorer(out.back().spec);  // refuses a bad spec before any training
    start = end + 1;
  }
  return out;
}

// --seed, --threads, --epochs, --loss, --temperature and --calibration.
TrainOptions parse_train_options(const Arguments& args) {
  TrainOptions options;
  options.seed = static_cast<std::uint64_t>(parse_whole(args.get("seed", "1"), "seed", 0));
  options.threads = static_cast<int>(parse_whole(args.get("threads", "1"), "threads", 1));
  options.max_epochs = static_cast<int>(
      parse_whole(args.get("epochs", std::to_string(options.max_epochs)), "epochs", 1));
  const std::string loss = args.get("loss", "bce");
  if (loss != "bce" && loss != "soft") {
    throw Error(fmt::format("--loss: expected bce or soft, got \"{}\"", loss));
  }
  options.loss = loss == "bce" ? Loss::Bce : Loss::Soft;
  options.temperature = parse_number(args.get("temperature", "0.1"), "temperature");
  if (!(options.temperature > 0)) throw Error("--temperature must be > 0");
  options.calibration = parse_calibration_method(args.get("calibration", "linear"));
  return options;
}

// Refuses options that do not go together, and bad candidate specs, before
// any data is read.
void check_train_arguments(const Arguments& args, bool named) {
  const bool data = args.named.count("data") != 0, log = args.named.count("log") != 0;
  if (!data && !log) throw Error("missing --data or --log (give one or both)");
  if (log && !data && !named) {
    throw Error(
        "--log without --data needs --scorer: a logged call labels only the expert it "
        "called, so no row has every expert's outcome to choose a scorer on");
  }
  // Soft labels are a softmax over the labelled experts: a row with one
  // label has no gradient, so logged calls would teach nothing.
  const bool soft = named ? args.get("loss", "bce") == "soft"
                          : args.named.count("candidates") &&
                                args.required("candidates").find("/soft") != std::string::npos;
  if (log && soft) {
    throw Error(
        "--loss soft learns nothing from --log: a logged call labels one expert, and soft "
        "labels compare experts; use bce");
  }
  if (args.named.count("candidates")) {
    parse_candidates(args.required("candidates"));
    if (named) throw Error("--scorer and --candidates exclude each other");
  }
  if (named && args.named.count("out-of-fold")) {
    throw Error("--out-of-fold writes the predictions of a selection: not with --scorer");
  }
  if (!named && (args.named.count("loss") || args.named.count("temperature"))) {
    throw Error(
        "--loss and --temperature apply to --scorer; a candidate names its loss "
        "(--candidates \"mlp:64/soft\")");
  }
}

// The dataset's prices; an expert with none (experts.json gives none, or a
// log added it) gets prices fitted from the rows' cost_usd, printed.
ExpertRegistry dataset_prices(const RoutingDataset& data) {
  const auto fitted = fit_prices(data, data.train);
  ExpertRegistry out;
  bool told = false;
  for (const auto& spec : data.registry.experts()) {
    ExpertSpec priced = spec;
    const bool unpriced = spec.input_usd_per_mtok == 0 && spec.output_usd_per_mtok == 0;
    for (const auto& f : fitted) {
      if (!unpriced || f.expert != spec.name) continue;
      if (!told) {
        std::fprintf(stderr, "no prices given; fitted from cost_usd (per million tokens):\n");
        told = true;
      }
      priced.input_usd_per_mtok = f.input_usd_per_mtok;
      priced.output_usd_per_mtok = f.output_usd_per_mtok;
      std::fprintf(stderr, "  %-36s in %9.4f  out %9.4f  rmse $%.3g  mean abs error %.1f%%\n",
                   f.expert.c_str(), f.input_usd_per_mtok, f.output_usd_per_mtok, f.rmse_usd,
                   100 * f.relative_error);
    }
    out.add(priced);
  }
  return out;
}

// --scorer: trains the one named, printing each epoch.
std::unique_ptr<TrainableScorer> train_named(const Arguments& args, const TrainingSet& set,
                                             TrainOptions options, int folds, bool terminal) {
  options.on_epoch = [terminal](const EpochProgress& p) {
    std::fprintf(
        stderr, "%sepoch %3d  loss %.4f  validation loss %.4f  routed quality %.4f  %6.1fs%s%s",
        terminal ? "\r" : "", p.epoch, p.train_loss, p.validation_loss, p.validation_quality,
        p.elapsed_seconds, p.improved ? " *" : "  ", terminal ? "" : "\n");
    std::fflush(stderr);
  };
  const CandidateScorer candidate{args.required("scorer"), options.loss};
  std::fprintf(stderr, "training %s on %zu rows, %zu experts, %d thread(s)%s\n",
               candidate.spec.c_str(), set.rows(), set.experts.size(), options.threads,
               folds > 0 ? fmt::format(", calibrated ({}) on {} folds",
                                       calibration_method_name(options.calibration), folds)
                               .c_str()
                         : "");
  auto scorer = train_calibrated(candidate, set, options, folds);
  if (terminal) std::fprintf(stderr, "\n");
  return scorer;
}

// No --scorer: chooses by cross-validation, printing each candidate.
std::unique_ptr<TrainableScorer> train_chosen(const Arguments& args, const RoutingDataset& data,
                                              const ExpertRegistry& prices,
                                              const TrainOptions& options, int folds) {
  SelectionOptions selection;
  if (args.named.count("candidates")) {
    selection.candidates = parse_candidates(args.required("candidates"));
  } else if (args.named.count("log")) {
    // Soft labels learn nothing from logged calls (check_train_arguments),
    // nor does the task scorer, whose rows must carry a task.
    auto& c = selection.candidates;
    c.erase(std::remove_if(c.begin(), c.end(),
                           [](const CandidateScorer& x) {
                             return x.loss == Loss::Soft ||
                                    detail::parse_scorer_spec(x.spec).kind == "task";
                           }),
            c.end());
  }
  selection.folds = folds;
  selection.stacks = parse_whole(args.get("stacks", "1"), "stacks", 0) != 0;
  selection.on_candidate = print_candidate;
  if (args.named.count("out-of-fold")) {
    selection.on_out_of_fold = out_of_fold_writer(args.required("out-of-fold"), data);
  }
  std::fprintf(stderr,
               "choosing a scorer by %d-fold cross-validated AIQ on %zu training rows, "
               "calibrated (%s) on the other folds:\n",
               folds, data.train.size(), calibration_method_name(options.calibration));
  auto scorer = train_best(data, prices, options, selection);
  print_choice(scorer->training().selection);
  return scorer;
}

// --log: the decision log's calls with feedback, as rows with one label.
void add_log(const std::string& path, RoutingDataset& data) {
  std::fprintf(stderr, "reading %s\n", path.c_str());
  const DecisionLogReading reading = read_decision_log(path);
  std::fprintf(stderr,
               "  %zu decisions; %zu calls with feedback used (%zu without feedback, %zu "
               "redacted, %zu to a named expert, %zu failed or failed over)\n",
               reading.decisions, reading.calls.size(), reading.without_feedback, reading.redacted,
               reading.pinned, reading.not_answered);
  if (reading.calls.empty()) {
    throw Error(
        fmt::format("--log: {}: no call with feedback and a logged prompt to learn from", path));
  }
  add_logged_rows(data, reading);
}

// The rows to learn from: --data's training split, --log's calls, or both;
// and where they come from, for the model file.
RoutingDataset training_data(const Arguments& args, std::string& source) {
  RoutingDataset data;
  if (args.named.count("data")) {
    const std::string dir = args.required("data");
    std::fprintf(stderr, "loading %s\n", dir.c_str());
    data = load_routing_dataset(dir);
    source = data.name + "/train.jsonl";
  }
  if (args.named.count("log")) {
    const std::string log = args.required("log");
    const std::size_t known = data.experts.size();
    if (data.name.empty()) data.name = std::filesystem::path(log).filename().string();
    add_log(log, data);
    source = source.empty() ? log : source + " + " + log;
    if (known > 0 && data.experts.size() > known && !args.named.count("scorer")) {
      throw Error(fmt::format(
          "--log: experts not in dataset {}: {}; no row has every expert's outcome to choose "
          "a scorer on: name one with --scorer",
          data.name,
          fmt::join(data.experts.begin() + static_cast<std::ptrdiff_t>(known), data.experts.end(),
                    ", ")));
    }
  }
  return data;
}

}  // namespace

int train(const Arguments& args) {
  args.allow_only({"data", "log", "scorer", "candidates", "out", "seed", "threads", "loss",
                   "temperature", "epochs", "folds", "stacks", "calibration", "out-of-fold"});
  const std::string out = args.required("out");
  const TrainOptions options = parse_train_options(args);
  const bool named = args.named.count("scorer") != 0;
  const int folds = static_cast<int>(parse_whole(args.get("folds", "5"), "folds", named ? 0 : 2));
  if (folds == 1 || folds > 100) throw Error("--folds: expected 0 (no calibration) or 2..100");
  check_train_arguments(args, named);

  std::string source;
  const RoutingDataset data = training_data(args, source);
  const ExpertRegistry prices = dataset_prices(data);
  std::unique_ptr<TrainableScorer> scorer;
  if (named) {
    const TrainingSet set = make_training_set(data.experts, data.train, source);
    scorer = train_named(args, set, options, folds, isatty(fileno(stderr)) != 0);
  } else {
    scorer = train_chosen(args, data, prices, options, folds);
  }
  save_model(*scorer, out, &prices);
  const TrainReport& report = scorer->training().report;
  std::printf(
      "trained %s in %.1fs: %d epochs, kept epoch %d (validation loss %.4f, routed "
      "quality %.4f)%s; wrote %s\n",
      scorer->spec().c_str(), report.seconds, report.epochs_run, report.best_epoch,
      report.validation_loss, report.validation_quality,
      scorer->calibration().empty() ? "" : ", calibrated", out.c_str());
  return 0;
}

}  // namespace cli
TOROUTER_END_NAMESPACE
