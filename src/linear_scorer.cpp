// The linear scorer: ridge regression per expert over the prompt's TF-IDF,
// the linear router of issue 15's peers (scikit-learn's RidgeCV on TF-IDF of
// word and character n-grams) done on the featurizer's hashed buckets.
//
//   x        = TF-IDF of the hashed features, scaled as SparseProjection does
//   quality  = clamp(b_e + x . w_e + d . v_e, 0, 1)      d: numeric features
//   tokens   = max(0, expm1(b'_e + x . w'_e + d . v'_e))   where the data has lengths
//
// Routing is one pass over the prompt's features: each feature adds its
// bucket's row of weights (one per expert), as the projection's embedding
// bag does, so a route costs about what the projection of the gbt costs.
//
// Training minimises, per expert, the squared error over the rows with an
// outcome plus alpha * (|w|^2 + |v|^2) (the intercept is not penalised), by
// conjugate gradients on the normal equations, all experts at once (one
// pass over the sparse rows per iteration serves every column), with a
// Jacobi preconditioner. With `alpha=auto`, each expert's alpha is chosen
// from kAlphaPath by the squared error on TrainOptions::validation_fraction
// of the rows, the path solved from the largest alpha down, each solution
// the next one's start; the chosen alphas are then fitted on every row (an
// expert without held-out outcomes, or a fit with none held out, keeps 10).
// The solver is hand-written: Eigen's ConjugateGradient takes one
// right-hand side over an explicit matrix, a pass over the data per expert.
//
// The task scorer (kind "task") is the same model on another target: it
// learns which of the training split's tasks (DatasetRow::task) a prompt
// belongs to, one ridge column per task on the one-hot labels, and predicts
// the task's mean quality of each expert:
//
//   s_t      = b_t + x . w_t + d . v_t                 one score per task
//   p        = softmax(s / temperature)
//   quality  = sum_t p_t * (the expert's mean quality over task t's rows)
//
// The temperature is the one of kTemperatures whose probabilities give the
// validation rows' true tasks the least log loss (the head fitted without
// those rows); 0.1 without validation rows. The mixture, not the most
// likely task's means alone, lets a prompt between two tasks weigh both:
// it routed better by cross-validated AIQ (llmrouter14's training split:
// 0.6534 against 0.6512 for a build that took the most likely task's means).
//
// Outcomes are 0/1 on most tasks, so a prompt's own outcomes are mostly
// noise about its task's means: learning the task (a few labels, learnt
// from every row) and reading the means off a table of hundreds of rows
// each routed better by cross-validated AIQ than any scorer that learns
// each expert's outcome per prompt (docs/RESULTS.md). It needs rows
// labelled with two tasks or more; `train_best` leaves it out otherwise.
//
// Spec grammar (canonical form first; `spec()` returns it):
//   linear[,buckets=N][,blocks=2][,alpha=A|auto]
//   task[,buckets=N][,blocks=2][,alpha=A|auto]    (alpha=auto: per task)
//   buckets  featurizer buckets, 16..2^20 (default 2^14)
//   blocks   as gbt's: 2 puts words and characters in blocks of their own
//   alpha    the penalty, in (0, 1e9], for every column (default 10; the
//            task kind's 1), or auto: chosen per column (expert or task)
//            on the held-out rows
//
// Model file ("linear" kind). Fields: featurizer.*, linear.predicts_tokens,
// linear.tokens.known (per expert), linear.quality.alpha and
// linear.tokens.alpha (per expert). Tensors: linear.idf [buckets];
// linear.numeric.low, .high, .mean and .scale [1, numeric features];
// linear.quality.weights [buckets, experts], linear.quality.dense
// [numeric features, experts], linear.quality.bias [experts]; the same for
// linear.tokens.* where the data has lengths. The "task" kind writes no
// linear.quality.*, but task.names (the tasks, sorted), task.quality
// [tasks, experts] (each task's mean quality per expert) and the
// classifier's head as task.classifier.* ([buckets, tasks] and so on),
// and task.temperature.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <numeric>
#include <thread>

#include "compact_storage.hpp"
#include "scorers.hpp"
#include "sparse_projection.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"
#include "torouter/features.hpp"
#include "trainer.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

constexpr long long kDefaultBuckets = 1 << 14;
// The penalty. Rows have unit norm, so a weight this penalty holds to size
// 1 needs the evidence of about alpha rows. 10 routed better than 3, 30
// and a choice per expert by held-out error, by cross-validated AIQ on both
// shared training splits (docs/RESULTS.md, the ablation).
constexpr double kDefaultAlpha = 10.0;
// The task kind's: a task's label is known on every row and never noise,
// so a weaker penalty fits it closer. 1 routed better than 3 and 10 on
// llmrouter14 and as well on routerbench3 (cross-validated AIQ on the
// training splits, docs/RESULTS.md's ablation), and as well as 0.3, which
// takes twice the solver's time.
constexpr double kDefaultTaskAlpha = 1.0;
// The penalties `alpha=auto` tries, largest first.
constexpr double kAlphaPath[] = {100.0, 30.0, 10.0, 3.0};
// Conjugate gradients stop at this residual, relative to the right-hand
// side: far below what moves a route.
constexpr double kTolerance = 1e-3;
constexpr int kMaxIterations = 400;
constexpr float kMaxWeight = 1e6f;
// Below this spread a numeric feature counts as constant (scale 1, so it
// stays 0 after centring).
constexpr float kMinScale = 1e-6f;
// A task's mean quality for an expert counts this many rows at the
// expert's mean over every task besides its own, so an expert with few
// outcomes on a task is not judged by those alone.
constexpr double kTaskPriorRows = 1.0;
// The softmax temperatures the task kind chooses from, and its choice
// without validation rows (what llmrouter14's folds chose each time).
constexpr double kTemperatures[] = {0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5};
constexpr double kDefaultTemperature = 0.1;

