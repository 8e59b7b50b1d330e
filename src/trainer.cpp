#include "trainer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <numeric>
#include <random>
#include <thread>

#include "nn/adamw.hpp"
#include "scorers.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

// Shuffles with our own Fisher-Yates over mt19937_64, whose output the
// standard fixes, so a seed gives the same order with every standard library.
void shuffle(std::vector<std::size_t>& items, nn::Rng& rng) {
  for (std::size_t i = items.size(); i > 1; --i) {
    const std::size_t j = static_cast<std::size_t>(rng() % i);
    std::swap(items[i - 1], items[j]);
  }
}

// Adds a replica's gradients into the master's, then clears the replica's.
void reduce_into(nn::ParameterList<float>& master, nn::ParameterList<float>& replica) {
  for (std::size_t p = 0; p < master.size(); ++p) {
    auto& to = master[p];
    auto& from = replica[p];
    if (to.touched_rows != nullptr) {
      for (auto row : *from.touched_rows) to.grad->row(row) += from.grad->row(row);
      to.touched_rows->insert(to.touched_rows->end(), from.touched_rows->begin(),
                              from.touched_rows->end());
      std::sort(to.touched_rows->begin(), to.touched_rows->end());
      to.touched_rows->erase(std::unique(to.touched_rows->begin(), to.touched_rows->end()),
                             to.touched_rows->end());
    } else {
      *to.grad += *from.grad;
    }
  }
  replica.zero_grad();
}

// Copies the master's weights that the last step changed into a replica.
void copy_weights(nn::ParameterList<float>& master, nn::ParameterList<float>& replica) {
  for (std::size_t p = 0; p < master.size(); ++p) {
    auto& from = master[p];
    auto& to = replica[p];
    if (from.touched_rows != nullptr) {
      for (auto row : *from.touched_rows) to.value->row(row) = from.value->row(row);
    } else {
      *to.value = *from.value;
    }
  }
}

std::vector<nn::Matrix<float>> snapshot(nn::ParameterList<float>& parameters) {
  std::vector<nn::Matrix<float>> out;
  for (auto& p : parameters) out.emplace_back(*p.value);
  return out;
}

void restore(nn::ParameterList<float>& parameters, const std::vector<nn::Matrix<float>>& saved) {
  for (std::size_t p = 0; p < parameters.size(); ++p) *parameters[p].value = saved[p];
}

}  // namespace

void split_validation_rows(std::size_t rows, const TrainOptions& options,
                           std::vector<std::size_t>& train, std::vector<std::size_t>& validation) {
  std::vector<std::size_t> order(rows);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(options.seed);
  std::shuffle(order.begin(), order.end(), rng);
  const auto held =
      static_cast<std::size_t>(options.validation_fraction * static_cast<double>(rows));
  validation.assign(order.begin(), order.begin() + static_cast<long>(held));
  train.assign(order.begin() + static_cast<long>(held), order.end());
  std::sort(train.begin(), train.end());
  std::sort(validation.begin(), validation.end());
}

Eigen::MatrixXf quality_or_nan(const TrainingSet& set) {
  Eigen::MatrixXf quality = set.quality;
  for (Eigen::Index i = 0; i < quality.size(); ++i) {
    if (set.present.data()[i] == 0) quality.data()[i] = std::numeric_limits<float>::quiet_NaN();
  }
  return quality;
}

std::vector<bool> experts_with_lengths(const TrainingSet& set) {
  std::vector<bool> known(set.experts.size(), false);
  for (Eigen::Index e = 0; e < set.output_tokens.cols(); ++e) {
    known[static_cast<std::size_t>(e)] = set.output_tokens.col(e).array().isFinite().any();
  }
  return known;
}

double routed_quality(const TrainingSet& set, const std::vector<std::size_t>& rows,
                      const Eigen::MatrixXf& scores) {
  double total = 0, judged = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    Eigen::Index best = 0;
    scores.row(static_cast<Eigen::Index>(i)).maxCoeff(&best);
    const auto row = static_cast<Eigen::Index>(rows[i]);
    // A row without the pick's outcome (a logged call labels one expert)
    // says nothing about the pick.
    if (set.present(row, best) == 0) continue;
    total += set.quality(row, best);
    judged += 1;
  }
  return judged > 0 ? total / judged : 0.0;
}

