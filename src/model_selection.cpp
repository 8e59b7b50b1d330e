// Cross-validated choice and calibration of a scorer; see
// torouter/model_selection.hpp.
#include "torouter/model_selection.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "scorers.hpp"
#include "torouter/abi.hpp"
#include "torouter/cost_model.hpp"
#include "torouter/error.hpp"
#include "torouter/eval.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace {

TrainingSet subset(const TrainingSet& set, const std::vector<std::size_t>& rows, int fold) {
  TrainingSet out;
  out.experts = set.experts;
  const auto n = static_cast<Eigen::Index>(rows.size());
  const auto m = static_cast<Eigen::Index>(set.experts.size());
  out.quality.resize(n, m);
  out.present.resize(n, m);
  out.output_tokens.resize(n, m);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto r = static_cast<Eigen::Index>(rows[i]);
    out.prompts.push_back(set.prompts[rows[i]]);
    if (!set.tasks.empty()) out.tasks.push_back(set.tasks[rows[i]]);
    out.quality.row(static_cast<Eigen::Index>(i)) = set.quality.row(r);
    out.present.row(static_cast<Eigen::Index>(i)) = set.present.row(r);
    out.output_tokens.row(static_cast<Eigen::Index>(i)) = set.output_tokens.row(r);
  }
  out.fingerprint = fmt::format("{}-fold{}", set.fingerprint, fold);
  out.source = set.source;
  return out;
}

// Fold of each row: a seeded shuffle dealt round-robin, so folds differ in
// size by at most one.
std::vector<int> assign_folds(std::size_t rows, int folds, std::uint64_t seed) {
  std::vector<std::size_t> order(rows);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed ^ 0xF01D5ull);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int> fold(rows);
  for (std::size_t i = 0; i < rows; ++i)
    fold[order[i]] = static_cast<int>(i % static_cast<std::size_t>(folds));
  return fold;
}

void check_folds(int folds, std::size_t rows) {
  if (folds < 2 || folds > 100 || static_cast<std::size_t>(folds) > rows) {
    throw Error(fmt::format("cross-validation: folds must be in [2, min(100, rows = {})], got {}",
                            rows, folds));
  }
}

std::vector<std::size_t> complete_row_indices(const TrainingSet& set) {
  std::vector<std::size_t> rows;
  for (Eigen::Index r = 0; r < set.present.rows(); ++r) {
    if (set.present.row(r).minCoeff() > 0) rows.push_back(static_cast<std::size_t>(r));
  }
  return rows;
}

Eigen::MatrixXf rows_of(const Eigen::MatrixXf& m, const std::vector<std::size_t>& rows) {
  Eigen::MatrixXf out(static_cast<Eigen::Index>(rows.size()), m.cols());
  for (std::size_t i = 0; i < rows.size(); ++i)
    out.row(static_cast<Eigen::Index>(i)) = m.row(static_cast<Eigen::Index>(rows[i]));
  return out;
}

// Out-of-fold predictions calibrated so that no row's calibration saw that
// row: each fold's rows go through a calibration fitted on the other folds'
// rows, so the figures judge the calibration as it meets new prompts.
OutOfFold cross_fitted(const OutOfFold& raw, const TrainingSet& set, const std::vector<int>& fold,
                       int folds, CalibrationMethod method) {
  OutOfFold out = raw;
  for (int k = 0; k < folds; ++k) {
    std::vector<std::size_t> fit_rows, held;
    for (std::size_t r = 0; r < fold.size(); ++r) (fold[r] == k ? held : fit_rows).push_back(r);
    const Calibration calibration =
        Calibration::fit(method, rows_of(raw.quality, fit_rows), rows_of(set.quality, fit_rows),
                         rows_of(set.present, fit_rows));
    for (const std::size_t r : held) {
      for (Eigen::Index e = 0; e < raw.quality.cols(); ++e) {
        const auto row = static_cast<Eigen::Index>(r);
        out.quality(row, e) = calibration.apply(static_cast<std::size_t>(e), raw.quality(row, e));
      }
    }
  }
  return out;
}