using Dense = Eigen::MatrixXf;
using Table = SparseProjection::Table;
using Wide = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// The linear model of one target per expert (quality, or log tokens).
struct LinearHead {
  SparseProjection weights;  // IDF and buckets x experts
  Dense dense;               // standardised numeric features x experts
  Eigen::RowVectorXf bias;   // experts
  std::vector<double> alpha;
};

// How a prompt's numeric features are standardised: held to the range the
// training rows spanned (a linear model extrapolates without bound, and a
// feature nearly constant in training, such as the share of non-ASCII
// characters, would otherwise swing the prediction on a prompt unlike
// them), then centred and scaled to unit variance over those rows.
struct NumericScaling {
  Eigen::RowVectorXf low, high, mean, scale;

  template <typename Row>
  void apply(const Row& raw, Eigen::RowVectorXf& out) const {
    out = (raw.cwiseMax(low).cwiseMin(high) - mean).cwiseQuotient(scale);
  }
};

// The training rows as the solver sees them: centred TF-IDF rows, the
// numeric features standardised, and a column of ones for the intercept.
struct Design {
  const SparseRows* x = nullptr;
  Eigen::RowVectorXf mean;  // of x's columns
  Dense numeric;            // rows x numeric features, standardised
  NumericScaling scaling;

  Eigen::Index rows() const { return x->rows(); }
  Eigen::Index buckets() const { return x->cols(); }
  // Unknowns per column: bucket weights, numeric weights, intercept.
  Eigen::Index width() const { return buckets() + numeric.cols() + 1; }

  // F * v for each column of v (width x columns): rows x columns.
  Dense times(const Dense& v) const {
    const auto b = buckets(), d = numeric.cols();
    const Wide vb = v.topRows(b);
    Wide u(rows(), v.cols());
    // Row by row over the sparse rows: each entry adds a row of v, all
    // columns at once (Eigen's product goes column by column, re-reading
    // the sparse rows once per expert).
    for (Eigen::Index i = 0; i < rows(); ++i) {
      auto out = u.row(i);
      out.setZero();
      for (SparseRows::InnerIterator it(*x, i); it; ++it) out += it.value() * vb.row(it.index());
    }
    Dense result = u;
    result.rowwise() -= mean * vb;
    result.noalias() += numeric * v.middleRows(b, d);
    result.rowwise() += v.row(b + d);
    return result;
  }

  // F^T * u: width x columns.
  Dense transpose_times(const Dense& u) const {
    const auto b = buckets(), d = numeric.cols();
    const Eigen::RowVectorXf sums = u.colwise().sum();
    const Wide uw = u;
    Wide xt = Wide::Zero(b, u.cols());
    for (Eigen::Index i = 0; i < rows(); ++i) {
      const auto row = uw.row(i);
      for (SparseRows::InnerIterator it(*x, i); it; ++it) xt.row(it.index()) += it.value() * row;
    }
    Dense out(width(), u.cols());
    out.topRows(b) = xt;
    out.topRows(b).noalias() -= mean.transpose() * sums;
    out.middleRows(b, d).noalias() = numeric.transpose() * u;
    out.row(b + d) = sums;
    return out;
  }

  // F^T diag(mask_c) F * v_c for each column c, in one pass over the rows:
  // each row's prediction, masked, scattered straight back.
  Dense normal_times(const Dense& v, const Dense& mask) const {
    const auto b = buckets(), d = numeric.cols();
    const Wide vb = v.topRows(b);
    const Eigen::RowVectorXf shift = v.row(b + d) - mean * vb;
    const Dense vd = v.middleRows(b, d);
    Wide xt = Wide::Zero(b, v.cols());
    Dense nt = Dense::Zero(d, v.cols());
    Eigen::RowVectorXf sums = Eigen::RowVectorXf::Zero(v.cols());
    Eigen::RowVectorXf u(v.cols());
    for (Eigen::Index i = 0; i < rows(); ++i) {
      u = shift;
      u.noalias() += numeric.row(i) * vd;
      for (SparseRows::InnerIterator it(*x, i); it; ++it) u += it.value() * vb.row(it.index());
      u = u.cwiseProduct(mask.row(i));
      for (SparseRows::InnerIterator it(*x, i); it; ++it) xt.row(it.index()) += it.value() * u;
      nt.noalias() += numeric.row(i).transpose() * u;
      sums += u;
    }
    Dense out(width(), v.cols());
    out.topRows(b) = xt;
    out.topRows(b).noalias() -= mean.transpose() * sums;
    out.middleRows(b, d) = nt;
    out.row(b + d) = sums;
    return out;
  }

