// torouter/scorer.hpp: the interface that predicts, per prompt, how well each
// expert will answer and how long its answer will be.
//
// torouter's own scorers (MLP, kNN, transformer-lite) implement it, and so can
// a caller's: override `expert_names`, `version` and `score`.
//
//   class KeywordScorer : public torouter::Scorer {
//    public:
//     const std::vector<std::string>& expert_names() const override { return names_; }
//     std::string_view version() const override { return "keywords-1"; }
//     void score(const std::string_view* prompts, std::size_t count,
//                torouter::ScoreBatch& out, torouter::ScorerWorkspace*) const override {
//       out.resize(count, names_.size());
//       for (std::size_t i = 0; i < count; ++i) { ... out.quality(i, e) = ...; }
//     }
//    private:
//     std::vector<std::string> names_{"small", "large"};
//   };
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

/// Per-prompt, per-expert scores; one row per prompt (contiguous), one
/// column per expert in the order of `Scorer::expert_names()`.
using ScoreMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A scorer's output for a batch of prompts.
struct ScoreBatch {
  /// Predicted quality in [0, 1].
  ScoreMatrix quality;
  /// Predicted output tokens; NaN where the scorer does not predict them, in
  /// which case the cost model uses its default.
  ScoreMatrix output_tokens;

  /// Sizes both matrices; allocates only when the size grows beyond what
  /// the matrices held before, so a reused batch of one stays allocation-free.
  void resize(std::size_t prompts, std::size_t experts) {
    const auto rows = static_cast<Eigen::Index>(prompts);
    const auto cols = static_cast<Eigen::Index>(experts);
    if (quality.rows() != rows || quality.cols() != cols) quality.resize(rows, cols);
    if (output_tokens.rows() != rows || output_tokens.cols() != cols) {
      output_tokens.resize(rows, cols);
    }
  }
  /// Marks every output-token prediction as absent.
  void clear_output_tokens() {
    output_tokens.setConstant(std::numeric_limits<float>::quiet_NaN());
  }
};

/// Scratch memory a scorer keeps between calls so a warm `score` need not
/// allocate. Each thread uses its own; the router keeps one per
/// `RouteDecision`.
class ScorerWorkspace {
 public:
  virtual ~ScorerWorkspace() = default;
};

/// Predicts each expert's quality (and output length) from the prompt alone.
/// Implementations must allow concurrent `score` calls with distinct
/// workspaces.
class Scorer {
 public:
  virtual ~Scorer() = default;

  /// The experts this scorer predicts for; columns of `ScoreBatch`.
  virtual const std::vector<std::string>& expert_names() const = 0;

  /// Identifies the trained model (kind, settings, fingerprint); a route
  /// decision records it.
  virtual std::string_view version() const = 0;

  /// Fresh scratch memory for `score`; nullptr when the scorer needs none.
  virtual std::unique_ptr<ScorerWorkspace> make_workspace() const { return nullptr; }

  /// Scores `count` prompts into `out` (resized to count x experts).
  /// `workspace` is one this scorer made, or nullptr.
  virtual void score(const std::string_view* prompts, std::size_t count, ScoreBatch& out,
                     ScorerWorkspace* workspace) const = 0;

  /// The expected quality of an expert's answer when the router picks it for
  /// having the highest predicted quality of the candidates, `predicted`.
  /// The highest of several predictions is more often one that erred upward
  /// than the others (the winner's curse), so a scorer calibrated on held-out
  /// picks maps it lower; the default returns `predicted` unchanged.
  virtual double top_pick_quality(double predicted) const { return predicted; }

  /// Convenience for batches held in a vector; allocates. (A name of its
  /// own: a subclass that overrides `score` would hide an overload.)
  ScoreBatch score_all(const std::vector<std::string>& prompts) const {
    std::vector<std::string_view> views(prompts.begin(), prompts.end());
    ScoreBatch out;
    auto workspace = make_workspace();
    score(views.data(), views.size(), out, workspace.get());
    return out;
  }
};

TOROUTER_END_NAMESPACE