// The router's figures on `rows` of the training set, judged on `oof`.
EvalReport evaluate_rows(const OutOfFold& oof, const std::vector<std::size_t>& rows,
                         const RoutingDataset& data, const TrainingSet& set,
                         const ExpertRegistry& prices) {
  std::vector<DatasetRow> complete;
  std::vector<std::string_view> prompts;
  Eigen::MatrixXf tokens(static_cast<Eigen::Index>(rows.size()), oof.output_tokens.cols());
  ScoreMatrix quality(static_cast<Eigen::Index>(rows.size()), oof.quality.cols());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    complete.push_back(data.train[rows[i]]);
    prompts.push_back(set.prompts[rows[i]]);
    tokens.row(static_cast<Eigen::Index>(i)) =
        oof.output_tokens.row(static_cast<Eigen::Index>(rows[i]));
    quality.row(static_cast<Eigen::Index>(i)) = oof.quality.row(static_cast<Eigen::Index>(rows[i]));
  }
  const Eigen::MatrixXd truth = quality_matrix(complete);
  const Eigen::MatrixXd predicted = quality.cast<double>();
  return evaluate(set.experts, truth, cost_matrix(data, complete), predicted,
                  predicted_costs(prompts, tokens, set.experts, prices));
}

// Each fold's AIQ on its own rows of `rows`.
std::vector<double> fold_aiqs(const OutOfFold& oof, const std::vector<std::size_t>& rows,
                              const std::vector<int>& fold, int folds, const RoutingDataset& data,
                              const TrainingSet& set, const ExpertRegistry& prices) {
  std::vector<double> aiqs;
  for (int k = 0; k < folds; ++k) {
    std::vector<std::size_t> in_fold;
    for (const std::size_t r : rows) {
      if (fold[r] == k) in_fold.push_back(r);
    }
    aiqs.push_back(in_fold.empty() ? std::nan("")
                                   : evaluate_rows(oof, in_fold, data, set, prices).router->aiq);
  }
  return aiqs;
}

// The top pick of each of `rows` in `calibrated` (the expert of highest
// quality, ties to the lower column, as at lambda = 0 but for a tie in
// cost): its calibrated and its true quality, one column each.
struct TopPicks {
  Eigen::MatrixXf predicted, truth;
};

TopPicks top_picks(const Eigen::MatrixXf& calibrated, const TrainingSet& set,
                   const std::vector<std::size_t>& rows) {
  const auto n = static_cast<Eigen::Index>(rows.size());
  TopPicks picks{Eigen::MatrixXf(n, 1), Eigen::MatrixXf(n, 1)};
  for (Eigen::Index i = 0; i < n; ++i) {
    const auto r = static_cast<Eigen::Index>(rows[static_cast<std::size_t>(i)]);
    Eigen::Index top = 0;
    calibrated.row(r).maxCoeff(&top);
    picks.predicted(i, 0) = calibrated(r, top);
    picks.truth(i, 0) = set.quality(r, top);
  }
  return picks;
}

// The pick calibration (TrainableScorer::set_pick_calibration) of top picks
// made on held-out rows; isotonic, as docs/ARCHITECTURE.md says why.
Calibration fit_pick_calibration(const TopPicks& picks) {
  if (picks.predicted.rows() == 0) return Calibration();
  const Eigen::MatrixXf present = Eigen::MatrixXf::Ones(picks.predicted.rows(), 1);
  return Calibration::fit(CalibrationMethod::Isotonic, picks.predicted, picks.truth, present);
}

// ECE of the top picks of the complete rows, as they are (`plain`) and
// through a pick calibration (`mapped`), each fold's picks through a map
// fitted on the other folds' picks.
struct PickEce {
  double plain = 0.0, mapped = 0.0;
  /// Whether the map is worth keeping: it must lower the held-out ECE. It
  /// does not always (routerbench3's stacks), and a map fitted on few
  /// distinct predictions only adds noise.
  bool map_helps() const { return mapped < plain; }
  double best() const { return map_helps() ? mapped : plain; }
};

PickEce cross_fitted_pick_ece(const Eigen::MatrixXf& calibrated, const TrainingSet& set,
                              const std::vector<std::size_t>& rows, const std::vector<int>& fold,
                              int folds) {
  const TopPicks picks = top_picks(calibrated, set, rows);
  const Eigen::VectorXd truth = picks.truth.col(0).cast<double>();
  Eigen::VectorXd expected(picks.predicted.rows());
  for (int k = 0; k < folds; ++k) {
    std::vector<std::size_t> fit, held;
    for (std::size_t i = 0; i < rows.size(); ++i) (fold[rows[i]] == k ? held : fit).push_back(i);
    const Calibration map =
        fit_pick_calibration({rows_of(picks.predicted, fit), rows_of(picks.truth, fit)});
    for (const std::size_t i : held) {
      const float p = picks.predicted(static_cast<Eigen::Index>(i), 0);
      expected(static_cast<Eigen::Index>(i)) = map.empty() ? p : map.apply(0, p);
    }
  }
  return {
      expected_calibration_error(reliability_bins(picks.predicted.col(0).cast<double>(), truth)),
      expected_calibration_error(reliability_bins(expected, truth))};
}