  // Diagonal of F^T diag(mask_c) F for each column c of `mask`.
  Dense squared_column_sums(const Dense& mask) const {
    const auto b = buckets(), d = numeric.cols();
    const SparseRows squares = x->cwiseAbs2();
    const Eigen::RowVectorXf counts = mask.colwise().sum();
    Dense out(width(), mask.cols());
    // sum_i m_i (x_ij - mean_j)^2 = sum m x^2 - 2 mean_j sum m x + mean_j^2 sum m
    out.topRows(b) = squares.transpose() * mask;
    out.topRows(b) -= 2.0f * mean.transpose().asDiagonal() * (x->transpose() * mask);
    out.topRows(b) += mean.cwiseAbs2().transpose() * counts;
    out.middleRows(b, d).noalias() = numeric.cwiseAbs2().transpose() * mask;
    out.row(b + d) = counts;
    return out;
  }
};

// Solves (F^T M_c F + alpha_c P) w_c = F^T y_c for every column c by
// preconditioned conjugate gradients from `w` (width x columns), where M_c
// masks column c's rows (`target` is zero outside them) and P penalises all
// but the intercept.
void conjugate_gradients(const Design& f, const Dense& target, const Dense& mask,
                         const Eigen::RowVectorXf& alpha, Dense& w) {
  const Eigen::Index cols = target.cols(), intercept = f.width() - 1;
  const auto penalty = [&](const Dense& v) {
    Dense p = v * alpha.asDiagonal();
    p.row(intercept).setZero();
    return p;
  };
  const auto apply = [&](const Dense& v) { return Dense(f.normal_times(v, mask) + penalty(v)); };
  Dense diagonal = f.squared_column_sums(mask) + penalty(Dense::Ones(f.width(), cols));
  diagonal = diagonal.cwiseMax(1e-6f);
  const Dense rhs = f.transpose_times(target);
  const Eigen::ArrayXd rhs_norm = rhs.colwise().norm().transpose().cast<double>();
  Dense r = rhs - apply(w);
  Dense z = r.cwiseQuotient(diagonal);
  Dense p = z;
  Eigen::ArrayXd rz = r.cwiseProduct(z).colwise().sum().transpose().cast<double>();
  for (int it = 0; it < kMaxIterations; ++it) {
    const Eigen::ArrayXd residual = r.colwise().norm().transpose().cast<double>();
    if ((residual <= kTolerance * rhs_norm.max(1e-12)).all()) return;
    const Dense ap = apply(p);
    const Eigen::ArrayXd pap = p.cwiseProduct(ap).colwise().sum().transpose().cast<double>();
    const Eigen::RowVectorXf step = (pap > 0).select(rz / pap, 0.0).cast<float>().transpose();
    w += p * step.asDiagonal();
    r -= ap * step.asDiagonal();
    z = r.cwiseQuotient(diagonal);
    const Eigen::ArrayXd rz_next = r.cwiseProduct(z).colwise().sum().transpose().cast<double>();
    const Eigen::RowVectorXf beta = (rz > 0).select(rz_next / rz, 0.0).cast<float>().transpose();
    p = z + p * beta.asDiagonal();
    rz = rz_next;
  }
}

// The ridge of each column of `target` on the rows `mask` gives it, from
// `w`. The solver sees each column's targets less their masked mean, and the
// intercept shifted to match: the same solution, as the intercept is not
// penalised. Otherwise the intercept's entry of the right-hand side (rows
// times the mean) rules the norm the stopping rule is relative to, and the
// bucket weights could stop far from their solution on a large dataset.
void solve_ridge(const Design& f, const Dense& target, const Dense& mask,
                 const Eigen::RowVectorXf& alpha, Dense& w) {
  const Eigen::Index intercept = f.width() - 1;
  const Eigen::ArrayXf counts = mask.colwise().sum().transpose().array();
  const Eigen::RowVectorXf means =
      (target.cwiseProduct(mask).colwise().sum().transpose().array() / counts.max(1.0f))
          .matrix()
          .transpose();
  const Dense centred = (target.rowwise() - means).cwiseProduct(mask);
  w.row(intercept) -= means;
  // A column whose known targets are all equal (or none) is solved by its
  // mean alone. Its right-hand side is zero, so the stopping rule would ask
  // for a residual of zero, which float arithmetic may never reach.
  for (Eigen::Index c = 0; c < centred.cols(); ++c) {
    if (centred.col(c).isZero(0.0f)) w.col(c).setZero();
  }
  conjugate_gradients(f, centred, mask, alpha, w);
  w.row(intercept) += means;
}

// The mask of `rows` for each column: 1 where the row is in `rows` and the
// column's target is known.
Dense row_mask(const Dense& known, const std::vector<std::size_t>& rows) {
  Dense mask = Dense::Zero(known.rows(), known.cols());
  for (const std::size_t r : rows) {
    mask.row(static_cast<Eigen::Index>(r)) = known.row(static_cast<Eigen::Index>(r));
  }
  return mask;
}

// Squared error of each column over the masked rows; NaN for a column
// with none (no evidence for any penalty: it keeps the default).
Eigen::ArrayXd masked_mse(const Design& f, const Dense& w, const Dense& target, const Dense& mask) {
  const Dense error = (f.times(w) - target).cwiseProduct(mask);
  const Eigen::ArrayXd counts = mask.colwise().sum().transpose().cast<double>();
  const Eigen::ArrayXd sums = error.cwiseAbs2().colwise().sum().transpose().cast<double>();
  return (counts > 0).select(sums / counts.max(1.0), std::numeric_limits<double>::quiet_NaN());
}

// Fits one head: the penalty `alpha`, or (0) each column's chosen on
// `validation`. `target` has NaN where unknown. With validation rows, the
// head is first fitted without them, so that `held_out` (every row's
// prediction by that fit) and `validation_mse` judge it on rows it did not
// see; then the final fit, on every row.
struct HeadFit {
  Dense w;
  std::vector<double> alpha;
  Eigen::ArrayXd validation_mse;
  Dense held_out;
};

