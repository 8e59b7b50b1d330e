// The transformer-lite scorer: hashed word tokens through a small pre-norm
// transformer encoder, mean pooled, with the MLP's per-expert heads (the
// network is in tlite_model.hpp).
//
// Spec: "tlite" or "tlite:D" (model width D, default 64) with options
//   layers=N   encoder layers (2)        heads=N    attention heads (4)
//   ff=N       feed-forward width (256)  tokens=N   words read per prompt (64)
//   buckets=N  word hash buckets (16384)
// e.g. "tlite:64,layers=1,tokens=32". A prompt longer than `tokens` words is
// scored on its first `tokens` words.
//
// Training runs one sequence at a time through TliteModel (with backward);
// scoring packs the prompts' real tokens together (tlite_packed.hpp), in
// chunks of up to kPackedRows rows, so nothing is spent on padding and the
// products are large.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kernels/kernel_table.hpp"
#include "scorers.hpp"
#include "tlite_model.hpp"
#include "tlite_packed.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"
#include "torouter/features.hpp"
#include "trainer.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

using Matrix = nn::Matrix<float>;
using Model = TliteModel<float>;
constexpr TliteShape kDefaultShape{};

// Rows packed into one serving pass: enough for large products, small
// enough that the buffers stay a few megabytes.
constexpr nn::Index kPackedRows = 512;

// The scorer's per-thread scratch, sized once, so a warm call allocates
// nothing: one prompt's ids, the packed ids of a chunk with each prompt's
// first row, and the packed pass's buffers.
struct TliteWorkspace : ScorerWorkspace {
  std::vector<std::uint32_t> prompt_ids, ids;
  std::vector<nn::Index> starts;
  TlitePackedBuffers buffers;
  Matrix pooled, logits, tokens;
};

class TliteNetwork : public Network {
 public:
  TliteNetwork(Model model, std::shared_ptr<const TliteInputs> inputs, const TrainOptions& options)
      : model_(std::move(model)), inputs_(std::move(inputs)), options_(options) {
    model_.collect_parameters(parameters_);
  }
  TliteNetwork(const TliteNetwork& other)
      : Network(), model_(other.model_), inputs_(other.inputs_), options_(other.options_) {
    model_.collect_parameters(parameters_);
    parameters_.zero_grad();
  }

  std::unique_ptr<Network> replicate() const override {
    return std::make_unique<TliteNetwork>(*this);
  }
  nn::ParameterList<float>& parameters() override { return parameters_; }
  Model& model() { return model_; }

  double accumulate_gradients(const std::vector<std::size_t>& rows, float weight) override {
    return tlite_batch_loss(model_, *inputs_, rows, options_.loss,
                            static_cast<float>(options_.temperature), weight, true, scratch_);
  }

  double evaluate(const std::vector<std::size_t>& rows, Eigen::MatrixXf& scores) override {
    return tlite_batch_loss(model_, *inputs_, rows, options_.loss,
                            static_cast<float>(options_.temperature), 1.0f, false, scratch_,
                            &scores);
  }

 private:
  Model model_;
  std::shared_ptr<const TliteInputs> inputs_;
  TrainOptions options_;
  nn::ParameterList<float> parameters_;
  TliteBatchScratch<float> scratch_;
};

class TliteScorer : public TrainableScorer {
 public:
  explicit TliteScorer(const ScorerSpec& spec) {
    const std::string what = fmt::format("scorer spec \"{}\"", spec.text);
    if (!spec.argument.empty()) {
      shape_.d_model =
          static_cast<nn::Index>(parse_integer(spec.argument, 1, 2048, what + ", model width"));
    }
    shape_.layers =
        static_cast<nn::Index>(spec.integer_option("layers", kDefaultShape.layers, 1, 16));
    shape_.heads = static_cast<nn::Index>(spec.integer_option("heads", kDefaultShape.heads, 1, 64));
    shape_.ff = static_cast<nn::Index>(spec.integer_option("ff", kDefaultShape.ff, 1, 8192));
    shape_.max_tokens =
        static_cast<nn::Index>(spec.integer_option("tokens", kDefaultShape.max_tokens, 1, 256));
    shape_.buckets = static_cast<std::uint32_t>(
        spec.integer_option("buckets", kDefaultShape.buckets, 16, 1 << 20));
    if (shape_.d_model % shape_.heads != 0) {
      throw Error(fmt::format("{}: model width {} is not a multiple of heads={}", what,
                              shape_.d_model, shape_.heads));
    }
    spec_ = canonical_spec(shape_);
    set_featurizer(0);
  }