// The candidate's figures on the complete training rows from its
// cross-fitted calibrated out-of-fold predictions; the ECE is of the top
// picks' expected quality, as a router reports it (through the pick
// calibration where that helps).
CandidateFigures judge(const CandidateScorer& candidate, const OutOfFold& oof,
                       const RoutingDataset& data, const TrainingSet& set,
                       const ExpertRegistry& prices, const std::vector<int>& fold, int folds) {
  const std::vector<std::size_t> rows = complete_row_indices(set);
  const EvalReport report = evaluate_rows(oof, rows, data, set, prices);
  CandidateFigures figures;
  figures.name = candidate.name();
  figures.aiq = report.router->aiq;
  figures.fold_aiq = fold_aiqs(oof, rows, fold, folds, data, set, prices);
  figures.gap_won = report.router->gap_won.value_or(std::nan(""));
  figures.ece = cross_fitted_pick_ece(oof.quality, set, rows, fold, folds).best();
  return figures;
}

// Every candidate tried so far, with what a stack of them needs.
struct Trials {
  std::vector<CandidateScorer> candidates;
  std::vector<OutOfFold> out_of_fold;
  std::vector<OutOfFold> cross_fitted;
  std::vector<Calibration> calibrations;
  /// For a stack, the indices of its members; empty for a single scorer.
  std::vector<std::vector<std::size_t>> members;
  ModelSelection record;

  void add(CandidateScorer candidate, OutOfFold oof, OutOfFold calibrated_oof,
           Calibration calibration, CandidateFigures figures, const SelectionOptions& selection,
           const std::vector<int>& fold, std::vector<std::size_t> of = {}) {
    if (selection.on_candidate) selection.on_candidate(figures);
    if (selection.on_out_of_fold) selection.on_out_of_fold(figures, calibrated_oof.quality, fold);
    candidates.push_back(std::move(candidate));
    out_of_fold.push_back(std::move(oof));
    cross_fitted.push_back(std::move(calibrated_oof));
    calibrations.push_back(std::move(calibration));
    members.push_back(std::move(of));
    record.candidates.push_back(std::move(figures));
  }
};

OutOfFold stack_out_of_fold(const Trials& trials, const std::vector<std::size_t>& members) {
  std::vector<const OutOfFold*> predictions;
  std::vector<const Calibration*> calibrations;
  for (const std::size_t m : members) {
    predictions.push_back(&trials.out_of_fold[m]);
    calibrations.push_back(&trials.calibrations[m]);
  }
  return detail::mean_of_calibrated(predictions, calibrations);
}

// Stacks of the best two, three, ... candidates by cross-validated AIQ,
// judged on the same out-of-fold predictions (no further training).
void try_stacks(Trials& trials, const RoutingDataset& data, const TrainingSet& set,
                const ExpertRegistry& prices, const SelectionOptions& selection,
                const std::vector<int>& fold, int folds, CalibrationMethod method) {
  std::vector<std::size_t> order(trials.candidates.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return trials.record.candidates[a].aiq > trials.record.candidates[b].aiq;
  });
  for (std::size_t k = 2; k <= order.size(); ++k) {
    std::vector<std::size_t> members(order.begin(), order.begin() + static_cast<long>(k));
    std::vector<CandidateScorer> specs;
    double seconds = 0;
    for (const std::size_t m : members) {
      specs.push_back(trials.candidates[m]);
      seconds += trials.record.candidates[m].seconds;
    }
    const CandidateScorer stack{detail::stack_spec(specs), Loss::Bce};
    OutOfFold oof = stack_out_of_fold(trials, members);
    Calibration calibration = Calibration::fit(method, oof.quality, set.quality, set.present);
    // Judged on the mean of the members' cross-fitted predictions, itself
    // cross-fitted, so neither calibration saw the rows it is judged on.
    std::vector<const OutOfFold*> member_predictions;
    for (const std::size_t m : members) member_predictions.push_back(&trials.cross_fitted[m]);
    OutOfFold judged =
        cross_fitted(detail::mean_of_calibrated(member_predictions, {}), set, fold, folds, method);
    CandidateFigures figures = judge(stack, judged, data, set, prices, fold, folds);
    figures.seconds = seconds;
    trials.add(stack, std::move(oof), std::move(judged), std::move(calibration), std::move(figures),
               selection, fold, std::move(members));
  }
}

}  // namespace