HeadFit fit_head(const Design& f, Dense target, double alpha, const std::vector<std::size_t>& train,
                 const std::vector<std::size_t>& validation) {
  const Dense known = target.array().isFinite().cast<float>().matrix();
  target = known.select(target, Dense::Zero(target.rows(), target.cols()));
  const auto cols = target.cols();
  HeadFit out;
  out.w = Dense::Zero(f.width(), cols);
  // With `alpha=auto`, a column without held-out evidence keeps 10.
  Eigen::RowVectorXf chosen =
      Eigen::RowVectorXf::Constant(cols, static_cast<float>(alpha > 0 ? alpha : kDefaultAlpha));
  if (!validation.empty()) {
    const Dense train_mask = row_mask(known, train), held_mask = row_mask(known, validation);
    std::vector<double> path(std::begin(kAlphaPath), std::end(kAlphaPath));
    if (alpha > 0) path = {alpha};
    Dense best = out.w;
    out.validation_mse = Eigen::ArrayXd::Constant(cols, std::numeric_limits<double>::infinity());
    for (const double a : path) {
      solve_ridge(f, target, train_mask, Eigen::RowVectorXf::Constant(cols, static_cast<float>(a)),
                  out.w);
      const Eigen::ArrayXd mse = masked_mse(f, out.w, target, held_mask);
      for (Eigen::Index c = 0; c < cols; ++c) {
        if (mse(c) < out.validation_mse(c)) {
          out.validation_mse(c) = mse(c);
          chosen(c) = static_cast<float>(a);
          best.col(c) = out.w.col(c);
        }
      }
    }
    out.w = best;
    out.held_out = f.times(out.w);
  }
  // A fixed penalty's final fit starts from zero, so the model does not
  // depend on which rows were held out; chosen penalties start from the
  // fit that chose them.
  if (alpha > 0) out.w.setZero();
  std::vector<std::size_t> all(static_cast<std::size_t>(f.rows()));
  std::iota(all.begin(), all.end(), 0);
  solve_ridge(f, target, row_mask(known, all), chosen, out.w);
  out.alpha.assign(chosen.data(), chosen.data() + cols);
  return out;
}

// Fits the qualities' head and, where given, the lengths' head. They are
// independent: with two threads the second is fitted beside the first (the
// same result, half the wait).
void fit_heads(const Design& f, const Dense& quality, const Dense* log_tokens, double alpha,
               const std::vector<std::size_t>& train, const std::vector<std::size_t>& validation,
               int threads, HeadFit& q, HeadFit& t) {
  std::exception_ptr tokens_error;
  const auto fit_tokens = [&] {
    try {
      if (log_tokens != nullptr) t = fit_head(f, *log_tokens, alpha, train, validation);
    } catch (...) {
      tokens_error = std::current_exception();
    }
  };
  std::thread beside;
  if (threads > 1) beside = std::thread(fit_tokens);
  try {
    q = fit_head(f, quality, alpha, train, validation);
  } catch (...) {
    if (beside.joinable()) beside.join();
    throw;
  }
  if (beside.joinable()) {
    beside.join();
  } else {
    fit_tokens();
  }
  if (tokens_error) std::rethrow_exception(tokens_error);
}

// The head a route evaluates, from solved weights in the design's
// coordinates: the bucket weights rounded to int8 rows (the file's q8), their
// centring folded into the bias.
LinearHead make_head(const Design& f, const Dense& w, std::vector<float> idf,
                     std::uint32_t word_buckets, std::vector<double> alpha) {
  const auto b = f.buckets(), d = f.numeric.cols();
  Table weights = w.topRows(b);
  round_to_int8_rows(weights);
  LinearHead head;
  head.dense = w.middleRows(b, d);
  head.bias = w.row(b + d) - f.mean * weights;
  head.weights = SparseProjection(std::move(idf), std::move(weights), word_buckets);
  head.alpha = std::move(alpha);
  return head;
}

struct LinearWorkspace : ScorerWorkspace {
  SparseFeatures features;
  Eigen::RowVectorXf numeric, quality, tokens, task_scores;
};

// One-hot task labels, rows x tasks; NaN in the rows without a task (the
// solver leaves them out).
Dense task_labels(const TrainingSet& set, const std::vector<std::string>& tasks) {
  const auto rows = static_cast<Eigen::Index>(set.rows());
  Dense labels = Dense::Constant(rows, static_cast<Eigen::Index>(tasks.size()),
                                 std::numeric_limits<float>::quiet_NaN());
  for (Eigen::Index r = 0; r < rows; ++r) {
    const std::string& task = set.tasks[static_cast<std::size_t>(r)];
    const auto at = std::lower_bound(tasks.begin(), tasks.end(), task);
    if (task.empty() || at == tasks.end() || *at != task) continue;
    labels.row(r).setZero();
    labels(r, at - tasks.begin()) = 1.0f;
  }
  return labels;
}

// The column of row r's task in task_labels' matrix, or -1 where the row
// has none.
Eigen::Index labelled_task(const Dense& labels, Eigen::Index r) {
  Eigen::Index task = -1;
  if (std::isfinite(labels(r, 0))) labels.row(r).maxCoeff(&task);
  return task;
}

