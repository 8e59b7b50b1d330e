// nn/losses.hpp (internal, not installed): the two training losses of the scorers, each
// returning the loss and setting its gradient with respect to the logits.
// Rows are prompts, columns experts.
//
// - `bce_with_logits`: per-expert binary cross-entropy of sigmoid(logit)
//   against a quality target in [0, 1], averaged over the present targets.
// - `soft_label_cross_entropy`: TO-Router's loss, the cross-entropy of
//   softmax(logits) against softmax(targets / T) over the experts of a row,
//   averaged over rows.
//
//   Matrix<float> grad;
//   float loss = torouter::nn::bce_with_logits(logits, quality, grad, &mask);
//   head.backward(hidden, grad, &dhidden);
//
// A mask (same shape, non-zero where a target is present) leaves missing
// targets out: their logits get zero gradient, and for the soft labels both
// softmaxes run over the present experts of the row only.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "nn/parameters.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace nn {

namespace detail {
// Keeps an argument out of template deduction, so nullptr passes as a mask.
template <typename T>
struct NonDeduced {
  using type = T;
};
template <typename T>
using NonDeducedT = typename NonDeduced<T>::type;
}  // namespace detail

/// Mean binary cross-entropy of sigmoid(logits) against `targets` over the
/// entries where `mask` (if given) is non-zero; sets grad (same shape, zero
/// where masked). Computed from the logits directly, so it neither overflows
/// nor takes log(0). Returns 0, with zero gradient, when nothing is present.
template <typename Scalar>
Scalar bce_with_logits(const Matrix<Scalar>& logits, const Matrix<Scalar>& targets,
                       Matrix<Scalar>& grad,
                       detail::NonDeducedT<const Matrix<Scalar>*> mask = nullptr) {
  grad.resize(logits.rows(), logits.cols());
  Scalar total = 0;
  Index present = 0;
  for (Index i = 0; i < logits.rows(); ++i) {
    for (Index j = 0; j < logits.cols(); ++j) {
      if (mask != nullptr && (*mask)(i, j) == Scalar(0)) {
        grad(i, j) = 0;
        continue;
      }
      const Scalar z = logits(i, j);
      const Scalar t = targets(i, j);
      // -t log s(z) - (1 - t) log(1 - s(z)) = max(z, 0) - z t + log(1 + e^-|z|).
      total += std::max(z, Scalar(0)) - z * t + std::log1p(std::exp(-std::abs(z)));
      const Scalar s =
          z >= 0 ? Scalar(1) / (Scalar(1) + std::exp(-z)) : std::exp(z) / (Scalar(1) + std::exp(z));
      grad(i, j) = s - t;
      ++present;
    }
  }
  if (present == 0) return Scalar(0);
  const Scalar inv = Scalar(1) / static_cast<Scalar>(present);
  grad *= inv;
  return total * inv;
}

/// Mean over rows of the cross-entropy of softmax(logits) against the soft
/// labels softmax(targets / temperature), both over the row's present
/// experts (all if no mask); sets grad = (softmax(logits) - labels) / rows.
/// Rows with no present expert are skipped and not counted.
template <typename Scalar>
Scalar soft_label_cross_entropy(const Matrix<Scalar>& logits, const Matrix<Scalar>& targets,
                                Scalar temperature, Matrix<Scalar>& grad,
                                detail::NonDeducedT<const Matrix<Scalar>*> mask = nullptr) {
  grad.resize(logits.rows(), logits.cols());
  grad.setZero();
  const Scalar lowest = std::numeric_limits<Scalar>::lowest();
  Scalar total = 0;
  Index rows = 0;
  for (Index i = 0; i < logits.rows(); ++i) {
    auto present = [&](Index j) { return mask == nullptr || (*mask)(i, j) != Scalar(0); };
    // Maxima first, so every exp below is of a non-positive number.
    Scalar max_logit = lowest;
    Scalar max_target = lowest;
    for (Index j = 0; j < logits.cols(); ++j) {
      if (!present(j)) continue;
      max_logit = std::max(max_logit, logits(i, j));
      max_target = std::max(max_target, targets(i, j) / temperature);
    }
    if (max_logit == lowest) continue;
    Scalar logit_sum = 0;
    Scalar target_sum = 0;
    for (Index j = 0; j < logits.cols(); ++j) {
      if (!present(j)) continue;
      logit_sum += std::exp(logits(i, j) - max_logit);
      target_sum += std::exp(targets(i, j) / temperature - max_target);
    }
    const Scalar log_norm = max_logit + std::log(logit_sum);  // logsumexp of the logits
    for (Index j = 0; j < logits.cols(); ++j) {
      if (!present(j)) continue;
      const Scalar label = std::exp(targets(i, j) / temperature - max_target) / target_sum;
      total -= label * (logits(i, j) - log_norm);
      grad(i, j) = std::exp(logits(i, j) - log_norm) - label;
    }
    ++rows;
  }
  if (rows == 0) return Scalar(0);
  const Scalar inv = Scalar(1) / static_cast<Scalar>(rows);
  grad *= inv;
  return total * inv;
}

}  // namespace nn
TOROUTER_END_NAMESPACE