namespace detail {

Calibration pick_calibration_if_it_helps(const Eigen::MatrixXf& calibrated, const TrainingSet& set,
                                         const std::vector<int>& fold, int folds) {
  const std::vector<std::size_t> rows = complete_row_indices(set);
  if (rows.empty() || !cross_fitted_pick_ece(calibrated, set, rows, fold, folds).map_helps())
    return Calibration();
  return fit_pick_calibration(top_picks(calibrated, set, rows));
}

double standard_error(const std::vector<double>& values) {
  std::vector<double> known;
  for (const double v : values) {
    if (std::isfinite(v)) known.push_back(v);
  }
  if (known.size() < 2) return 0.0;
  const double n = static_cast<double>(known.size());
  const double mean = std::accumulate(known.begin(), known.end(), 0.0) / n;
  double squares = 0;
  for (const double v : known) squares += (v - mean) * (v - mean);
  return std::sqrt(squares / (n - 1) / n);
}

PairedGap paired_gap(const CandidateFigures& best, const CandidateFigures& other) {
  PairedGap gap;
  std::vector<double> below;
  if (best.fold_aiq.size() == other.fold_aiq.size()) {
    for (std::size_t k = 0; k < best.fold_aiq.size(); ++k) {
      const double d = best.fold_aiq[k] - other.fold_aiq[k];
      if (std::isfinite(d)) below.push_back(d);
    }
  }
  if (below.size() < 2) return gap;
  gap.known = true;
  gap.mean = std::accumulate(below.begin(), below.end(), 0.0) / static_cast<double>(below.size());
  gap.standard_error = standard_error(below);
  return gap;
}

std::size_t one_standard_error_choice(const std::vector<CandidateFigures>& candidates,
                                      const std::vector<std::vector<std::size_t>>& members) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < candidates.size(); ++i) {
    if (candidates[i].aiq > candidates[best].aiq) best = i;
  }
  const auto within_one_error = [&](std::size_t i) {
    if (i == best) return true;
    const PairedGap gap = paired_gap(candidates[best], candidates[i]);
    return gap.known && gap.mean <= gap.standard_error;
  };
  const auto size = [&](std::size_t i) { return std::max<std::size_t>(1, members[i].size()); };
  std::size_t chosen = best;
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    if (!within_one_error(i)) continue;
    if (size(i) < size(chosen) ||
        (size(i) == size(chosen) && candidates[i].aiq > candidates[chosen].aiq))
      chosen = i;
  }
  return chosen;
}

OutOfFold mean_of_calibrated(const std::vector<const OutOfFold*>& members,
                             const std::vector<const Calibration*>& calibrations) {
  const OutOfFold& first = *members[0];
  OutOfFold out{Eigen::MatrixXf::Zero(first.quality.rows(), first.quality.cols()),
                Eigen::MatrixXf::Zero(first.quality.rows(), first.quality.cols())};
  Eigen::MatrixXf counted = Eigen::MatrixXf::Zero(first.quality.rows(), first.quality.cols());
  for (std::size_t m = 0; m < members.size(); ++m) {
    ScoreMatrix q = members[m]->quality;
    if (!calibrations.empty()) calibrations[m]->apply(q);
    out.quality += q / static_cast<float>(members.size());
    const Eigen::MatrixXf& t = members[m]->output_tokens;
    const Eigen::MatrixXf known = t.array().isFinite().cast<float>();
    out.output_tokens += known.cwiseProduct(t.array().isFinite().select(t, 0.0f).matrix());
    counted += known;
  }
  out.output_tokens = (counted.array() > 0)
                          .select(out.output_tokens.cwiseQuotient(counted),
                                  std::numeric_limits<float>::quiet_NaN());
  return out;
}

}  // namespace detail

std::string CandidateScorer::name() const { return detail::member_text(*this); }

CandidateScorer parse_candidate(std::string_view text) {
  CandidateScorer candidate{std::string(text), Loss::Bce};
  const std::size_t slash = text.rfind('/');
  if (slash != std::string_view::npos) {
    const std::string_view loss = text.substr(slash + 1);
    if (loss != "bce" && loss != "soft") {
      throw Error(fmt::format("candidate \"{}\": the loss after '/' must be bce or soft", text));
    }
    candidate.loss = loss == "soft" ? Loss::Soft : Loss::Bce;
    candidate.spec = std::string(text.substr(0, slash));
  }
  if (candidate.spec.empty()) throw Error(fmt::format("candidate \"{}\": no scorer spec", text));
  return candidate;
}