// softmax(scores / temperature), in place.
void task_probabilities(Eigen::RowVectorXf& scores, double temperature) {
  scores = ((scores.array() - scores.maxCoeff()) / static_cast<float>(temperature)).exp();
  scores /= scores.sum();
}

// The temperature whose probabilities of `scores` (rows x tasks, the fit
// without `validation`) give the validation rows' tasks the least log loss.
double chosen_temperature(const Dense& scores, const Dense& labels,
                          const std::vector<std::size_t>& validation) {
  double best = kDefaultTemperature;
  double best_loss = std::numeric_limits<double>::infinity();
  Eigen::RowVectorXf p;
  for (const double temperature : kTemperatures) {
    double loss = 0;
    std::size_t judged = 0;
    for (const std::size_t v : validation) {
      const auto r = static_cast<Eigen::Index>(v);
      const Eigen::Index task = labelled_task(labels, r);
      if (task < 0) continue;
      p = scores.row(r);
      task_probabilities(p, temperature);
      loss -= std::log(std::max(static_cast<double>(p(task)), 1e-12));
      ++judged;
    }
    if (judged > 0 && loss < best_loss) {
      best_loss = loss;
      best = temperature;
    }
  }
  return best;
}

// Each task's mean quality per expert over `rows` (tasks x experts), each
// mean drawn toward the expert's mean over all of `rows` by kTaskPriorRows.
Dense task_quality_table(const TrainingSet& set, const Dense& labels,
                         const std::vector<std::size_t>& rows) {
  const auto experts = set.quality.cols();
  Dense sums = Dense::Zero(labels.cols(), experts), counts = sums;
  Eigen::RowVectorXd all_sums = Eigen::RowVectorXd::Zero(experts), all_counts = all_sums;
  for (const std::size_t r : rows) {
    const auto i = static_cast<Eigen::Index>(r);
    const Eigen::RowVectorXf known = set.present.row(i);
    const Eigen::RowVectorXf quality = set.quality.row(i).cwiseProduct(known);
    all_sums += quality.cast<double>();
    all_counts += known.cast<double>();
    const Eigen::Index task = labelled_task(labels, i);
    if (task < 0) continue;
    sums.row(task) += quality;
    counts.row(task) += known;
  }
  const Eigen::RowVectorXd prior = (all_sums.array() / all_counts.array().max(1.0)).matrix();
  Dense table(labels.cols(), experts);
  for (Eigen::Index t = 0; t < table.rows(); ++t) {
    table.row(t) = ((sums.row(t).cast<double>().array() + kTaskPriorRows * prior.array()) /
                    (counts.row(t).cast<double>().array() + kTaskPriorRows))
                       .cast<float>()
                       .matrix();
  }
  return table;
}

class LinearScorer : public TrainableScorer, public FeaturizedScorer {
 public:
  explicit LinearScorer(const ScorerSpec& spec) : by_task_(spec.kind == "task") {
    featurizer_options_.num_buckets =
        static_cast<std::uint32_t>(spec.integer_option("buckets", kDefaultBuckets, 16, 1 << 20));
    featurizer_options_.word_buckets = word_buckets_for(spec, featurizer_options_.num_buckets);
    if (spec.text_option("alpha", "") == "auto") {
      alpha_ = 0.0;
    } else {
      alpha_ = spec.number_option("alpha", default_alpha());
      if (!(alpha_ > 0 && alpha_ <= 1e9)) {
        throw Error(fmt::format(
            "scorer spec \"{}\", option alpha: expected auto or a number in (0, 1e9]", spec.text));
      }
    }
    if (!spec.argument.empty()) {
      throw Error(fmt::format("scorer spec \"{}\": {} takes options only ({},alpha=10,...)",
                              spec.text, spec.kind, spec.kind));
    }
    spec_ = canonical_spec();
    featurizer_ = Featurizer(featurizer_options_);
  }

  std::string_view kind() const override { return by_task_ ? "task" : "linear"; }
  std::string spec() const override { return spec_; }

  std::unique_ptr<ScorerWorkspace> make_workspace() const override {
    auto w = std::make_unique<LinearWorkspace>();
    fit_workspace(*w);
    return w;
  }

  void score_uncalibrated(const std::string_view* prompts, std::size_t count, ScoreBatch& out,
                          ScorerWorkspace* workspace) const override {
    std::unique_ptr<ScorerWorkspace> local;
    auto* w = &workspace_for_call<LinearWorkspace>(*this, workspace, local);
    fit_workspace(*w);
    out.resize(count, expert_names().size());
    for (std::size_t i = 0; i < count; ++i) {
      featurizer_.featurize(prompts[i], w->features);
      score_row(w->features, i, out, *w);
    }
  }

  const FeaturizerOptions& featurizer_options() const override { return featurizer_options_; }

  void score_featurized(const SparseFeatures* features, std::size_t count, ScoreBatch& out,
                        ScorerWorkspace* workspace) const override {
    std::unique_ptr<ScorerWorkspace> local;
    auto* w = &workspace_for_call<LinearWorkspace>(*this, workspace, local);
    fit_workspace(*w);
    out.resize(count, expert_names().size());
    for (std::size_t i = 0; i < count; ++i) score_row(features[i], i, out, *w);
  }

 protected:
  TrainReport fit(const TrainingSet& set, const TrainOptions& options) override;

