// The MLP scorer: an embedding bag over the featurizer's hashed features plus
// the dense numeric features, ReLU hidden layers, and per-expert heads for
// quality and (where the data has answer lengths) output tokens.
//
//   input  = EmbeddingBag(hashed features) + Dense(standardised numeric features)
//   h1     = relu(input);  h_k = relu(Dense(h_{k-1}))
//   quality logits = Dense(h_last)  -> sigmoid (Loss::Bce) or softmax (Loss::Soft)
//   log(1 + output tokens) = Dense(h_last)
//
// With `table=int8` in the spec the embedding table is quantized to int8
// with a scale per row once training ends (nn/int8_embedding_bag.hpp):
// routing then reads a quarter of the bytes. The model file keeps the
// dequantized table as floats, so any reader sees the weights in use.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/kernel_table.hpp"
#include "nn/activations.hpp"
#include "nn/dense.hpp"
#include "nn/embedding_bag.hpp"
#include "nn/int8_embedding_bag.hpp"
#include "nn/losses.hpp"
#include "scorers.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"
#include "torouter/features.hpp"
#include "trainer.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

using Matrix = nn::Matrix<float>;
constexpr auto kDenseWidth = static_cast<nn::Index>(kDenseFeatureCount);
// The output-token head's share of the loss: answer length matters for cost
// but must not drown the quality signal.
constexpr float kTokenLossWeight = 0.1f;

// Weights and settings; what a model file holds.
struct MlpWeights {
  FeaturizerOptions featurizer;
  std::vector<nn::Index> hidden;
  Loss loss = Loss::Bce;
  bool predicts_tokens = false;
  Matrix dense_mean;   // 1 x kDenseWidth
  Matrix dense_scale;  // 1 x kDenseWidth: 1 / standard deviation
  nn::EmbeddingBag<float> embedding;
  // Set when the table is served as int8; `embedding` then holds no table
  // (it is rebuilt from this one to be saved).
  bool int8_table = false;
  nn::Int8EmbeddingBag int8_embedding;
  nn::Dense<float> dense_in;
  std::vector<nn::Dense<float>> layers;
  nn::Dense<float> quality_head;
  nn::Dense<float> tokens_head;

  void build(nn::Index experts) {
    embedding = nn::EmbeddingBag<float>(featurizer.num_buckets, hidden[0]);
    dense_in = nn::Dense<float>(kDenseWidth, hidden[0]);
    layers.clear();
    for (std::size_t k = 1; k < hidden.size(); ++k) layers.emplace_back(hidden[k - 1], hidden[k]);
    quality_head = nn::Dense<float>(hidden.back(), experts);
    tokens_head = nn::Dense<float>(hidden.back(), experts);
  }

  void collect(nn::ParameterList<float>& list) {
    embedding.collect_parameters("mlp.embedding", list);
    dense_in.collect_parameters("mlp.dense_in", list);
    for (std::size_t k = 0; k < layers.size(); ++k) {
      layers[k].collect_parameters(fmt::format("mlp.layer{}", k + 1), list);
    }
    quality_head.collect_parameters("mlp.quality_head", list);
    if (predicts_tokens) tokens_head.collect_parameters("mlp.tokens_head", list);
  }
};

// Activations of one batch, kept for the backward pass; also the scorer's
// per-thread workspace, so warm inference allocates nothing.
struct MlpActivations : ScorerWorkspace {
  SparseFeatures features;
  nn::SparseBatch batch;
  Matrix dense_x;
  Matrix embedded, projected;
  std::vector<Matrix> pre;   // pre-activation of each hidden layer
  std::vector<Matrix> post;  // relu of each
  Matrix logits, tokens;
  Matrix d_logits, d_tokens, d_post, d_pre, d_input;
};

void forward(const MlpWeights& w, MlpActivations& a) {
  const std::size_t depth = w.hidden.size();
  a.pre.resize(depth);
  a.post.resize(depth);
  // The bag's rows are summed at the best CPU level this machine runs.
  if (w.int8_table) {
    w.int8_embedding.forward(a.batch, a.embedded, kernels().int8_embedding_bag);
  } else {
    w.embedding.forward(a.batch, a.embedded, kernels().embedding_bag);
  }
  w.dense_in.forward(a.dense_x, a.projected);
  a.pre[0].resize(a.embedded.rows(), a.embedded.cols());
  a.pre[0].noalias() = a.embedded + a.projected;
  nn::relu(a.pre[0], a.post[0]);
  for (std::size_t k = 1; k < depth; ++k) {
    w.layers[k - 1].forward(a.post[k - 1], a.pre[k]);
    nn::relu(a.pre[k], a.post[k]);
  }
  w.quality_head.forward(a.post[depth - 1], a.logits);
  if (w.predicts_tokens) w.tokens_head.forward(a.post[depth - 1], a.tokens);
}