std::vector<CandidateScorer> default_candidates() {
  // kNN in its dense mode: its exact sparse search takes about 0.5 ms a
  // route, ten times the others; name it in `candidates` to try it.
  return {{"gbt", Loss::Bce},
          {"mlp:64,buckets=16384", Loss::Soft},
          {"mlp:64,buckets=16384", Loss::Bce},
          {"knn:40,dims=32", Loss::Bce},
          {"linear", Loss::Bce},
          {"task", Loss::Bce}};
}

namespace {

// Whether every fold's training rows (the rows of the other folds) carry
// two tasks or more: a task whose rows all fall in one fold is missing from
// that fold's training rows.
bool each_fold_trains_on_two_tasks(const TrainingSet& set, const std::vector<int>& fold,
                                   int folds) {
  for (int k = 0; k < folds; ++k) {
    const std::string* first = nullptr;
    bool two = false;
    for (std::size_t r = 0; r < set.rows() && !two; ++r) {
      if (fold[r] == k || r >= set.tasks.size() || set.tasks[r].empty()) continue;
      if (first == nullptr) {
        first = &set.tasks[r];
      } else {
        two = set.tasks[r] != *first;
      }
    }
    if (!two) return false;
  }
  return true;
}

// The candidates `set` can train in every fold: those that learn from
// tasks only where each fold's training rows carry two tasks or more.
std::vector<CandidateScorer> trainable_candidates(const std::vector<CandidateScorer>& candidates,
                                                  const TrainingSet& set,
                                                  const std::vector<int>& fold, int folds) {
  const bool has_tasks = each_fold_trains_on_two_tasks(set, fold, folds);
  std::vector<CandidateScorer> out;
  for (const CandidateScorer& candidate : candidates) {
    if (has_tasks || detail::parse_scorer_spec(candidate.spec).kind != "task") {
      out.push_back(candidate);
    }
  }
  if (out.empty()) {
    throw Error(
        "model selection: every candidate needs task labels, and the training rows of some "
        "cross-validation fold carry fewer than two tasks");
  }
  return out;
}

}  // namespace

OutOfFold cross_validate(const CandidateScorer& candidate, const TrainingSet& set,
                         const TrainOptions& options, int folds) {
  detail::check_train_options(options);
  check_folds(folds, set.rows());
  const std::vector<int> fold = assign_folds(set.rows(), folds, options.seed);
  const auto n = static_cast<Eigen::Index>(set.rows());
  const auto m = static_cast<Eigen::Index>(set.experts.size());
  OutOfFold out{Eigen::MatrixXf::Zero(n, m), Eigen::MatrixXf::Zero(n, m)};
  TrainOptions quiet = options;
  quiet.on_epoch = nullptr;
  for (int k = 0; k < folds; ++k) {
    std::vector<std::size_t> train, held;
    for (std::size_t r = 0; r < set.rows(); ++r) (fold[r] == k ? held : train).push_back(r);
    auto scorer = make_scorer(candidate.spec);
    quiet.loss = candidate.loss;
    try {
      scorer->train(subset(set, train, k), quiet);
    } catch (const Error& e) {
      throw Error(fmt::format("cross-validation, fold {} of {} (trained on {} of {} rows): {}",
                              k + 1, folds, train.size(), set.rows(), e.what()));
    }
    // Raw predictions: a stack calibrates itself while training, and the
    // calibration fitted on these is what applies to the raw output.
    scorer->set_calibration(Calibration());
    std::vector<std::string> prompts;
    for (const std::size_t r : held) prompts.push_back(set.prompts[r]);
    const ScoreBatch scores = scorer->score_all(prompts);
    for (std::size_t i = 0; i < held.size(); ++i) {
      const auto r = static_cast<Eigen::Index>(held[i]);
      out.quality.row(r) = scores.quality.row(static_cast<Eigen::Index>(i));
      out.output_tokens.row(r) = scores.output_tokens.row(static_cast<Eigen::Index>(i));
    }
  }
  return out;
}