  void write_model(ModelWriter& out) const override {
    write_featurizer_options(out, featurizer_options_);
    out.set("linear.predicts_tokens", predicts_tokens_);
    out.set("linear.tokens.known", std::vector<double>(tokens_known_.begin(), tokens_known_.end()));
    out.add_tensor("linear.idf", {static_cast<std::int64_t>(quality_.weights.idf().size())},
                   quality_.weights.idf());
    out.add_tensor("linear.numeric.low", numeric_.low);
    out.add_tensor("linear.numeric.high", numeric_.high);
    out.add_tensor("linear.numeric.mean", numeric_.mean);
    out.add_tensor("linear.numeric.scale", numeric_.scale);
    if (by_task_) {
      out.set("task.names", tasks_);
      out.set("task.temperature", temperature_);
      out.add_tensor("task.quality", task_quality_);
      write_head(out, "task.classifier", quality_);
    } else {
      write_head(out, "linear.quality", quality_);
    }
    if (predicts_tokens_) write_head(out, "linear.tokens", tokens_);
  }

  void read_model(const ModelReader& in) override;

 private:
  // Sizes the workspace's vectors for this model. A workspace made before
  // the scorer was trained or loaded again holds the old model's sizes;
  // one that fits already is left as it is (no allocation).
  void fit_workspace(LinearWorkspace& w) const {
    const auto experts = static_cast<Eigen::Index>(expert_names().size());
    w.numeric.resize(kDenseFeatureCount);
    w.quality.resize(experts);
    w.tokens.resize(experts);
    w.task_scores.resize(static_cast<Eigen::Index>(tasks_.size()));
  }

  void score_row(const SparseFeatures& features, std::size_t row, ScoreBatch& out,
                 LinearWorkspace& w) const {
    const auto r = static_cast<Eigen::Index>(row);
    numeric_.apply(Eigen::Map<const Eigen::RowVectorXf>(features.dense.data(), kDenseFeatureCount),
                   w.numeric);
    if (by_task_) {
      evaluate(quality_, features, w.numeric, w.task_scores);
      task_probabilities(w.task_scores, temperature_);
      w.quality.noalias() = w.task_scores * task_quality_;
    } else {
      evaluate(quality_, features, w.numeric, w.quality);
    }
    if (predicts_tokens_) evaluate(tokens_, features, w.numeric, w.tokens);
    for (Eigen::Index e = 0; e < w.quality.size(); ++e) {
      out.quality(r, e) = std::clamp(w.quality(e), 0.0f, 1.0f);
      out.output_tokens(r, e) = tokens_known_[static_cast<std::size_t>(e)]
                                    ? std::max(0.0f, std::expm1(w.tokens(e)))
                                    : std::numeric_limits<float>::quiet_NaN();
    }
  }

  static void evaluate(const LinearHead& head, const SparseFeatures& features,
                       const Eigen::RowVectorXf& numeric, Eigen::RowVectorXf& out) {
    head.weights.project(features, out.data());
    out.noalias() += numeric * head.dense;
    out += head.bias;
  }

  static void write_head(ModelWriter& out, const std::string& prefix, const LinearHead& head) {
    out.set(prefix + ".alpha", head.alpha);
    out.add_tensor(prefix + ".weights", head.weights.table());
    out.add_tensor(prefix + ".dense", head.dense);
    out.add_tensor(prefix + ".bias", {head.bias.size()},
                   std::vector<float>(head.bias.data(), head.bias.data() + head.bias.size()));
  }

  LinearHead read_head(const ModelReader& in, const std::string& prefix,
                       const std::vector<float>& idf, std::int64_t columns) const;
  void read_numeric_scaling(const ModelReader& in);
  void read_tasks(const ModelReader& in);
  // What the head is fitted to: each expert's quality, or (task kind) the
  // one-hot task labels, whose tasks it sets.
  Dense head_target(const TrainingSet& set);
  // Each held-out row's predicted quality by the fit without them: the
  // head's own, or (task kind) the mixture of the tasks' rows of a table
  // made from `train`.
  Eigen::MatrixXf held_out_quality(const TrainingSet& set, const HeadFit& q, const Dense& target,
                                   const std::vector<std::size_t>& train,
                                   const std::vector<std::size_t>& validation) const;

  double default_alpha() const { return by_task_ ? kDefaultTaskAlpha : kDefaultAlpha; }

  std::string canonical_spec() const {
    std::string s = by_task_ ? "task" : "linear";
    if (featurizer_options_.num_buckets != kDefaultBuckets) {
      s += fmt::format(",buckets={}", featurizer_options_.num_buckets);
    }
    if (featurizer_options_.word_buckets != 0) s += ",blocks=2";
    if (alpha_ == 0) {
      s += ",alpha=auto";
    } else if (alpha_ != default_alpha()) {
      s += fmt::format(",alpha={}", alpha_);
    }
    return s;
  }

  bool by_task_ = false;  // the task kind
  FeaturizerOptions featurizer_options_;
  Featurizer featurizer_;
  double alpha_ = kDefaultAlpha;  // 0: chosen per column on held-out rows (auto)
  NumericScaling numeric_;
  // One column per expert; for the task kind, one per task (the classifier).
  LinearHead quality_, tokens_;
  std::vector<std::string> tasks_;  // the task kind's, sorted
  Dense task_quality_;              // tasks x experts
  double temperature_ = kDefaultTemperature;
  bool predicts_tokens_ = false;
  std::vector<bool> tokens_known_;
  std::string spec_;
};