// Standardised numeric features of one prompt into row `row` of `dense_x`.
void put_dense(const MlpWeights& w, const SparseFeatures& f, Matrix& dense_x, nn::Index row) {
  for (nn::Index j = 0; j < kDenseWidth; ++j) {
    dense_x(row, j) =
        (f.dense[static_cast<std::size_t>(j)] - w.dense_mean(0, j)) * w.dense_scale(0, j);
  }
}

// Quality logits to predicted quality, in place.
void logits_to_scores(Loss loss, Matrix& logits) {
  for (nn::Index i = 0; i < logits.rows(); ++i) {
    if (loss == Loss::Bce) {
      for (nn::Index j = 0; j < logits.cols(); ++j) logits(i, j) = nn::sigmoid(logits(i, j));
    } else {
      const float top = logits.row(i).maxCoeff();
      float sum = 0;
      for (nn::Index j = 0; j < logits.cols(); ++j)
        sum += (logits(i, j) = std::exp(logits(i, j) - top));
      logits.row(i) /= sum;
    }
  }
}

// The training rows, featurized once and shared by every replica.
struct MlpInputs {
  std::vector<SparseFeatures> features;
  const TrainingSet* set = nullptr;
};

class MlpNetwork : public Network {
 public:
  MlpNetwork(MlpWeights weights, std::shared_ptr<const MlpInputs> inputs,
             const TrainOptions& options)
      : weights_(std::move(weights)), inputs_(std::move(inputs)), options_(options) {
    weights_.collect(parameters_);
  }
  MlpNetwork(const MlpNetwork& other)
      : Network(), weights_(other.weights_), inputs_(other.inputs_), options_(other.options_) {
    weights_.collect(parameters_);
    parameters_.zero_grad();
  }

  std::unique_ptr<Network> replicate() const override {
    return std::make_unique<MlpNetwork>(*this);
  }
  nn::ParameterList<float>& parameters() override { return parameters_; }
  MlpWeights& weights() { return weights_; }

  double accumulate_gradients(const std::vector<std::size_t>& rows, float weight) override {
    load_batch(rows);
    forward(weights_, a_);
    const double loss = loss_and_gradients();
    a_.d_logits *= weight;
    if (weights_.predicts_tokens) a_.d_tokens *= weight;
    backward();
    return loss;
  }

  double evaluate(const std::vector<std::size_t>& rows, Eigen::MatrixXf& scores) override {
    double total = 0;
    scores.resize(static_cast<Eigen::Index>(rows.size()), weights_.quality_head.outputs());
    std::vector<std::size_t> chunk;
    for (std::size_t begin = 0; begin < rows.size(); begin += 256) {
      const std::size_t end = std::min(rows.size(), begin + 256);
      chunk.assign(rows.begin() + static_cast<long>(begin), rows.begin() + static_cast<long>(end));
      load_batch(chunk);
      forward(weights_, a_);
      total += loss_and_gradients() * static_cast<double>(chunk.size());
      logits_to_scores(weights_.loss, a_.logits);
      scores.middleRows(static_cast<Eigen::Index>(begin), static_cast<Eigen::Index>(chunk.size())) =
          a_.logits;
    }
    return rows.empty() ? 0.0 : total / static_cast<double>(rows.size());
  }

