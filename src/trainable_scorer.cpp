// Training bookkeeping, the spec factory, and model files with recorded
// checks, shared by every trainable scorer.
#include "torouter/trainable_scorer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "scorers.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

long long parse_integer(const std::string& text, long long minimum, long long maximum,
                        const std::string& what) {
  std::size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || value < minimum || value > maximum) {
    throw Error(fmt::format("{}: expected a whole number in [{}, {}], got \"{}\"", what, minimum,
                            maximum, text));
  }
  return value;
}

long long ScorerSpec::integer_option(const std::string& key, long long fallback, long long minimum,
                                     long long maximum) const {
  auto it = options.find(key);
  if (it == options.end()) return fallback;
  used_[key] = true;
  return parse_integer(it->second, minimum, maximum,
                       fmt::format("scorer spec \"{}\", option {}", text, key));
}

double ScorerSpec::number_option(const std::string& key, double fallback) const {
  auto it = options.find(key);
  if (it == options.end()) return fallback;
  used_[key] = true;
  try {
    std::size_t used = 0;
    const double value = std::stod(it->second, &used);
    if (used == it->second.size() && std::isfinite(value)) return value;
  } catch (const std::exception&) {
  }
  throw Error(fmt::format("scorer spec \"{}\", option {}: expected a number, got \"{}\"", text, key,
                          it->second));
}

std::string ScorerSpec::text_option(const std::string& key, const std::string& fallback) const {
  auto it = options.find(key);
  if (it == options.end()) return fallback;
  used_[key] = true;
  return it->second;
}

void ScorerSpec::reject_unused_options() const {
  for (const auto& [key, value] : options) {
    if (!used_.count(key)) {
      throw Error(fmt::format("scorer spec \"{}\": unknown option \"{}\" for {}", text, key, kind));
    }
  }
}

ScorerSpec parse_scorer_spec(std::string_view text) {
  ScorerSpec spec;
  spec.text = std::string(text);
  std::string_view rest = text;
  const std::size_t comma = rest.find(',');
  std::string_view head = rest.substr(0, comma);
  rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  const std::size_t colon = head.find(':');
  spec.kind = std::string(head.substr(0, colon));
  if (colon != std::string_view::npos) spec.argument = std::string(head.substr(colon + 1));
  while (!rest.empty()) {
    const std::size_t next = rest.find(',');
    const std::string_view item = rest.substr(0, next);
    const std::size_t equals = item.find('=');
    if (equals == std::string_view::npos || equals == 0) {
      throw Error(fmt::format("scorer spec \"{}\": expected key=value, got \"{}\"", text, item));
    }
    spec.options[std::string(item.substr(0, equals))] = std::string(item.substr(equals + 1));
    rest = next == std::string_view::npos ? std::string_view() : rest.substr(next + 1);
  }
  return spec;
}

std::uint32_t word_buckets_for(const ScorerSpec& spec, std::uint32_t buckets) {
  return spec.integer_option("blocks", 1, 1, 2) == 2 ? buckets / 2 : 0;
}

bool same_featurizer(const FeaturizerOptions& a, const FeaturizerOptions& b) {
  return a.num_buckets == b.num_buckets && a.word_unigrams == b.word_unigrams &&
         a.word_bigrams == b.word_bigrams && a.char_ngrams == b.char_ngrams &&
         a.char_ngram_min == b.char_ngram_min && a.char_ngram_max == b.char_ngram_max &&
         a.hash_seed == b.hash_seed && a.word_buckets == b.word_buckets;
}

void write_featurizer_options(ModelWriter& out, const FeaturizerOptions& f) {
  out.set("featurizer.num_buckets", static_cast<std::uint64_t>(f.num_buckets));
  out.set("featurizer.word_unigrams", f.word_unigrams);
  out.set("featurizer.word_bigrams", f.word_bigrams);
  out.set("featurizer.char_ngrams", f.char_ngrams);
  out.set("featurizer.char_ngram_min", static_cast<std::uint64_t>(f.char_ngram_min));
  out.set("featurizer.char_ngram_max", static_cast<std::uint64_t>(f.char_ngram_max));
  out.set("featurizer.hash_seed", static_cast<std::uint64_t>(f.hash_seed));
  // Only where set: files without it read as before, in older builds too.
  if (f.word_buckets != 0) {
    out.set("featurizer.word_buckets", static_cast<std::uint64_t>(f.word_buckets));
  }
}