Design make_design(const SparseRows& x, const std::vector<SparseFeatures>& rows) {
  Design f;
  f.x = &x;
  f.mean = (Eigen::RowVectorXf::Ones(x.rows()) * x) / static_cast<float>(x.rows());
  Dense raw(x.rows(), kDenseFeatureCount);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    for (std::size_t k = 0; k < rows[r].dense.size(); ++k) {
      raw(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(k)) = rows[r].dense[k];
    }
  }
  NumericScaling& s = f.scaling;
  s.low = raw.colwise().minCoeff();
  s.high = raw.colwise().maxCoeff();
  s.mean = raw.colwise().mean();
  const Eigen::RowVectorXf sd =
      ((raw.rowwise() - s.mean).colwise().squaredNorm() / static_cast<float>(x.rows())).cwiseSqrt();
  // A constant feature stays 0 (scale 1), so its weight is 0.
  s.scale = (sd.array() >= kMinScale).select(sd, 1.0f);
  f.numeric.resize(raw.rows(), raw.cols());
  Eigen::RowVectorXf z;
  for (Eigen::Index r = 0; r < raw.rows(); ++r) {
    s.apply(raw.row(r), z);
    f.numeric.row(r) = z;
  }
  return f;
}

TrainReport LinearScorer::fit(const TrainingSet& set, const TrainOptions& options) {
  if (!(options.validation_fraction >= 0 && options.validation_fraction < 1)) {
    throw Error(fmt::format("{}: validation_fraction must be in [0, 1), got {}", spec_,
                            options.validation_fraction));
  }
  std::vector<SparseFeatures> rows(set.rows());
  for (std::size_t i = 0; i < set.rows(); ++i) featurizer_.featurize(set.prompts[i], rows[i]);
  // IDF and means are unsupervised: fitting them on every row, held-out
  // ones included, leaks no target.
  std::vector<float> idf = inverse_document_frequency(rows, featurizer_options_.num_buckets);
  const SparseRows x = tfidf_rows(rows, idf, featurizer_options_.word_buckets);
  const Design f = make_design(x, rows);
  numeric_ = f.scaling;
  std::vector<std::size_t> train, validation;
  split_validation_rows(set.rows(), options, train, validation);

  const Dense target = head_target(set);
  predicts_tokens_ = set.has_output_tokens();
  tokens_known_ = experts_with_lengths(set);
  const Dense log_tokens = predicts_tokens_ ? Dense(set.output_tokens.array().log1p()) : Dense();
  HeadFit q, t;
  fit_heads(f, target, predicts_tokens_ ? &log_tokens : nullptr, alpha_, train, validation,
            options.threads, q, t);
  quality_ = make_head(f, q.w, idf, featurizer_options_.word_buckets, q.alpha);
  if (by_task_) {
    std::vector<std::size_t> all(set.rows());
    std::iota(all.begin(), all.end(), 0);
    task_quality_ = task_quality_table(set, target, all);
    temperature_ = validation.empty() ? kDefaultTemperature
                                      : chosen_temperature(q.held_out, target, validation);
  }
  tokens_ = predicts_tokens_ ? make_head(f, t.w, idf, featurizer_options_.word_buckets, t.alpha)
                             : LinearHead{};

  TrainReport r;
  r.train_rows = set.rows();
  r.validation_rows = validation.size();
  r.epochs_run = r.best_epoch = 1;
  // The mean over the columns (experts, or the task kind's tasks) with
  // held-out targets.
  const Eigen::ArrayXd judged = q.validation_mse.isFinite().select(q.validation_mse, 0.0);
  const double experts_judged = q.validation_mse.isFinite().cast<double>().sum();
  r.validation_loss = experts_judged > 0 ? judged.sum() / experts_judged : 0.0;
  if (!validation.empty()) {
    r.validation_quality =
        routed_quality(set, validation, held_out_quality(set, q, target, train, validation));
  }
  return r;
}

Dense LinearScorer::head_target(const TrainingSet& set) {
  if (!by_task_) return quality_or_nan(set);
  if (!set.tasks.empty() && set.tasks.size() != set.rows()) {
    throw Error(fmt::format("{}: {} task labels for {} rows", spec_, set.tasks.size(), set.rows()),
                ErrorCode::Misuse);
  }
  tasks_ = set.distinct_tasks();
  if (tasks_.size() < 2) {
    throw Error(fmt::format(
        "{}: needs training rows labelled with two tasks or more (a \"task\" field on each "
        "dataset line); these rows have {}",
        spec_, tasks_.size()));
  }
  return task_labels(set, tasks_);
}

Eigen::MatrixXf LinearScorer::held_out_quality(const TrainingSet& set, const HeadFit& q,
                                               const Dense& target,
                                               const std::vector<std::size_t>& train,
                                               const std::vector<std::size_t>& validation) const {
  const Dense table = by_task_ ? task_quality_table(set, target, train) : Dense();
  Eigen::MatrixXf held(static_cast<Eigen::Index>(validation.size()), set.quality.cols());
  Eigen::RowVectorXf row;
  for (std::size_t i = 0; i < validation.size(); ++i) {
    row = q.held_out.row(static_cast<Eigen::Index>(validation[i]));
    if (by_task_) {
      task_probabilities(row, temperature_);
      row = row * table;
    }
    held.row(static_cast<Eigen::Index>(i)) = row;
  }
  return held.cwiseMax(0.0f).cwiseMin(1.0f);
}

