// Internal: the transformer-lite network, templated on the scalar so the
// tests can check its gradients in double while the scorer trains and serves
// in float.
//
//   x_i    = token_embedding[id_i] + position_embedding[i]     i < length
//   h      = EncoderLayer_L(... EncoderLayer_1(x))             pre-norm, masked
//   pooled = mean over the real positions of LayerNorm(h)
//   quality logits = Dense(pooled)  -> sigmoid (Loss::Bce) or softmax (Loss::Soft)
//   log(1 + output tokens) = Dense(pooled)
//
// Token ids are the featurizer's hashed words, the first `max_tokens` of a
// prompt (the rest is not read). The embedding table has one row more than
// the featurizer has buckets: row `buckets` is the token of an empty prompt,
// so every prompt has at least one position to pool over.
//
// A sequence may be padded to more rows than it has tokens; padded rows are
// computed but never attended to nor pooled, so they change nothing. The
// scorer serves through tlite_packed.hpp instead, which needs no padding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "nn/activations.hpp"
#include "nn/dense.hpp"
#include "nn/encoder_layer.hpp"
#include "nn/layer_norm.hpp"
#include "nn/losses.hpp"
#include "nn/parameters.hpp"
#include "torouter/abi.hpp"
#include "torouter/train.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

/// The sizes of a transformer-lite network.
struct TliteShape {
  /// Model width; a multiple of `heads`.
  nn::Index d_model = 64;
  /// Attention heads per layer.
  nn::Index heads = 4;
  /// Feed-forward width.
  nn::Index ff = 256;
  /// Encoder layers.
  nn::Index layers = 2;
  /// Words read from a prompt, and rows of the position table.
  nn::Index max_tokens = 64;
  /// Featurizer hash buckets; the token table has one more row.
  std::uint32_t buckets = 1u << 14;
};

/// The output-token head's share of the loss, as the MLP's: answer length
/// matters for cost but must not drown the quality signal.
inline constexpr double kTliteTokenLossWeight = 0.1;

/// Weights and their gradients.
template <typename Scalar>
class TliteModel {
 public:
  using Mat = nn::Matrix<Scalar>;
  using Layer = nn::EncoderLayer<Scalar>;

  /// One sequence's activations, kept for its backward pass; reused across
  /// calls.
  struct Sequence {
    /// The ids encoded (`count` of them) and the real length (>= 1).
    const std::uint32_t* ids = nullptr;
    std::size_t count = 0;
    nn::Index length = 0;
    /// Stands in for the ids of an empty prompt.
    std::uint32_t empty_id = 0;
    /// Embedded input, positions x d_model.
    Mat input;
    /// Each layer's output and cache.
    std::vector<Mat> outputs;
    std::vector<typename Layer::Cache> caches;
    /// LayerNorm of the last output.
    Mat normed;
    typename nn::LayerNorm<Scalar>::Cache final_cache;
    /// Scratch for backward.
    Mat d_normed, d_a, d_b;
  };

  TliteModel() = default;
  /// A zero-initialised network for `experts` experts; `predicts_tokens`
  /// adds the output-token head.
  TliteModel(const TliteShape& shape, nn::Index experts, bool predicts_tokens)
      : shape_(shape),
        predicts_tokens_(predicts_tokens),
        token_table_(Mat::Zero(static_cast<nn::Index>(shape.buckets) + 1, shape.d_model)),
        token_grad_(Mat::Zero(static_cast<nn::Index>(shape.buckets) + 1, shape.d_model)),
        position_table_(Mat::Zero(shape.max_tokens, shape.d_model)),
        position_grad_(Mat::Zero(shape.max_tokens, shape.d_model)),
        layers_(static_cast<std::size_t>(shape.layers),
                Layer(shape.d_model, shape.heads, shape.ff)),
        final_norm_(shape.d_model),
        quality_head_(shape.d_model, experts),
        tokens_head_(shape.d_model, experts) {}

