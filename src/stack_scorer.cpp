// The stack scorer: the mean of several trained scorers' calibrated quality,
// calibrated once more. Scorers that err differently (trees on a dense
// projection, neighbours in the sparse space, a network) average out part of
// each other's error; each member is calibrated first so every one speaks in
// expected quality and none dominates by scale (a soft-label network's
// outputs sum to one over the experts).
//
// Spec: "stack:" then members joined by '+', each a scorer spec with an
// optional "/bce" or "/soft" loss (default bce):
//   stack:gbt+knn:40+mlp:64,buckets=16384/soft
// Output tokens are the mean of the members' predictions where they make one.
//
// Members that read the prompt through the same featurizer share one
// featurization of it, and those that also read the same dense projection
// (the default's kNN and gbt fit equal ones) share one projection.
//
// Training trains every member on every row. Each member's calibration
// comes from its out-of-fold predictions: `train_best` hands over those it
// already has (`set_member_calibrations`); otherwise `fit` cross-validates
// each member itself (5 folds) and also fits the stack's own calibration.
//
// Model file ("stack" kind): field stack.members (the member specs with
// their losses); member i's whole model (its own fields, tensors and
// calibration) in section "member<i>." (ModelWriter::add_section).
#include <fmt/format.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>

#include "scorers.hpp"
#include "sparse_projection.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"
#include "torouter/model_selection.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

constexpr int kMemberFolds = 5;

using RowMajorMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Each set of members a stack holds (none, before training or loading; the
// ones trained or loaded) gets its own number, so a workspace made for
// another set is told apart: one made before the stack was first trained
// or loaded holds no member workspaces, and one made before it was trained
// again holds workspaces sized for the old members. Numbered across all
// stacks, so a workspace another stack made is told apart too.
std::atomic<std::uint64_t> next_members_stamp{1};

struct StackWorkspace : ScorerWorkspace {
  /// The `members_stamp_` of the members `members` were made for.
  std::uint64_t members_stamp = 0;
  std::vector<std::unique_ptr<ScorerWorkspace>> members;
  /// Each prompt's features, when the members share a featurizer.
  std::vector<SparseFeatures> features;
  /// Per projection that members share, each prompt's coordinates (at
  /// least as many rows as prompts).
  std::vector<RowMajorMatrix> projected;
  ScoreBatch batch;
  RowMajorMatrix token_count;
};

class StackScorer : public TrainableScorer {
 public:
  explicit StackScorer(std::vector<CandidateScorer> members) : candidates_(std::move(members)) {
    if (candidates_.size() < 2) throw Error("stack: at least two members expected");
    for (auto& c : candidates_) {
      const auto member = make_scorer(c.spec);
      if (member->kind() == "stack") throw Error("stack: a member cannot be a stack");
      // Each member writes its spec in canonical form, which loading
      // compares with this one.
      c.spec = member->spec();
    }
  }

  std::string_view kind() const override { return "stack"; }
  std::string spec() const override { return stack_spec(candidates_); }

  /// Calibrations of the members from out-of-fold predictions made elsewhere.
  void set_member_calibrations(std::vector<Calibration> calibrations) {
    given_calibrations_ = std::move(calibrations);
  }

  std::unique_ptr<ScorerWorkspace> make_workspace() const override {
    auto w = std::make_unique<StackWorkspace>();
    renew_member_workspaces(*w);
    w->projected.resize(shared_projections_.size());
    return w;
  }

  void score_uncalibrated(const std::string_view* prompts, std::size_t count, ScoreBatch& out,
                          ScorerWorkspace* workspace) const override {
    std::unique_ptr<ScorerWorkspace> local;
    auto* w = &workspace_for_call<StackWorkspace>(*this, workspace, local);
    if (w->members_stamp != members_stamp_) renew_member_workspaces(*w);
    if (shared_featurizer_) {
      // Grows only: a warm workspace featurizes into vectors it already has.
      if (w->features.size() < count) w->features.resize(count);
      for (std::size_t i = 0; i < count; ++i)
        shared_featurizer_->featurize(prompts[i], w->features[i]);
      project_shared(count, *w);
    }
    out.resize(count, expert_names().size());
    out.quality.setZero();
    out.output_tokens.setZero();
    w->token_count.setZero(out.quality.rows(), out.quality.cols());
    for (std::size_t m = 0; m < members_.size(); ++m) {
      score_member(m, prompts, count, *w);
      add_member(w->batch, out, *w);
    }
    for (Eigen::Index i = 0; i < out.output_tokens.size(); ++i) {
      const float n = w->token_count.data()[i];
      out.output_tokens.data()[i] =
          n > 0 ? out.output_tokens.data()[i] / n : std::numeric_limits<float>::quiet_NaN();
    }
  }

 protected:
  TrainReport fit(const TrainingSet& set, const TrainOptions& options) override {
    const bool own_calibration = given_calibrations_.size() != candidates_.size();
    if (own_calibration) given_calibrations_.clear();
    std::vector<OutOfFold> folds;
    forget_members();
    TrainReport report;
    for (std::size_t m = 0; m < candidates_.size(); ++m) {
      if (own_calibration) {
        folds.push_back(cross_validate(candidates_[m], set, options, kMemberFolds));
        given_calibrations_.push_back(
            Calibration::fit(options.calibration, folds.back().quality, set.quality, set.present));
      }
      Calibration calibration = given_calibrations_[m];
      auto member = make_scorer(candidates_[m].spec);
      TrainOptions member_options = options;
      member_options.loss = candidates_[m].loss;
      const TrainReport r = member->train(set, member_options);
      member->set_calibration(std::move(calibration));
      report.train_rows = r.train_rows;
      report.validation_rows = r.validation_rows;
      report.validation_quality += r.validation_quality / static_cast<double>(candidates_.size());
      members_.push_back(std::move(member));
    }
    if (own_calibration) set_calibration(calibrate_mean(folds, set, options.calibration));
    given_calibrations_.clear();
    members_changed();
    return report;
  }

  void write_model(ModelWriter& out) const override {
    std::vector<std::string> names;
    for (const auto& c : candidates_) names.push_back(member_text(c));
    out.set("stack.members", std::move(names));
    for (std::size_t m = 0; m < members_.size(); ++m) {
      ModelWriter part(std::string(members_[m]->kind()));
      members_[m]->save(part);
      out.add_section(fmt::format("member{}.", m), part);
    }
  }

  void read_model(const ModelReader& in) override {
    const auto& names = in.texts("stack.members");
    if (names.size() != candidates_.size()) {
      throw Error(in.where() + "field \"stack.members\": does not match the spec");
    }
    forget_members();
    for (std::size_t m = 0; m < names.size(); ++m) {
      const ModelReader part = in.section(fmt::format("member{}.", m));
      if (names[m] != member_text(candidates_[m])) {
        throw Error(
            fmt::format("{}field \"stack.members\": member {} is \"{}\", the spec says \"{}\"",
                        in.where(), m, names[m], member_text(candidates_[m])));
      }
      if (part.text("scorer.spec") != candidates_[m].spec) {
        throw Error(fmt::format("{}section member{}.: scorer \"{}\" is not the spec's \"{}\"",
                                in.where(), m, part.text("scorer.spec"), candidates_[m].spec));
      }
      auto member = make_scorer(candidates_[m].spec);
      member->load(part);
      if (member->expert_names() != expert_names()) {
        throw Error(
            fmt::format("{}member {} predicts other experts than the stack", in.where(), m));
      }
      members_.push_back(std::move(member));
    }
    members_changed();
  }

 private:
  // Member m's calibrated scores into w.batch: from the features already
  // made when the members share a featurizer, else from the prompts.
  void score_member(std::size_t m, const std::string_view* prompts, std::size_t count,
                    StackWorkspace& w) const {
    const TrainableScorer& member = *members_[m];
    if (shared_featurizer_) {
      const FeaturizedScorer& featurized = *featurized_members_[m];
      const int shared = projection_of_member_[m];
      if (shared >= 0) {
        featurized.score_projected(w.features.data(), w.projected[shared].data(), count, w.batch,
                                   w.members[m].get());
      } else {
        featurized.score_featurized(w.features.data(), count, w.batch, w.members[m].get());
      }
      member.calibration().apply(w.batch.quality);
    } else {
      member.score(prompts, count, w.batch, w.members[m].get());
    }
  }

  // Adds one member's share of quality to `out`, and its output tokens
  // where it predicts them.
  void add_member(const ScoreBatch& batch, ScoreBatch& out, StackWorkspace& w) const {
    out.quality += batch.quality / static_cast<float>(members_.size());
    for (Eigen::Index i = 0; i < out.output_tokens.size(); ++i) {
      const float t = batch.output_tokens.data()[i];
      if (!std::isfinite(t)) continue;
      out.output_tokens.data()[i] += t;
      w.token_count.data()[i] += 1.0f;
    }
  }

  // Before training or loading members: should that throw, the stack is
  // left with none, and workspaces made for the old ones are renewed.
  void forget_members() {
    members_.clear();
    shared_featurizer_.reset();
    featurized_members_.clear();
    shared_projections_.clear();  // they point into the members
    projection_of_member_.clear();
    members_stamp_ = next_members_stamp.fetch_add(1);
  }

  void members_changed() {
    share_featurizer();
    members_stamp_ = next_members_stamp.fetch_add(1);
  }

  void renew_member_workspaces(StackWorkspace& w) const {
    w.members.clear();
    for (const auto& m : members_) w.members.push_back(m->make_workspace());
    w.members_stamp = members_stamp_;
  }

  // One featurizer for all members when each reads the prompt only through
  // a featurizer and all have the same settings (the default stack's do).
  void share_featurizer() {
    shared_featurizer_.reset();
    shared_projections_.clear();
    featurized_members_.clear();
    projection_of_member_.assign(members_.size(), -1);
    const FeaturizerOptions* first = nullptr;
    for (const auto& member : members_) {
      const auto* f = dynamic_cast<const FeaturizedScorer*>(member.get());
      if (f == nullptr) return;
      if (first != nullptr && !same_featurizer(*first, f->featurizer_options())) return;
      first = &f->featurizer_options();
      featurized_members_.push_back(f);
    }
    if (first != nullptr) shared_featurizer_.emplace(*first);
    share_projections();
  }

  // Members whose projections are equal (see FeaturizedScorer::projection)
  // get each prompt's coordinates made once for them all; a projection
  // that one member alone reads is left to it.
  // share_featurizer has cleared what an earlier call shared.
  void share_projections() {
    if (!shared_featurizer_) return;
    const auto projection_of = [&](std::size_t m) { return featurized_members_[m]->projection(); };
    for (std::size_t m = 0; m < members_.size(); ++m) {
      const SparseProjection* p = projection_of(m);
      if (p == nullptr || projection_of_member_[m] >= 0) continue;
      std::vector<std::size_t> readers{m};
      for (std::size_t other = m + 1; other < members_.size(); ++other) {
        const SparseProjection* q = projection_of(other);
        if (q != nullptr && projection_of_member_[other] < 0 && *q == *p) readers.push_back(other);
      }
      if (readers.size() < 2) continue;
      for (const std::size_t r : readers) {
        projection_of_member_[r] = static_cast<int>(shared_projections_.size());
      }
      shared_projections_.push_back(p);
    }
  }

  // Each shared projection of the `count` featurized prompts in `w`.
  void project_shared(std::size_t count, StackWorkspace& w) const {
    // A workspace made before the stack was trained or loaded again may
    // lack some, or hold rows of another width.
    if (w.projected.size() < shared_projections_.size()) {
      w.projected.resize(shared_projections_.size());
    }
    for (std::size_t g = 0; g < shared_projections_.size(); ++g) {
      const SparseProjection& projection = *shared_projections_[g];
      RowMajorMatrix& out = w.projected[g];
      // Grows only: a warm workspace projects into rows it already has.
      if (out.rows() < static_cast<Eigen::Index>(count) || out.cols() != projection.dims()) {
        out.resize(static_cast<Eigen::Index>(count), projection.dims());
      }
      for (std::size_t i = 0; i < count; ++i) {
        projection.project(w.features[i], out.row(static_cast<Eigen::Index>(i)).data());
      }
    }
  }

  // The stack's own calibration: of the mean of the members' calibrated
  // out-of-fold predictions.
  Calibration calibrate_mean(const std::vector<OutOfFold>& folds, const TrainingSet& set,
                             CalibrationMethod method) const {
    // given_calibrations_ holds the members' calibrations fitted on `folds`.
    std::vector<const OutOfFold*> predictions;
    std::vector<const Calibration*> calibrations;
    for (std::size_t m = 0; m < folds.size(); ++m) {
      predictions.push_back(&folds[m]);
      calibrations.push_back(&given_calibrations_[m]);
    }
    const ScoreMatrix mean = mean_of_calibrated(predictions, calibrations).quality;
    return Calibration::fit(method, mean, set.quality, set.present);
  }

  std::vector<CandidateScorer> candidates_;
  std::vector<std::unique_ptr<TrainableScorer>> members_;
  std::vector<Calibration> given_calibrations_;
  std::optional<Featurizer> shared_featurizer_;
  /// With a shared featurizer, each member as a FeaturizedScorer (looked up
  /// once here, not on every route).
  std::vector<const FeaturizedScorer*> featurized_members_;
  /// The projections two or more members read, and which of them member m
  /// reads (-1: none of them).
  std::vector<const SparseProjection*> shared_projections_;
  std::vector<int> projection_of_member_;
  std::uint64_t members_stamp_ = next_members_stamp.fetch_add(1);
};

}  // namespace

std::string member_text(const CandidateScorer& c) {
  return c.loss == Loss::Bce ? c.spec : c.spec + "/" + std::string(to_string(c.loss));
}

std::string stack_spec(const std::vector<CandidateScorer>& members) {
  std::string s = "stack:";
  for (std::size_t m = 0; m < members.size(); ++m) s += (m ? "+" : "") + member_text(members[m]);
  return s;
}

std::unique_ptr<TrainableScorer> make_stack_scorer(std::string_view text) {
  std::vector<CandidateScorer> members;
  std::string_view rest = text.substr(text.find(':') + 1);
  while (true) {
    const std::size_t plus = rest.find('+');
    members.push_back(parse_candidate(rest.substr(0, plus)));
    if (plus == std::string_view::npos) break;
    rest = rest.substr(plus + 1);
  }
  return std::make_unique<StackScorer>(std::move(members));
}

void set_member_calibrations(TrainableScorer& stack, std::vector<Calibration> calibrations) {
  dynamic_cast<StackScorer&>(stack).set_member_calibrations(std::move(calibrations));
}

}  // namespace detail
TOROUTER_END_NAMESPACE