  std::string_view kind() const override { return "tlite"; }
  std::string spec() const override { return spec_; }

  std::unique_ptr<ScorerWorkspace> make_workspace() const override {
    auto w = std::make_unique<TliteWorkspace>();
    const nn::Index rows = std::max(kPackedRows, shape_.max_tokens);
    w->prompt_ids.reserve(static_cast<std::size_t>(shape_.max_tokens));
    w->ids.reserve(static_cast<std::size_t>(rows));
    w->starts.reserve(static_cast<std::size_t>(rows) + 1);
    w->buffers.reserve(shape_, rows);
    return w;
  }

  void score_uncalibrated(const std::string_view* prompts, std::size_t count, ScoreBatch& out,
             ScorerWorkspace* workspace) const override {
    std::unique_ptr<ScorerWorkspace> local;
    auto* w = &workspace_for_call<TliteWorkspace>(*this, workspace, local);
    const auto experts = static_cast<std::size_t>(model_.experts());
    // tlite_encode_packed, compiled for the best CPU level this machine runs.
    const auto encode = kernels().encode_packed;
    out.resize(count, experts);
    w->pooled.resize(static_cast<nn::Index>(count), shape_.d_model);
    // Prompts join the chunk until the next would overflow the buffers.
    std::size_t first = 0;
    w->ids.clear();
    w->starts.assign(1, 0);
    for (std::size_t i = 0; i < count; ++i) {
      featurizer_.token_ids(prompts[i], static_cast<std::size_t>(shape_.max_tokens), w->prompt_ids);
      if (w->prompt_ids.empty()) w->prompt_ids.push_back(shape_.buckets);  // the empty prompt's token
      const auto length = static_cast<nn::Index>(w->prompt_ids.size());
      if (w->starts.back() + length > w->buffers.capacity_rows) {
        encode(model_, w->ids.data(), w->starts, w->buffers, w->pooled,
               static_cast<nn::Index>(first));
        first = i;
        w->ids.clear();
        w->starts.assign(1, 0);
      }
      w->ids.insert(w->ids.end(), w->prompt_ids.begin(), w->prompt_ids.end());
      w->starts.push_back(w->starts.back() + length);
    }
    if (count > 0) {
      encode(model_, w->ids.data(), w->starts, w->buffers, w->pooled,
             static_cast<nn::Index>(first));
    }
    model_.heads_forward(w->pooled, w->logits, w->tokens);
    tlite_logits_to_scores(loss_, w->logits);
    out.quality = w->logits;
    if (model_.predicts_tokens()) {
      out.output_tokens = w->tokens.array().exp() - 1.0f;
      out.output_tokens = out.output_tokens.cwiseMax(0.0f);
    } else {
      out.clear_output_tokens();
    }
  }

 protected:
  TrainReport fit(const TrainingSet& set, const TrainOptions& options) override {
    loss_ = options.loss;
    auto inputs = std::make_shared<TliteInputs>();
    inputs->set = &set;
    inputs->ids.resize(set.rows());
    for (std::size_t i = 0; i < set.rows(); ++i) {
      featurizer_.token_ids(set.prompts[i], static_cast<std::size_t>(shape_.max_tokens),
                            inputs->ids[i]);
    }
    Model model(shape_, static_cast<nn::Index>(set.experts.size()), set.has_output_tokens());
    nn::Rng rng(options.seed);
    model.init(rng);
    TliteNetwork network(std::move(model), inputs, options);
    TrainReport report = train_network(network, set, options);
    model_ = std::move(network.model());
    return report;
  }