  /// Embeddings uniform in +-1/sqrt(d_model); projections Glorot-uniform.
  void init(nn::Rng& rng) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(shape_.d_model));
    nn::fill_uniform(token_table_, bound, rng);
    nn::fill_uniform(position_table_, bound, rng);
    for (auto& layer : layers_) layer.init(rng);
    quality_head_.init(rng);
    tokens_head_.init(rng);
  }

  /// Appends every parameter under "tlite." (the token head only when
  /// predicted); model files key on these names.
  void collect_parameters(nn::ParameterList<Scalar>& list) {
    // Embedding tables are decayed like the MLP's; the token table's
    // gradient is sparse (the rows of the batch's words).
    list.add({"tlite.token_embedding", &token_table_, &token_grad_, true, &touched_});
    list.add({"tlite.position_embedding", &position_table_, &position_grad_, true, nullptr});
    for (std::size_t k = 0; k < layers_.size(); ++k) {
      layers_[k].collect_parameters("tlite.layer" + std::to_string(k + 1), list);
    }
    final_norm_.collect_parameters("tlite.final_norm", list);
    quality_head_.collect_parameters("tlite.quality_head", list);
    if (predicts_tokens_) tokens_head_.collect_parameters("tlite.tokens_head", list);
  }

  const TliteShape& shape() const { return shape_; }
  bool predicts_tokens() const { return predicts_tokens_; }
  nn::Index experts() const { return quality_head_.outputs(); }
  /// The weights, for the packed serving pass (tlite_packed.hpp).
  const Mat& token_table() const { return token_table_; }
  const Mat& position_table() const { return position_table_; }
  const std::vector<Layer>& layers() const { return layers_; }
  const nn::LayerNorm<Scalar>& final_norm() const { return final_norm_; }

  /// Encodes ids[0 .. count) (count <= max_tokens; none is the empty token)
  /// in a sequence of `positions` rows (>= max(count, 1), <= max_tokens) and
  /// sets pooled.row(row) to the mean of the final norm over the real
  /// positions, keeping what encode_backward needs.
  void encode(const std::uint32_t* ids, std::size_t count, nn::Index positions, Sequence& s,
              Mat& pooled, nn::Index row) const {
    s.empty_id = shape_.buckets;
    s.ids = count == 0 ? &s.empty_id : ids;
    s.count = count == 0 ? 1 : count;
    s.length = static_cast<nn::Index>(s.count);
    s.input.resize(positions, shape_.d_model);
    for (nn::Index i = 0; i < s.length; ++i) {
      s.input.row(i) = token_table_.row(static_cast<nn::Index>(s.ids[i])) + position_table_.row(i);
    }
    // Padding rows need only be finite.
    for (nn::Index i = s.length; i < positions; ++i) s.input.row(i) = position_table_.row(i);
    s.outputs.resize(layers_.size());
    s.caches.resize(layers_.size());
    const Mat* x = &s.input;
    for (std::size_t k = 0; k < layers_.size(); ++k) {
      layers_[k].forward(*x, s.length, s.outputs[k], s.caches[k]);
      x = &s.outputs[k];
    }
    final_norm_.forward(*x, s.normed, s.final_cache);
    pooled.row(row) = s.normed.topRows(s.length).colwise().sum() / static_cast<Scalar>(s.length);
  }

  /// Accumulates the gradients of the sequence's parameters from the
  /// gradient of its pooled row, d_pooled.row(row). Needs the sequence's
  /// attention weights (encode it without a pool).
  void encode_backward(Sequence& s, const Mat& d_pooled, nn::Index row) {
    const nn::Index positions = s.input.rows();
    s.d_normed.setZero(positions, shape_.d_model);
    s.d_normed.topRows(s.length).rowwise() = d_pooled.row(row) / static_cast<Scalar>(s.length);
    final_norm_.backward(s.final_cache, s.d_normed, s.d_a);
    for (std::size_t k = layers_.size(); k-- > 0;) {
      layers_[k].backward(s.caches[k], s.d_a, s.d_b);
      std::swap(s.d_a, s.d_b);
    }
    for (nn::Index i = 0; i < s.length; ++i) {
      const auto id = static_cast<nn::Index>(s.ids[i]);
      token_grad_.row(id) += s.d_a.row(i);
      touched_.push_back(id);
      position_grad_.row(i) += s.d_a.row(i);
    }
    // AdamW's lazy update steps each listed row once: keep them unique.
    std::sort(touched_.begin(), touched_.end());
    touched_.erase(std::unique(touched_.begin(), touched_.end()), touched_.end());
  }

  /// Quality logits and (when predicted) log(1 + tokens) of pooled rows.
  void heads_forward(const Mat& pooled, Mat& logits, Mat& tokens) const {
    quality_head_.forward(pooled, logits);
    if (predicts_tokens_) tokens_head_.forward(pooled, tokens);
  }

  /// Accumulates the heads' gradients and sets d_pooled.
  void heads_backward(const Mat& pooled, const Mat& d_logits, const Mat& d_tokens, Mat& d_pooled,
                      Mat& scratch) {
    quality_head_.backward(pooled, d_logits, &d_pooled);
    if (predicts_tokens_) {
      tokens_head_.backward(pooled, d_tokens, &scratch);
      d_pooled += scratch;
    }
  }

 private:
  TliteShape shape_;
  bool predicts_tokens_ = false;
  Mat token_table_, token_grad_;
  std::vector<nn::Index> touched_;
  Mat position_table_, position_grad_;
  std::vector<Layer> layers_;
  nn::LayerNorm<Scalar> final_norm_;
  nn::Dense<Scalar> quality_head_;
  nn::Dense<Scalar> tokens_head_;
};

/// Quality logits to predicted quality, in place: sigmoid for Loss::Bce,
/// softmax over the experts for Loss::Soft.
template <typename Scalar>
void tlite_logits_to_scores(Loss loss, nn::Matrix<Scalar>& logits) {
  for (nn::Index i = 0; i < logits.rows(); ++i) {
    if (loss == Loss::Bce) {
      for (nn::Index j = 0; j < logits.cols(); ++j) logits(i, j) = nn::sigmoid(logits(i, j));
    } else {
      const Scalar top = logits.row(i).maxCoeff();
      Scalar sum = 0;
      for (nn::Index j = 0; j < logits.cols(); ++j)
        sum += (logits(i, j) = std::exp(logits(i, j) - top));
      logits.row(i) /= sum;
    }
  }
}