FeaturizerOptions read_featurizer_options(const ModelReader& in, std::uint32_t max_buckets) {
  FeaturizerOptions f;
  f.num_buckets = static_cast<std::uint32_t>(in.integer("featurizer.num_buckets", 1, max_buckets));
  f.word_unigrams = in.flag("featurizer.word_unigrams");
  f.word_bigrams = in.flag("featurizer.word_bigrams");
  f.char_ngrams = in.flag("featurizer.char_ngrams");
  f.char_ngram_min =
      static_cast<std::uint32_t>(in.integer("featurizer.char_ngram_min", 1, kMaxCharNgram));
  f.char_ngram_max =
      static_cast<std::uint32_t>(in.integer("featurizer.char_ngram_max", 1, kMaxCharNgram));
  f.hash_seed = static_cast<std::uint64_t>(in.integer("featurizer.hash_seed", 0));
  if (in.has("featurizer.word_buckets")) {
    f.word_buckets = static_cast<std::uint32_t>(
        in.integer("featurizer.word_buckets", 0, static_cast<std::int64_t>(f.num_buckets) - 1));
  }
  return f;
}

void check_blocks(const ModelReader& in, const FeaturizerOptions& f) {
  if (f.word_buckets != 0 && f.word_buckets != f.num_buckets / 2) {
    throw Error(fmt::format(
        "{}field \"featurizer.word_buckets\": expected 0 or half of featurizer.num_buckets ({}), "
        "as blocks=1 or blocks=2 make it, got {}",
        in.where(), f.num_buckets / 2, f.word_buckets));
  }
}

}  // namespace detail

std::string validate_train_options(const TrainOptions& o) {
  if (o.threads < 1) return fmt::format("threads must be >= 1, got {}", o.threads);
  if (o.max_epochs < 1) return fmt::format("max_epochs must be >= 1, got {}", o.max_epochs);
  if (o.patience < 0) return fmt::format("patience must be >= 0, got {}", o.patience);
  if (o.batch_size < 1) return "batch_size must be >= 1";
  for (const auto& [name, value] :
       {std::pair{"learning_rate", o.learning_rate}, std::pair{"temperature", o.temperature}}) {
    if (!(std::isfinite(value) && value > 0.0)) {
      return fmt::format("{} must be a finite number above 0, got {}", name, value);
    }
  }
  if (!(std::isfinite(o.weight_decay) && o.weight_decay >= 0.0)) {
    return fmt::format("weight_decay must be a finite number >= 0, got {}", o.weight_decay);
  }
  if (!(o.validation_fraction >= 0.0 && o.validation_fraction < 1.0)) {
    return fmt::format("validation_fraction must be in [0, 1), got {}", o.validation_fraction);
  }
  return {};
}

void detail::check_train_options(const TrainOptions& options) {
  if (auto problem = validate_train_options(options); !problem.empty()) {
    throw Error("TrainOptions." + problem, ErrorCode::Misuse);
  }
}

TrainReport TrainableScorer::train(const TrainingSet& set, const TrainOptions& options) {
  detail::check_train_options(options);
  if (set.rows() == 0)
    throw Error(fmt::format("{}: cannot train on an empty training set", spec()));
  if (set.experts.empty()) throw Error(fmt::format("{}: the training set names no expert", spec()));
  set_identity(set.experts, set.fingerprint);
  calibration_ = Calibration();
  pick_calibration_ = Calibration();
  training_.selection = ModelSelection();
  const auto start = std::chrono::steady_clock::now();
  TrainReport report = fit(set, options);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  training_.options = options;
  training_.options.on_epoch = nullptr;
  training_.report = report;
  training_.data_fingerprint = set.fingerprint;
  training_.data_source = set.source;
  return report;
}

void TrainableScorer::score(const std::string_view* prompts, std::size_t count, ScoreBatch& out,
                            ScorerWorkspace* workspace) const {
  score_uncalibrated(prompts, count, out, workspace);
  calibration_.apply(out.quality);
}

void TrainableScorer::set_calibration(Calibration calibration) {
  if (!calibration.empty() && calibration.experts() != experts_.size()) {
    throw Error(fmt::format("{}: a calibration of {} experts cannot serve a scorer of {}", spec(),
                            calibration.experts(), experts_.size()));
  }
  calibration_ = std::move(calibration);
}