 private:
  void load_batch(const std::vector<std::size_t>& rows) {
    a_.batch.clear();
    a_.dense_x.resize(static_cast<nn::Index>(rows.size()), kDenseWidth);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const SparseFeatures& f = inputs_->features[rows[i]];
      a_.batch.add_row(f.indices.data(), f.values.data(), f.indices.size());
      put_dense(weights_, f, a_.dense_x, static_cast<nn::Index>(i));
    }
    rows_ = &rows;
  }

  // Loss of the loaded batch; leaves d(loss)/d(logits) and d(loss)/d(tokens).
  double loss_and_gradients() {
    const TrainingSet& set = *inputs_->set;
    const auto n = static_cast<nn::Index>(rows_->size());
    const nn::Index experts = weights_.quality_head.outputs();
    targets_.resize(n, experts);
    mask_.resize(n, experts);
    for (nn::Index i = 0; i < n; ++i) {
      const auto r = static_cast<Eigen::Index>((*rows_)[static_cast<std::size_t>(i)]);
      targets_.row(i) = set.quality.row(r);
      mask_.row(i) = set.present.row(r);
    }
    double loss = options_.loss == Loss::Bce
                      ? nn::bce_with_logits(a_.logits, targets_, a_.d_logits, &mask_)
                      : nn::soft_label_cross_entropy(a_.logits, targets_,
                                                     static_cast<float>(options_.temperature),
                                                     a_.d_logits, &mask_);
    if (weights_.predicts_tokens) {
      a_.d_tokens.setZero(n, experts);
      double squared = 0;
      int counted = 0;
      for (nn::Index i = 0; i < n; ++i) {
        const auto r = static_cast<Eigen::Index>((*rows_)[static_cast<std::size_t>(i)]);
        for (nn::Index j = 0; j < experts; ++j) {
          const float t = set.output_tokens(r, j);
          if (!std::isfinite(t)) continue;
          const float diff = a_.tokens(i, j) - std::log1p(t);
          squared += diff * diff;
          a_.d_tokens(i, j) = diff;
          ++counted;
        }
      }
      if (counted > 0) {
        a_.d_tokens *= 2.0f * kTokenLossWeight / static_cast<float>(counted);
        loss += kTokenLossWeight * squared / counted;
      }
    }
    return loss;
  }

  void backward() {
    const std::size_t depth = weights_.hidden.size();
    weights_.quality_head.backward(a_.post[depth - 1], a_.d_logits, &a_.d_post);
    if (weights_.predicts_tokens) {
      weights_.tokens_head.backward(a_.post[depth - 1], a_.d_tokens, &scratch_);
      a_.d_post += scratch_;
    }
    for (std::size_t k = depth; k-- > 0;) {
      nn::relu_backward(a_.pre[k], a_.d_post, a_.d_pre);
      if (k == 0) break;
      weights_.layers[k - 1].backward(a_.post[k - 1], a_.d_pre, &a_.d_post);
    }
    weights_.dense_in.backward(a_.dense_x, a_.d_pre, nullptr);
    weights_.embedding.backward(a_.batch, a_.d_pre);
  }

  MlpWeights weights_;
  std::shared_ptr<const MlpInputs> inputs_;
  TrainOptions options_;
  nn::ParameterList<float> parameters_;
  MlpActivations a_;
  Matrix targets_, mask_, scratch_;
  const std::vector<std::size_t>* rows_ = nullptr;
};

class MlpScorer : public TrainableScorer, public FeaturizedScorer {
 public:
  explicit MlpScorer(const ScorerSpec& spec) {
    std::string widths = spec.argument.empty() ? "128" : spec.argument;
    std::size_t start = 0;
    while (start <= widths.size()) {
      const std::size_t x = widths.find('x', start);
      const std::string part =
          widths.substr(start, x == std::string::npos ? std::string::npos : x - start);
      weights_.hidden.push_back(static_cast<nn::Index>(parse_integer(
          part, 1, 4096, fmt::format("scorer spec \"{}\", hidden width", spec.text))));
      if (x == std::string::npos) break;
      start = x + 1;
    }
    weights_.featurizer.num_buckets =
        static_cast<std::uint32_t>(spec.integer_option("buckets", 1 << 15, 16, 1 << 22));
    const std::string table = spec.text_option("table", "float");
    if (table != "float" && table != "int8") {
      throw Error(fmt::format("scorer spec \"{}\": table must be float or int8, got \"{}\"",
                              spec.text, table));
    }
    int8_after_training_ = table == "int8";
    spec_ = fmt::format("mlp:{}", fmt::join(weights_.hidden, "x"));
    if (weights_.featurizer.num_buckets != (1u << 15)) {
      spec_ += fmt::format(",buckets={}", weights_.featurizer.num_buckets);
    }
    if (int8_after_training_) spec_ += ",table=int8";
    featurizer_ = Featurizer(weights_.featurizer);
  }

  std::string_view kind() const override { return "mlp"; }
  std::string spec() const override { return spec_; }

  std::unique_ptr<ScorerWorkspace> make_workspace() const override {
    return std::make_unique<MlpActivations>();
  }