/// Token ids of every training row, made once and shared by the replicas.
struct TliteInputs {
  const TrainingSet* set = nullptr;
  std::vector<std::vector<std::uint32_t>> ids;
};

/// Buffers of `tlite_batch_loss`, reused across batches.
template <typename Scalar>
struct TliteBatchScratch {
  typename TliteModel<Scalar>::Sequence sequence;
  nn::Matrix<Scalar> pooled, logits, tokens, targets, mask, d_logits, d_tokens, d_pooled, scratch;
};

/// The mean loss of `rows` of the set, the same loss as the MLP's: per-expert
/// BCE averaged over the present (row, expert) pairs, or the soft-label
/// cross-entropy averaged over the rows with a present expert; plus
/// kTliteTokenLossWeight times the squared error of log(1 + output tokens)
/// averaged over the known pairs. With `backward`, adds `weight` times its
/// gradient to the model's gradients. With `scores`, fills one row of
/// predicted quality per entry of `rows`.
///
/// Rows go one at a time through forward and backward (the normalisers of
/// the batch means are counted first), so a batch keeps one sequence's
/// activations, not a batch's.
template <typename Scalar>
double tlite_batch_loss(TliteModel<Scalar>& model, const TliteInputs& inputs,
                        const std::vector<std::size_t>& rows, Loss loss, Scalar temperature,
                        Scalar weight, bool backward, TliteBatchScratch<Scalar>& s,
                        Eigen::MatrixXf* scores = nullptr) {
  const TrainingSet& set = *inputs.set;
  const nn::Index experts = model.experts();
  const bool tokens = model.predicts_tokens();
  double present_pairs = 0, present_rows = 0, token_pairs = 0;
  for (std::size_t r : rows) {
    const auto row = static_cast<Eigen::Index>(r);
    const double present = set.present.row(row).sum();
    present_pairs += present;
    present_rows += present > 0 ? 1 : 0;
    if (tokens) {
      for (nn::Index j = 0; j < experts; ++j)
        token_pairs += std::isfinite(set.output_tokens(row, j)) ? 1 : 0;
    }
  }
  if (scores != nullptr) scores->resize(static_cast<Eigen::Index>(rows.size()), experts);
  s.pooled.resize(1, model.shape().d_model);
  s.targets.resize(1, experts);
  s.mask.resize(1, experts);
  double total = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto row = static_cast<Eigen::Index>(rows[i]);
    const auto& ids = inputs.ids[rows[i]];
    const auto length = static_cast<nn::Index>(std::max<std::size_t>(ids.size(), 1));
    model.encode(ids.data(), ids.size(), length, s.sequence, s.pooled, 0);
    model.heads_forward(s.pooled, s.logits, s.tokens);
    s.targets.row(0) = set.quality.row(row).template cast<Scalar>();
    s.mask.row(0) = set.present.row(row).template cast<Scalar>();
    // One row's loss is that row's mean; rescaled to its share of the batch mean.
    if (loss == Loss::Bce) {
      const double present = static_cast<double>(s.mask.sum());
      const double l =
          static_cast<double>(nn::bce_with_logits(s.logits, s.targets, s.d_logits, &s.mask));
      if (present > 0) {
        total += l * present / present_pairs;
        s.d_logits *= static_cast<Scalar>(present / present_pairs);
      }
    } else {
      total += static_cast<double>(nn::soft_label_cross_entropy(s.logits, s.targets, temperature,
                                                                s.d_logits, &s.mask)) /
               std::max(present_rows, 1.0);
      s.d_logits /= static_cast<Scalar>(std::max(present_rows, 1.0));
    }
    if (tokens) {
      s.d_tokens.setZero(1, experts);
      for (nn::Index j = 0; j < experts; ++j) {
        const float t = set.output_tokens(row, j);
        if (!std::isfinite(t)) continue;
        const Scalar diff = s.tokens(0, j) - std::log1p(static_cast<Scalar>(t));
        total += kTliteTokenLossWeight * static_cast<double>(diff * diff) / token_pairs;
        s.d_tokens(0, j) = static_cast<Scalar>(2 * kTliteTokenLossWeight / token_pairs) * diff;
      }
    }
    if (backward) {
      s.d_logits *= weight;
      if (tokens) s.d_tokens *= weight;
      model.heads_backward(s.pooled, s.d_logits, s.d_tokens, s.d_pooled, s.scratch);
      model.encode_backward(s.sequence, s.d_pooled, 0);
    }
    if (scores != nullptr) {
      tlite_logits_to_scores(loss, s.logits);
      scores->row(static_cast<Eigen::Index>(i)) = s.logits.row(0).template cast<float>();
    }
  }
  return total;
}

}  // namespace detail
TOROUTER_END_NAMESPACE