void TrainableScorer::set_pick_calibration(Calibration calibration) {
  if (!calibration.empty() && calibration.experts() != 1) {
    throw Error(
        fmt::format("{}: a pick calibration has one map, not {}", spec(), calibration.experts()));
  }
  pick_calibration_ = std::move(calibration);
}

double TrainableScorer::top_pick_quality(double predicted) const {
  if (pick_calibration_.empty()) return predicted;
  return pick_calibration_.apply(0, static_cast<float>(predicted));
}

namespace {

// Calibration knots under `name` ("calibration", "pick_calibration"): per
// expert (per map) their count, then every map's x and y one after another.
void write_calibration(ModelWriter& out, const Calibration& calibration, const std::string& name) {
  if (calibration.empty()) return;
  std::vector<double> counts;
  std::vector<float> x, y;
  for (std::size_t e = 0; e < calibration.experts(); ++e) {
    counts.push_back(static_cast<double>(calibration.knots_x(e).size()));
    x.insert(x.end(), calibration.knots_x(e).begin(), calibration.knots_x(e).end());
    y.insert(y.end(), calibration.knots_y(e).begin(), calibration.knots_y(e).end());
  }
  const auto total = static_cast<std::int64_t>(x.size());
  out.set(name + ".knots", std::move(counts));
  out.add_tensor(name + ".x", {total}, std::move(x));
  out.add_tensor(name + ".y", {total}, std::move(y));
}

Calibration read_calibration(const ModelReader& in, std::size_t maps, const std::string& name) {
  const std::string knots = name + ".knots";
  if (!in.has(knots)) return Calibration();
  const auto& counts = in.numbers(knots);
  if (counts.size() != maps) {
    throw Error(
        fmt::format("{}field \"{}\": one count per map expected ({})", in.where(), knots, maps));
  }
  std::int64_t total = 0;
  for (const double c : counts) {
    if (c < 1 || c != std::floor(c) || c > 1e7) {
      throw Error(fmt::format("{}field \"{}\": bad knot count", in.where(), knots));
    }
    total += static_cast<std::int64_t>(c);
  }
  const auto& x = in.tensor(name + ".x", {total}).values;
  const auto& y = in.tensor(name + ".y", {total}).values;
  std::vector<std::vector<float>> xs, ys;
  std::size_t at = 0;
  for (const double c : counts) {
    const auto n = static_cast<std::size_t>(c);
    xs.emplace_back(x.begin() + static_cast<long>(at), x.begin() + static_cast<long>(at + n));
    ys.emplace_back(y.begin() + static_cast<long>(at), y.begin() + static_cast<long>(at + n));
    at += n;
  }
  try {
    return Calibration(std::move(xs), std::move(ys));
  } catch (const Error& e) {
    throw Error(in.where() + e.what());
  }
}

void write_selection(ModelWriter& out, const ModelSelection& selection) {
  if (selection.folds == 0) return;
  std::vector<std::string> names;
  std::vector<double> aiq, fold_aiq, gap, ece, seconds, gap_known, ece_known;
  // Gap won and ECE can be undefined (NaN); model fields must be finite, so
  // they are stored as 0 with a flag.
  for (const auto& c : selection.candidates) {
    names.push_back(c.name);
    aiq.push_back(std::isfinite(c.aiq) ? c.aiq : 0.0);
    gap.push_back(std::isfinite(c.gap_won) ? c.gap_won : 0.0);
    gap_known.push_back(std::isfinite(c.gap_won) ? 1.0 : 0.0);
    ece.push_back(std::isfinite(c.ece) ? c.ece : 0.0);
    ece_known.push_back(std::isfinite(c.ece) ? 1.0 : 0.0);
    seconds.push_back(c.seconds);
  }
  out.set("selection.cv_gap_won_known", std::move(gap_known));
  out.set("selection.cv_ece_known", std::move(ece_known));
  out.set("selection.folds", selection.folds);
  out.set("selection.candidates", std::move(names));
  out.set("selection.cv_aiq", std::move(aiq));
  // Row-major candidates x folds, written only when every figure is known
  // (a fold without a complete row has none).
  bool complete = true;
  for (const auto& c : selection.candidates) {
    complete = complete && c.fold_aiq.size() == static_cast<std::size_t>(selection.folds);
    fold_aiq.insert(fold_aiq.end(), c.fold_aiq.begin(), c.fold_aiq.end());
  }
  complete = complete && std::all_of(fold_aiq.begin(), fold_aiq.end(),
                                     [](double a) { return std::isfinite(a); });
  if (complete) out.set("selection.cv_fold_aiq", std::move(fold_aiq));
  out.set("selection.cv_gap_won", std::move(gap));
  out.set("selection.cv_ece", std::move(ece));
  out.set("selection.seconds", std::move(seconds));
  out.set("selection.chosen", static_cast<std::uint64_t>(selection.chosen));
}

ModelSelection read_selection(const ModelReader& in) {
  ModelSelection selection;
  if (!in.has("selection.folds")) return selection;
  selection.folds = static_cast<int>(in.integer("selection.folds", 2, 1000));
  const auto& names = in.texts("selection.candidates");
  const auto& aiq = in.numbers("selection.cv_aiq");
  const auto& gap = in.numbers("selection.cv_gap_won");
  const auto& ece = in.numbers("selection.cv_ece");
  const auto& seconds = in.numbers("selection.seconds");
  if (names.empty() || aiq.size() != names.size() || gap.size() != names.size() ||
      ece.size() != names.size() || seconds.size() != names.size()) {
    throw Error(in.where() + "selection: one figure of each kind per candidate expected");
  }
  const auto& gap_known = in.numbers("selection.cv_gap_won_known");
  const auto& ece_known = in.numbers("selection.cv_ece_known");
  if (gap_known.size() != names.size() || ece_known.size() != names.size()) {
    throw Error(in.where() + "selection: one known flag per candidate expected");
  }
  // Absent from models written before it was recorded.
  const std::vector<double> none;
  const auto& fold_aiq =
      in.has("selection.cv_fold_aiq") ? in.numbers("selection.cv_fold_aiq") : none;
  const auto folds = static_cast<std::size_t>(selection.folds);
  if (!fold_aiq.empty() && fold_aiq.size() != names.size() * folds) {
    throw Error(in.where() + "selection: one AIQ per candidate and fold expected in cv_fold_aiq");
  }
  const double nan = std::nan("");
  for (std::size_t i = 0; i < names.size(); ++i) {
    CandidateFigures c;
    c.name = names[i];
    c.aiq = aiq[i];
    c.gap_won = gap_known[i] ? gap[i] : nan;
    c.ece = ece_known[i] ? ece[i] : nan;
    c.seconds = seconds[i];
    if (!fold_aiq.empty()) {
      c.fold_aiq.assign(fold_aiq.begin() + static_cast<long>(i * folds),
                        fold_aiq.begin() + static_cast<long>((i + 1) * folds));
    }
    selection.candidates.push_back(std::move(c));
  }
  selection.chosen = static_cast<std::size_t>(
      in.integer("selection.chosen", 0, static_cast<std::int64_t>(names.size()) - 1));
  return selection;
}

}  // namespace

