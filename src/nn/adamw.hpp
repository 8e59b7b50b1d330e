// nn/adamw.hpp (internal, not installed): the AdamW optimiser (Adam with decoupled weight
// decay and bias correction, Loshchilov & Hutter) over a ParameterList.
//
//   torouter::nn::ParameterList<float> params;
//   model.collect_parameters("", params);
//   torouter::nn::AdamW<float> optimiser(params, {/*lr=*/1e-3f});
//   for (...) { params.zero_grad(); ...backward...; optimiser.step(); }
//
// Per parameter p with gradient g, at step t (from 1), as torch.optim.AdamW:
//   p -= lr * weight_decay * p          (only where Parameter::decay is set)
//   m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
//   p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
// Biases and LayerNorm gains and biases are not decayed (their blocks mark
// them so): decay would pull a norm's gain towards zero for no benefit.
//
// Sparse gradients (embedding tables): with `lazy_sparse` (the default) only
// the rows touched since the last zero_grad are updated, decayed and have
// their moments advanced, as PyTorch's SparseAdam does; the other rows stay
// exactly as they are. Turning it off updates every row every step, as dense
// AdamW would, which with a large hash table costs far more than the batch.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include "nn/parameters.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace nn {

/// AdamW's settings; the defaults are torch.optim.AdamW's.
template <typename Scalar>
struct AdamWOptions {
  /// Learning rate.
  Scalar lr = Scalar(1e-3);
  /// Decay rate of the first moment (mean of gradients).
  Scalar beta1 = Scalar(0.9);
  /// Decay rate of the second moment (mean of squared gradients).
  Scalar beta2 = Scalar(0.999);
  /// Added to the root of the second moment so a zero gradient does not
  /// divide by zero.
  Scalar eps = Scalar(1e-8);
  /// Decoupled weight decay, applied as p -= lr * weight_decay * p.
  Scalar weight_decay = Scalar(1e-2);
  /// Update only the touched rows of sparse-gradient parameters.
  bool lazy_sparse = true;
};

/// AdamW over a fixed list of parameters.
template <typename Scalar>
class AdamW {
 public:
  /// An optimiser for `parameters` (copied: the pointers inside must stay
  /// valid), with zero moments.
  explicit AdamW(const ParameterList<Scalar>& parameters,
                 AdamWOptions<Scalar> options = AdamWOptions<Scalar>())
      : parameters_(parameters), options_(options) {
    for (const auto& p : parameters_) {
      first_.push_back(Matrix<Scalar>::Zero(p.value->rows(), p.value->cols()));
      second_.push_back(Matrix<Scalar>::Zero(p.value->rows(), p.value->cols()));
    }
  }

  /// One update of every parameter from its current gradient.
  void step() {
    ++steps_;
    const Scalar t = static_cast<Scalar>(steps_);
    const Scalar correction1 = Scalar(1) - std::pow(options_.beta1, t);
    const Scalar correction2 = Scalar(1) - std::pow(options_.beta2, t);
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const Parameter<Scalar>& p = parameters_[i];
      if (p.touched_rows != nullptr && options_.lazy_sparse) {
        for (Index row : *p.touched_rows) {
          update(p.value->row(row), p.grad->row(row), first_[i].row(row), second_[i].row(row),
                 p.decay, correction1, correction2);
        }
      } else {
        update(*p.value, *p.grad, first_[i], second_[i], p.decay, correction1, correction2);
      }
    }
  }

  /// Number of steps taken.
  long long steps() const { return steps_; }
  /// The settings; `options().lr` may be changed between steps (schedules).
  AdamWOptions<Scalar>& options() { return options_; }
  /// The settings.
  const AdamWOptions<Scalar>& options() const { return options_; }
  /// First-moment estimates, one per parameter, in list order.
  const std::vector<Matrix<Scalar>>& first_moments() const { return first_; }
  /// Second-moment estimates, one per parameter, in list order.
  const std::vector<Matrix<Scalar>>& second_moments() const { return second_; }

 private:
  template <typename Value, typename Grad, typename Moment>
  void update(Value&& value, const Grad& grad, Moment&& m, Moment&& v, bool decay,
              Scalar correction1, Scalar correction2) const {
    const Scalar lr = options_.lr;
    if (decay && options_.weight_decay != Scalar(0))
      value *= Scalar(1) - lr * options_.weight_decay;
    m = options_.beta1 * m + (Scalar(1) - options_.beta1) * grad;
    v = options_.beta2 * v + (Scalar(1) - options_.beta2) * grad.cwiseAbs2();
    value.array() -=
        lr * (m.array() / correction1) / ((v.array() / correction2).sqrt() + options_.eps);
  }

  ParameterList<Scalar> parameters_;
  AdamWOptions<Scalar> options_;
  std::vector<Matrix<Scalar>> first_;
  std::vector<Matrix<Scalar>> second_;
  long long steps_ = 0;
};

}  // namespace nn
TOROUTER_END_NAMESPACE