  void score_uncalibrated(const std::string_view* prompts, std::size_t count, ScoreBatch& out,
                          ScorerWorkspace* workspace) const override {
    std::unique_ptr<ScorerWorkspace> local;
    auto* a = &workspace_for_call<MlpActivations>(*this, workspace, local);
    start_batch(count, *a);
    for (std::size_t i = 0; i < count; ++i) {
      featurizer_.featurize(prompts[i], a->features);
      add_row(a->features, i, *a);
    }
    finish_batch(out, *a);
  }

  const FeaturizerOptions& featurizer_options() const override { return weights_.featurizer; }

  void score_featurized(const SparseFeatures* features, std::size_t count, ScoreBatch& out,
                        ScorerWorkspace* workspace) const override {
    std::unique_ptr<ScorerWorkspace> local;
    auto* a = &workspace_for_call<MlpActivations>(*this, workspace, local);
    start_batch(count, *a);
    for (std::size_t i = 0; i < count; ++i) add_row(features[i], i, *a);
    finish_batch(out, *a);
  }

 protected:
  TrainReport fit(const TrainingSet& set, const TrainOptions& options) override {
    weights_.loss = options.loss;
    weights_.predicts_tokens = set.has_output_tokens();
    auto inputs = std::make_shared<MlpInputs>();
    inputs->set = &set;
    inputs->features.resize(set.rows());
    // Each row keeps only its features, at their size; the featurizer's
    // working memory stays with the one object it reuses.
    SparseFeatures features;
    for (std::size_t i = 0; i < set.rows(); ++i) {
      featurizer_.featurize(set.prompts[i], features);
      SparseFeatures& row = inputs->features[i];
      row.indices = features.indices;
      row.values = features.values;
      row.dense = features.dense;
    }
    standardize(inputs->features);

    weights_.build(static_cast<nn::Index>(set.experts.size()));
    nn::Rng rng(options.seed);
    weights_.embedding.init(rng);
    weights_.dense_in.init(rng);
    for (auto& layer : weights_.layers) layer.init(rng);
    weights_.quality_head.init(rng);
    weights_.tokens_head.init(rng);
    // Start the length head at each expert's mean log length, so training
    // spends its steps on what varies between prompts.
    for (nn::Index e = 0; e < weights_.tokens_head.outputs(); ++e) {
      double sum = 0;
      int count = 0;
      for (Eigen::Index r = 0; r < set.output_tokens.rows(); ++r) {
        const float t = set.output_tokens(r, e);
        if (std::isfinite(t)) {
          sum += std::log1p(t);
          ++count;
        }
      }
      weights_.tokens_head.bias()(0, e) = count > 0 ? static_cast<float>(sum / count) : 0.0f;
    }

    MlpNetwork network(std::move(weights_), inputs, options);
    TrainReport report = train_network(network, set, options);
    weights_ = std::move(network.weights());
    if (int8_after_training_) serve_int8_table();
    return report;
  }

  void write_model(ModelWriter& out) const override {
    write_featurizer_options(out, weights_.featurizer);
    std::vector<double> hidden(weights_.hidden.begin(), weights_.hidden.end());
    out.set("mlp.hidden", hidden);
    out.set("mlp.predicts_tokens", weights_.predicts_tokens);
    out.set("mlp.output", std::string(weights_.loss == Loss::Bce ? "sigmoid" : "softmax"));
    out.add_tensor("mlp.dense_mean", weights_.dense_mean);
    out.add_tensor("mlp.dense_scale", weights_.dense_scale);
    out.set("mlp.embedding.storage", std::string(weights_.int8_table ? "int8" : "float"));
    nn::ParameterList<float> list;
    const_cast<MlpWeights&>(weights_).collect(list);
    for (const auto& p : list) {
      if (weights_.int8_table && p.value == &weights_.embedding.table()) {
        out.add_tensor(p.name, weights_.int8_embedding.dequantized());
      } else {
        out.add_tensor(p.name, *p.value);
      }
    }
  }