void TrainableScorer::set_identity(std::vector<std::string> experts, std::string fingerprint) {
  experts_ = std::move(experts);
  version_ = fmt::format("{}@{}", spec(), fingerprint.substr(0, 8));
}

void TrainableScorer::save(ModelWriter& out) const {
  if (!trained())
    throw Error(fmt::format("{}: cannot save a scorer that was never trained", spec()));
  out.set("scorer.spec", spec());
  out.set("experts", experts_);
  const TrainOptions& o = training_.options;
  out.set("training.seed", static_cast<std::uint64_t>(o.seed));
  out.set("training.threads", o.threads);
  out.set("training.max_epochs", o.max_epochs);
  out.set("training.patience", o.patience);
  out.set("training.batch_size", static_cast<std::uint64_t>(o.batch_size));
  out.set("training.learning_rate", o.learning_rate);
  out.set("training.weight_decay", o.weight_decay);
  out.set("training.loss", std::string(to_string(o.loss)));
  out.set("training.temperature", o.temperature);
  out.set("training.validation_fraction", o.validation_fraction);
  const TrainReport& r = training_.report;
  out.set("training.epochs_run", r.epochs_run);
  out.set("training.best_epoch", r.best_epoch);
  out.set("training.validation_loss", r.validation_loss);
  out.set("training.validation_quality", r.validation_quality);
  out.set("training.train_rows", static_cast<std::uint64_t>(r.train_rows));
  out.set("training.validation_rows", static_cast<std::uint64_t>(r.validation_rows));
  out.set("training.seconds", r.seconds);
  out.set("data.fingerprint", training_.data_fingerprint);
  out.set("data.source", training_.data_source);
  write_calibration(out, calibration_, "calibration");
  write_calibration(out, pick_calibration_, "pick_calibration");
  write_selection(out, training_.selection);
  write_model(out);
}