LinearHead LinearScorer::read_head(const ModelReader& in, const std::string& prefix,
                                   const std::vector<float>& idf, std::int64_t columns) const {
  const auto buckets = static_cast<std::int64_t>(featurizer_options_.num_buckets);
  LinearHead head;
  head.alpha = in.numbers(prefix + ".alpha");
  if (head.alpha.size() != static_cast<std::size_t>(columns)) {
    throw Error(fmt::format("{}field \"{}.alpha\": one value per {} expected", in.where(), prefix,
                            by_task_ && prefix == "task.classifier" ? "task" : "expert"));
  }
  Table weights;
  in.tensor(prefix + ".weights", buckets, columns, weights);
  in.tensor(prefix + ".dense", kDenseFeatureCount, columns, head.dense);
  const auto& bias = in.tensor(prefix + ".bias", {columns}).values;
  head.bias = Eigen::Map<const Eigen::RowVectorXf>(bias.data(), columns);
  // Sums of huge weights could overflow; only a damaged file has them.
  for (const float v : {weights.cwiseAbs().maxCoeff(), head.dense.cwiseAbs().maxCoeff(),
                        head.bias.cwiseAbs().maxCoeff()}) {
    if (v > kMaxWeight) {
      throw Error(fmt::format("{}tensors \"{}.*\": a weight of {} is beyond +-{}", in.where(),
                              prefix, v, kMaxWeight));
    }
  }
  head.weights = SparseProjection(idf, std::move(weights), featurizer_options_.word_buckets);
  return head;
}

void LinearScorer::read_numeric_scaling(const ModelReader& in) {
  in.tensor("linear.numeric.low", 1, kDenseFeatureCount, numeric_.low);
  in.tensor("linear.numeric.high", 1, kDenseFeatureCount, numeric_.high);
  in.tensor("linear.numeric.mean", 1, kDenseFeatureCount, numeric_.mean);
  in.tensor("linear.numeric.scale", 1, kDenseFeatureCount, numeric_.scale);
  // Training floors a scale at kMinScale; a smaller one, or values far
  // beyond the features' (logs and fractions), come from a damaged file
  // and would make infinite or NaN inputs.
  if (!(numeric_.scale.array() >= kMinScale).all()) {
    throw Error(fmt::format("{}tensor \"linear.numeric.scale\": every scale must be at least {}",
                            in.where(), kMinScale));
  }
  for (const auto* values : {&numeric_.low, &numeric_.high, &numeric_.mean, &numeric_.scale}) {
    if (values->cwiseAbs().maxCoeff() > kMaxWeight) {
      throw Error(fmt::format("{}tensors \"linear.numeric.*\": a value beyond +-{}", in.where(),
                              kMaxWeight));
    }
  }
  if (!(numeric_.low.array() <= numeric_.high.array()).all()) {
    throw Error(in.where() +
                "tensors \"linear.numeric.low\" and \"linear.numeric.high\": a low above its high");
  }
}

void LinearScorer::read_tasks(const ModelReader& in) {
  tasks_ = in.texts("task.names");
  if (tasks_.size() < 2 || !std::is_sorted(tasks_.begin(), tasks_.end()) ||
      std::adjacent_find(tasks_.begin(), tasks_.end()) != tasks_.end()) {
    throw Error(in.where() + "field \"task.names\": two tasks or more expected, sorted, each once");
  }
  const double temperature = in.number("task.temperature");
  if (!(temperature >= 1e-3 && temperature <= 100)) {
    throw Error(in.where() + "field \"task.temperature\": expected a number in [0.001, 100]");
  }
  temperature_ = temperature;
  in.tensor("task.quality", static_cast<Eigen::Index>(tasks_.size()),
            static_cast<Eigen::Index>(expert_names().size()), task_quality_);
  if (!(task_quality_.array() >= 0.0f && task_quality_.array() <= 1.0f).all()) {
    throw Error(in.where() + "tensor \"task.quality\": every quality must be in [0, 1]");
  }
}

void LinearScorer::read_model(const ModelReader& in) {
  featurizer_options_ = read_featurizer_options(in, 1u << 20);
  check_blocks(in, featurizer_options_);
  try {
    featurizer_ = Featurizer(featurizer_options_);
  } catch (const Error& e) {
    throw Error(in.where() + e.what());
  }
  spec_ = in.text("scorer.spec");
  predicts_tokens_ = in.flag("linear.predicts_tokens");
  const auto buckets = static_cast<std::int64_t>(featurizer_options_.num_buckets);
  const std::vector<float> idf = in.tensor("linear.idf", {buckets}).values;
  read_numeric_scaling(in);
  const auto experts = static_cast<std::int64_t>(expert_names().size());
  if (by_task_) {
    read_tasks(in);
    quality_ = read_head(in, "task.classifier", idf, static_cast<std::int64_t>(tasks_.size()));
  } else {
    quality_ = read_head(in, "linear.quality", idf, experts);
  }
  tokens_ = LinearHead{};
  if (predicts_tokens_) tokens_ = read_head(in, "linear.tokens", idf, experts);
  const auto& known = in.numbers("linear.tokens.known");
  if (known.size() != expert_names().size()) {
    throw Error(in.where() + "field \"linear.tokens.known\": one flag per expert expected");
  }
  tokens_known_.clear();
  for (const double k : known) tokens_known_.push_back(predicts_tokens_ && k != 0);
}

}  // namespace

std::unique_ptr<TrainableScorer> make_linear_scorer(const ScorerSpec& spec) {
  return std::make_unique<LinearScorer>(spec);
}

}  // namespace detail
TOROUTER_END_NAMESPACE