  void read_model(const ModelReader& in) override {
    const FeaturizerOptions f = read_featurizer_options(in, 1u << 24);
    weights_.featurizer = f;
    try {
      featurizer_ = Featurizer(f);
    } catch (const Error& e) {
      throw Error(in.where() + e.what());
    }
    weights_.hidden.clear();
    for (double h : in.numbers("mlp.hidden")) {
      if (h < 1 || h > 4096 || h != std::floor(h))
        throw Error(in.where() + "field \"mlp.hidden\": bad width");
      weights_.hidden.push_back(static_cast<nn::Index>(h));
    }
    if (weights_.hidden.empty()) throw Error(in.where() + "field \"mlp.hidden\": no layer");
    spec_ = in.text("scorer.spec");
    weights_.predicts_tokens = in.flag("mlp.predicts_tokens");
    const std::string& output = in.text("mlp.output");
    if (output != "sigmoid" && output != "softmax") {
      throw Error(in.where() + "field \"mlp.output\": expected sigmoid or softmax");
    }
    weights_.loss = output == "sigmoid" ? Loss::Bce : Loss::Soft;
    // The embedding table is checked before anything is allocated, so a
    // forged width or bucket count cannot ask for more memory than the file holds.
    in.tensor("mlp.embedding.table", {f.num_buckets, weights_.hidden[0]});
    weights_.build(static_cast<nn::Index>(expert_names().size()));
    in.tensor("mlp.dense_mean", 1, kDenseWidth, weights_.dense_mean);
    in.tensor("mlp.dense_scale", 1, kDenseWidth, weights_.dense_scale);
    nn::ParameterList<float> list;
    weights_.collect(list);
    for (auto& p : list) in.tensor(p.name, p.value->rows(), p.value->cols(), *p.value);
    // Files written before the field existed hold float tables.
    const std::string storage =
        in.has("mlp.embedding.storage") ? in.text("mlp.embedding.storage") : "float";
    if (storage != "float" && storage != "int8") {
      throw Error(in.where() + "field \"mlp.embedding.storage\": expected float or int8, got \"" +
                  storage + "\"");
    }
    weights_.int8_table = false;
    if (storage == "int8") serve_int8_table();
  }

 private:
  void start_batch(std::size_t count, MlpActivations& a) const {
    a.batch.clear();
    a.dense_x.resize(static_cast<nn::Index>(count), kDenseWidth);
  }

  void add_row(const SparseFeatures& features, std::size_t row, MlpActivations& a) const {
    a.batch.add_row(features.indices.data(), features.values.data(), features.indices.size());
    put_dense(weights_, features, a.dense_x, static_cast<nn::Index>(row));
  }

  // The forward pass over the rows added, into `out`.
  void finish_batch(ScoreBatch& out, MlpActivations& a) const {
    const auto experts = static_cast<std::size_t>(weights_.quality_head.outputs());
    out.resize(static_cast<std::size_t>(a.dense_x.rows()), experts);
    forward(weights_, a);
    logits_to_scores(weights_.loss, a.logits);
    out.quality = a.logits;
    if (weights_.predicts_tokens) {
      out.output_tokens = a.tokens.array().exp() - 1.0f;
      out.output_tokens = out.output_tokens.cwiseMax(0.0f);
    } else {
      out.clear_output_tokens();
    }
  }
  // Numeric features to zero mean and unit variance over the training rows.
  void standardize(const std::vector<SparseFeatures>& rows) {
    weights_.dense_mean = Matrix::Zero(1, kDenseWidth);
    weights_.dense_scale = Matrix::Ones(1, kDenseWidth);
    for (nn::Index j = 0; j < kDenseWidth; ++j) {
      double sum = 0, squares = 0;
      for (const auto& f : rows) {
        const double v = f.dense[static_cast<std::size_t>(j)];
        sum += v;
        squares += v * v;
      }
      const double n = static_cast<double>(rows.size());
      const double mean = sum / n;
      const double variance = std::max(0.0, squares / n - mean * mean);
      weights_.dense_mean(0, j) = static_cast<float>(mean);
      weights_.dense_scale(0, j) =
          variance > 1e-12 ? static_cast<float>(1.0 / std::sqrt(variance)) : 1.0f;
    }
  }

  // Quantizes the trained table and frees the float one and its gradient
  // (write_model rebuilds the table from the int8 one, so the file holds
  // what routing uses).
  void serve_int8_table() {
    weights_.int8_embedding = nn::Int8EmbeddingBag(weights_.embedding.table());
    weights_.int8_table = true;
    weights_.embedding = nn::EmbeddingBag<float>();
  }

  MlpWeights weights_;
  Featurizer featurizer_;
  std::string spec_;
  bool int8_after_training_ = false;
};

}  // namespace

std::unique_ptr<TrainableScorer> make_mlp_scorer(const ScorerSpec& spec) {
  return std::make_unique<MlpScorer>(spec);
}

}  // namespace detail
TOROUTER_END_NAMESPACE