void TrainableScorer::load(const ModelReader& in) {
  if (in.kind() != kind()) {
    throw Error(fmt::format("{}model kind \"{}\" cannot be read by a {} scorer", in.where(),
                            in.kind(), kind()));
  }
  TrainOptions& o = training_.options;
  o.seed = static_cast<std::uint64_t>(in.integer("training.seed", 0));
  o.threads = static_cast<int>(in.integer("training.threads", 1, 1024));
  o.max_epochs = static_cast<int>(in.integer("training.max_epochs", 0));
  o.patience = static_cast<int>(in.integer("training.patience", 0));
  o.batch_size = static_cast<std::size_t>(in.integer("training.batch_size", 1));
  o.learning_rate = in.number("training.learning_rate");
  o.weight_decay = in.number("training.weight_decay");
  const std::string& loss = in.text("training.loss");
  if (loss != "bce" && loss != "soft") {
    throw Error(fmt::format("{}field \"training.loss\": expected bce or soft, got \"{}\"",
                            in.where(), loss));
  }
  o.loss = loss == "bce" ? Loss::Bce : Loss::Soft;
  o.temperature = in.number("training.temperature");
  o.validation_fraction = in.number("training.validation_fraction");
  TrainReport& r = training_.report;
  r.epochs_run = static_cast<int>(in.integer("training.epochs_run", 0));
  r.best_epoch = static_cast<int>(in.integer("training.best_epoch", 0));
  r.validation_loss = in.number("training.validation_loss");
  r.validation_quality = in.number("training.validation_quality");
  r.train_rows = static_cast<std::size_t>(in.integer("training.train_rows", 0));
  r.validation_rows = static_cast<std::size_t>(in.integer("training.validation_rows", 0));
  r.seconds = in.number("training.seconds");
  training_.data_fingerprint = in.text("data.fingerprint");
  training_.data_source = in.text("data.source");
  const auto& experts = in.texts("experts");
  if (experts.empty()) throw Error(in.where() + "field \"experts\": no expert listed");
  set_identity(experts, training_.data_fingerprint);
  training_.selection = read_selection(in);
  calibration_ = read_calibration(in, experts.size(), "calibration");
  pick_calibration_ = read_calibration(in, 1, "pick_calibration");
  read_model(in);
}

std::unique_ptr<TrainableScorer> make_scorer(std::string_view text) {
  if (text.substr(0, 6) == "stack:") return detail::make_stack_scorer(text);
  const detail::ScorerSpec spec = detail::parse_scorer_spec(text);
  std::unique_ptr<TrainableScorer> scorer;
  if (spec.kind == "mlp") {
    scorer = detail::make_mlp_scorer(spec);
  } else if (spec.kind == "knn") {
    scorer = detail::make_knn_scorer(spec);
  } else if (spec.kind == "tlite") {
    scorer = detail::make_tlite_scorer(spec);
  } else if (spec.kind == "gbt") {
    scorer = detail::make_gbt_scorer(spec);
  } else if (spec.kind == "linear" || spec.kind == "task") {
    scorer = detail::make_linear_scorer(spec);
  } else {
    throw Error(
        fmt::format("scorer spec \"{}\": unknown kind \"{}\" (known: gbt, linear, task, mlp, knn, "
                    "tlite, stack)",
                    text, spec.kind));
  }
  spec.reject_unused_options();
  return scorer;
}

const std::vector<std::string>& model_check_prompts() {
  static const std::vector<std::string> prompts = {
      "What is the capital of Australia?",
      "Write a Python function that returns the n-th Fibonacci number using memoization.",
      "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
      "in May. How many clips did Natalia sell altogether in April and May?",
      "",
      "Écris un poème sur la mer. 海は広いな 大きいな. Привет!",
      "Q: Which gas do plants absorb from the air? A) oxygen B) carbon dioxide C) nitrogen "
      "D) helium\nAnswer:",
  };
  return prompts;
}