TrainReport train_network(Network& network, const TrainingSet& set, const TrainOptions& options) {
  detail::check_train_options(options);
  const auto start = std::chrono::steady_clock::now();
  nn::Rng rng(options.seed);

  std::vector<std::size_t> order(set.rows());
  std::iota(order.begin(), order.end(), 0);
  shuffle(order, rng);
  const auto held_out =
      static_cast<std::size_t>(static_cast<double>(set.rows()) * options.validation_fraction);
  std::vector<std::size_t> validation(order.begin(), order.begin() + static_cast<long>(held_out));
  std::vector<std::size_t> train(order.begin() + static_cast<long>(held_out), order.end());
  std::sort(validation.begin(), validation.end());
  if (train.empty()) throw Error("training set too small: no row left after the validation split");
  // Without a validation split, early stopping watches the training rows.
  const std::vector<std::size_t>& watched = validation.empty() ? train : validation;

  nn::ParameterList<float>& parameters = network.parameters();
  nn::AdamWOptions<float> adam;
  adam.lr = static_cast<float>(options.learning_rate);
  adam.weight_decay = static_cast<float>(options.weight_decay);
  nn::AdamW<float> optimizer(parameters, adam);

  std::vector<std::unique_ptr<Network>> replicas;
  for (int t = 1; t < options.threads; ++t) replicas.push_back(network.replicate());

  TrainReport report;
  report.train_rows = train.size();
  report.validation_rows = validation.size();
  double best_loss = std::numeric_limits<double>::infinity();
  std::vector<nn::Matrix<float>> best_weights;
  int epochs_without_gain = 0;
  Eigen::MatrixXf scores;
  const std::size_t shards = replicas.size() + 1;
  std::vector<std::vector<std::size_t>> shard_rows(shards);
  std::vector<double> shard_loss(shards);

  for (int epoch = 1; epoch <= options.max_epochs; ++epoch) {
    shuffle(train, rng);
    double loss_sum = 0;
    std::size_t loss_rows = 0;
    for (std::size_t begin = 0; begin < train.size(); begin += options.batch_size) {
      const std::size_t end = std::min(train.size(), begin + options.batch_size);
      const std::size_t batch = end - begin;
      // Contiguous shards in a fixed order: the sum of gradients, and so the
      // result, depends only on the seed and the thread count.
      for (std::size_t s = 0; s < shards; ++s) {
        const std::size_t from = begin + batch * s / shards;
        const std::size_t to = begin + batch * (s + 1) / shards;
        shard_rows[s].assign(train.begin() + static_cast<long>(from),
                             train.begin() + static_cast<long>(to));
      }
      auto work = [&](std::size_t s) {
        shard_loss[s] = 0;
        if (shard_rows[s].empty()) return;
        Network& net = s == 0 ? network : *replicas[s - 1];
        const float weight = static_cast<float>(shard_rows[s].size()) / static_cast<float>(batch);
        shard_loss[s] = net.accumulate_gradients(shard_rows[s], weight) *
                        static_cast<double>(shard_rows[s].size());
      };
      std::vector<std::thread> threads;
      for (std::size_t s = 1; s < shards; ++s) threads.emplace_back(work, s);
      work(0);
      for (auto& t : threads) t.join();
      for (std::size_t s = 1; s < shards; ++s)
        reduce_into(parameters, replicas[s - 1]->parameters());
      for (double l : shard_loss) loss_sum += l;
      loss_rows += batch;

      optimizer.step();
      for (auto& replica : replicas) copy_weights(parameters, replica->parameters());
      parameters.zero_grad();
    }

    EpochProgress progress;
    progress.epoch = epoch;
    progress.train_loss = loss_sum / static_cast<double>(loss_rows);
    progress.validation_loss = network.evaluate(watched, scores);
    progress.validation_quality = routed_quality(set, watched, scores);
    progress.elapsed_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress.improved = progress.validation_loss < best_loss;
    report.epochs_run = epoch;
    if (progress.improved) {
      best_loss = progress.validation_loss;
      best_weights = snapshot(parameters);
      report.best_epoch = epoch;
      report.validation_loss = progress.validation_loss;
      report.validation_quality = progress.validation_quality;
      epochs_without_gain = 0;
    } else {
      ++epochs_without_gain;
    }
    if (options.on_epoch) options.on_epoch(progress);
    if (epochs_without_gain >= options.patience) break;
  }
  if (!best_weights.empty()) restore(parameters, best_weights);
  return report;
}

}  // namespace detail
TOROUTER_END_NAMESPACE