  void write_model(ModelWriter& out) const override {
    out.set("featurizer.num_buckets", static_cast<std::uint64_t>(shape_.buckets));
    out.set("featurizer.hash_seed", static_cast<std::uint64_t>(featurizer_.options().hash_seed));
    out.set("tlite.d_model", static_cast<std::int64_t>(shape_.d_model));
    out.set("tlite.heads", static_cast<std::int64_t>(shape_.heads));
    out.set("tlite.ff", static_cast<std::int64_t>(shape_.ff));
    out.set("tlite.layers", static_cast<std::int64_t>(shape_.layers));
    out.set("tlite.max_tokens", static_cast<std::int64_t>(shape_.max_tokens));
    out.set("tlite.predicts_tokens", model_.predicts_tokens());
    out.set("tlite.output", std::string(loss_ == Loss::Bce ? "sigmoid" : "softmax"));
    nn::ParameterList<float> list;
    const_cast<Model&>(model_).collect_parameters(list);
    for (const auto& p : list) out.add_tensor(p.name, *p.value);
  }

  void read_model(const ModelReader& in) override {
    TliteShape shape;
    shape.buckets = static_cast<std::uint32_t>(in.integer("featurizer.num_buckets", 16, 1 << 20));
    shape.d_model = static_cast<nn::Index>(in.integer("tlite.d_model", 1, 2048));
    shape.heads = static_cast<nn::Index>(in.integer("tlite.heads", 1, 64));
    shape.ff = static_cast<nn::Index>(in.integer("tlite.ff", 1, 8192));
    shape.layers = static_cast<nn::Index>(in.integer("tlite.layers", 1, 16));
    shape.max_tokens = static_cast<nn::Index>(in.integer("tlite.max_tokens", 1, 256));
    if (shape.d_model % shape.heads != 0) {
      throw Error(in.where() + "field \"tlite.d_model\": not a multiple of \"tlite.heads\"");
    }
    shape_ = shape;
    spec_ = in.text("scorer.spec");
    set_featurizer(static_cast<std::uint64_t>(in.integer("featurizer.hash_seed", 0)));
    const std::string& output = in.text("tlite.output");
    if (output != "sigmoid" && output != "softmax") {
      throw Error(in.where() + "field \"tlite.output\": expected sigmoid or softmax");
    }
    loss_ = output == "sigmoid" ? Loss::Bce : Loss::Soft;
    // The largest tensors' shapes are checked before the model is allocated,
    // so forged sizes cannot ask for more memory than the file holds.
    in.tensor("tlite.token_embedding", {static_cast<std::int64_t>(shape.buckets) + 1, shape.d_model});
    for (nn::Index k = 1; k <= shape.layers; ++k) {
      in.tensor(fmt::format("tlite.layer{}.ff1.weight", k), {shape.d_model, shape.ff});
    }
    model_ = Model(shape_, static_cast<nn::Index>(expert_names().size()),
                   in.flag("tlite.predicts_tokens"));
    nn::ParameterList<float> list;
    model_.collect_parameters(list);
    for (auto& p : list) in.tensor(p.name, p.value->rows(), p.value->cols(), *p.value);
  }

 private:
  static std::string canonical_spec(const TliteShape& s) {
    std::string text = fmt::format("tlite:{}", s.d_model);
    if (s.layers != kDefaultShape.layers) text += fmt::format(",layers={}", s.layers);
    if (s.heads != kDefaultShape.heads) text += fmt::format(",heads={}", s.heads);
    if (s.ff != kDefaultShape.ff) text += fmt::format(",ff={}", s.ff);
    if (s.max_tokens != kDefaultShape.max_tokens) text += fmt::format(",tokens={}", s.max_tokens);
    if (s.buckets != kDefaultShape.buckets) text += fmt::format(",buckets={}", s.buckets);
    return text;
  }

  // Only word unigrams are read (`token_ids`); the other options stay at
  // their defaults and are not stored.
  void set_featurizer(std::uint64_t hash_seed) {
    FeaturizerOptions f;
    f.num_buckets = shape_.buckets;
    f.hash_seed = hash_seed;
    featurizer_ = Featurizer(f);
  }

  TliteShape shape_;
  Loss loss_ = Loss::Bce;
  Model model_;
  Featurizer featurizer_;
  std::string spec_;
};

}  // namespace

std::unique_ptr<TrainableScorer> make_tlite_scorer(const ScorerSpec& spec) {
  return std::make_unique<TliteScorer>(spec);
}

}  // namespace detail
TOROUTER_END_NAMESPACE