Eigen::MatrixXd predicted_costs(const std::vector<std::string_view>& prompts,
                                const Eigen::MatrixXf& output_tokens,
                                const std::vector<std::string>& experts,
                                const ExpertRegistry& prices) {
  const CostModel cost_model;  // the router's default, so the two agree
  const auto n = static_cast<Eigen::Index>(prompts.size());
  const auto m = static_cast<Eigen::Index>(experts.size());
  Eigen::MatrixXd cost(n, m);
  for (Eigen::Index e = 0; e < m; ++e) {
    const ExpertSpec* spec = prices.find(experts[static_cast<std::size_t>(e)]);
    if (spec == nullptr) {
      throw Error(fmt::format("no prices for expert \"{}\"", experts[static_cast<std::size_t>(e)]));
    }
    for (Eigen::Index r = 0; r < n; ++r) {
      const auto input = static_cast<double>(estimate_tokens(prompts[static_cast<std::size_t>(r)]));
      cost(r, e) = cost_model.cost_usd(*spec, input,
                                       cost_model.output_tokens_or_default(output_tokens(r, e)));
    }
  }
  return cost;
}

std::unique_ptr<TrainableScorer> train_calibrated(const CandidateScorer& candidate,
                                                  const TrainingSet& set,
                                                  const TrainOptions& options, int folds) {
  Calibration calibration, pick_calibration;
  if (folds > 0) {
    const OutOfFold oof = cross_validate(candidate, set, options, folds);
    calibration = Calibration::fit(options.calibration, oof.quality, set.quality, set.present);
    const std::vector<int> fold = assign_folds(set.rows(), folds, options.seed);
    const OutOfFold held_out = cross_fitted(oof, set, fold, folds, options.calibration);
    pick_calibration = detail::pick_calibration_if_it_helps(held_out.quality, set, fold, folds);
  }
  auto scorer = make_scorer(candidate.spec);
  TrainOptions final_options = options;
  final_options.loss = candidate.loss;
  scorer->train(set, final_options);
  if (folds > 0) {
    scorer->set_calibration(std::move(calibration));
    scorer->set_pick_calibration(std::move(pick_calibration));
  }
  return scorer;
}

std::unique_ptr<TrainableScorer> train_best(const RoutingDataset& data,
                                            const ExpertRegistry& prices,
                                            const TrainOptions& options,
                                            const SelectionOptions& selection) {
  if (selection.candidates.empty()) throw Error("model selection: no candidate scorer");
  detail::check_train_options(options);
  const TrainingSet set = make_training_set(data.experts, data.train, data.name + "/train.jsonl");
  check_folds(selection.folds, set.rows());
  if (complete_row_indices(set).empty()) {
    throw Error(fmt::format("{}: no training row has every expert's outcome", data.name));
  }
  Trials trials;
  trials.record.folds = selection.folds;
  const std::vector<int> fold = assign_folds(set.rows(), selection.folds, options.seed);
  for (const CandidateScorer& candidate :
       trainable_candidates(selection.candidates, set, fold, selection.folds)) {
    const auto start = std::chrono::steady_clock::now();
    OutOfFold oof = cross_validate(candidate, set, options, selection.folds);
    Calibration calibration =
        Calibration::fit(options.calibration, oof.quality, set.quality, set.present);
    OutOfFold judged = cross_fitted(oof, set, fold, selection.folds, options.calibration);
    CandidateFigures figures = judge(candidate, judged, data, set, prices, fold, selection.folds);
    figures.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    trials.add(candidate, std::move(oof), std::move(judged), std::move(calibration),
               std::move(figures), selection, fold);
  }
  if (selection.stacks)
    try_stacks(trials, data, set, prices, selection, fold, selection.folds, options.calibration);
  ModelSelection& record = trials.record;
  record.chosen = detail::one_standard_error_choice(record.candidates, trials.members);
  const CandidateScorer& winner = trials.candidates[record.chosen];
  auto scorer = make_scorer(winner.spec);
  if (!trials.members[record.chosen].empty()) {
    std::vector<Calibration> member_calibrations;
    for (const std::size_t m : trials.members[record.chosen]) {
      member_calibrations.push_back(trials.calibrations[m]);
    }
    detail::set_member_calibrations(*scorer, std::move(member_calibrations));
  }
  TrainOptions final_options = options;
  final_options.loss = winner.loss;
  scorer->train(set, final_options);
  scorer->set_calibration(std::move(trials.calibrations[record.chosen]));
  scorer->set_pick_calibration(detail::pick_calibration_if_it_helps(
      trials.cross_fitted[record.chosen].quality, set, fold, selection.folds));
  scorer->set_selection(std::move(record));
  return scorer;
}

TOROUTER_END_NAMESPACE