void save_model(const TrainableScorer& scorer, const std::string& path,
                const ExpertRegistry* prices) {
  ModelWriter out(std::string(scorer.kind()));
  scorer.save(out);
  const auto& experts = scorer.expert_names();
  if (prices) {
    std::vector<double> input, output;
    for (const auto& name : experts) {
      const ExpertSpec* spec = prices->find(name);
      input.push_back(spec ? spec->input_usd_per_mtok : 0.0);
      output.push_back(spec ? spec->output_usd_per_mtok : 0.0);
    }
    out.set("prices.input_usd_per_mtok", std::move(input));
    out.set("prices.output_usd_per_mtok", std::move(output));
  }
  const auto& prompts = model_check_prompts();
  const ScoreBatch scores = scorer.score_all(prompts);
  std::vector<double> quality, tokens;
  for (Eigen::Index i = 0; i < scores.quality.rows(); ++i) {
    for (Eigen::Index e = 0; e < scores.quality.cols(); ++e) {
      quality.push_back(scores.quality(i, e));
      const float t = scores.output_tokens(i, e);
      tokens.push_back(std::isfinite(t) ? t : -1.0);  // -1: not predicted
    }
  }
  out.set("checks.prompts", prompts);
  out.set("checks.quality", std::move(quality));
  out.set("checks.output_tokens", std::move(tokens));
  out.write(path);
}

namespace {

// A check passes when the values agree to float rounding across compilers
// and instruction sets, far tighter than any change of weights would allow.
bool close_enough(double expected, double actual, double relative) {
  return std::abs(expected - actual) <= 1e-4 + relative * std::abs(expected);
}

void verify_checks(const TrainableScorer& scorer, const ModelReader& in) {
  const auto& prompts = in.texts("checks.prompts");
  const auto& quality = in.numbers("checks.quality");
  const auto& tokens = in.numbers("checks.output_tokens");
  const std::size_t experts = scorer.expert_names().size();
  if (prompts.empty() || quality.size() != prompts.size() * experts ||
      tokens.size() != prompts.size() * experts) {
    throw Error(
        fmt::format("{}recorded checks: {} prompts need {} values each for quality and "
                    "output_tokens",
                    in.where(), prompts.size(), prompts.size() * experts));
  }
  const ScoreBatch scores = scorer.score_all(prompts);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    for (std::size_t e = 0; e < experts; ++e) {
      const auto row = static_cast<Eigen::Index>(i);
      const auto col = static_cast<Eigen::Index>(e);
      const double want_q = quality[i * experts + e];
      const double got_q = scores.quality(row, col);
      const double want_t = tokens[i * experts + e];
      const double got_t =
          std::isfinite(scores.output_tokens(row, col)) ? scores.output_tokens(row, col) : -1.0;
      if (!close_enough(want_q, got_q, 1e-4) || !close_enough(want_t, got_t, 1e-3)) {
        throw Error(
            fmt::format(
                "{}recorded check {} (\"{:.40}\") expects quality {} and output tokens {} for "
                "expert "
                "\"{}\", but the loaded model gives {} and {}: the weights do not match the "
                "model's own predictions; the file is damaged or was written by an incompatible "
                "build",
                in.where(), i, prompts[i], want_q, want_t, scorer.expert_names()[e], got_q, got_t),
            ErrorCode::IncompatibleModel);
      }
    }
  }
}

}  // namespace

LoadedModel load_model(const std::string& path) { return load_model(ModelReader::open(path)); }

LoadedModel load_model(const ModelReader& in) {
  std::unique_ptr<TrainableScorer> scorer;
  try {
    scorer = make_scorer(in.text("scorer.spec"));
  } catch (const Error& e) {
    throw Error(in.where() + e.what());
  }
  scorer->load(in);
  verify_checks(*scorer, in);

  LoadedModel model;
  const auto& names = scorer->expert_names();
  const bool priced = in.has("prices.input_usd_per_mtok");
  const std::vector<double> none(names.size(), 0.0);
  const auto& input = priced ? in.numbers("prices.input_usd_per_mtok") : none;
  const auto& output = priced ? in.numbers("prices.output_usd_per_mtok") : none;
  if (input.size() != names.size() || output.size() != names.size()) {
    throw Error(in.where() + "prices: one input and one output price per expert expected");
  }
  for (std::size_t e = 0; e < names.size(); ++e) {
    try {
      model.experts.add(ExpertSpec(names[e], input[e], output[e]));
    } catch (const Error& err) {
      throw Error(in.where() + err.what());
    }
  }
  model.scorer = std::move(scorer);
  return model;
}

TOROUTER_END_NAMESPACE
