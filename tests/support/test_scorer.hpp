// A scorer written for the tests: each expert's predicted quality (and
// optionally output tokens) is fixed per prompt keyword, so a test states
// exactly what the router sees.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "torouter/scorer.hpp"

namespace torouter::testing {

class TableScorer : public Scorer {
 public:
  /// `default_quality[e]` for prompts that contain no keyword.
  TableScorer(std::vector<std::string> experts, std::vector<float> default_quality)
      : experts_(std::move(experts)), default_quality_(std::move(default_quality)) {}

  /// Prompts containing `keyword` get `quality` (the first matching rule wins).
  void when(std::string keyword, std::vector<float> quality) {
    rules_.push_back({std::move(keyword), std::move(quality)});
  }
  /// Predicted output tokens for every prompt (absent by default).
  void predict_output_tokens(std::vector<float> tokens) { output_tokens_ = std::move(tokens); }

  /// `top_pick_quality` lowers a top pick's quality by `shortfall` (0 unless set).
  void set_top_pick_shortfall(double shortfall) { shortfall_ = shortfall; }
  double top_pick_quality(double predicted) const override { return predicted - shortfall_; }

  /// The version it reports ("table-scorer-1" unless set).
  void set_version(std::string version) { version_ = std::move(version); }

  const std::vector<std::string>& expert_names() const override { return experts_; }
  std::string_view version() const override { return version_; }

  void score(const std::string_view* prompts, std::size_t count, ScoreBatch& out,
             ScorerWorkspace* /*workspace*/) const override {
    out.resize(count, experts_.size());
    out.clear_output_tokens();
    for (std::size_t i = 0; i < count; ++i) {
      const std::vector<float>* quality = &default_quality_;
      for (const auto& rule : rules_) {
        if (prompts[i].find(rule.keyword) != std::string_view::npos) {
          quality = &rule.quality;
          break;
        }
      }
      for (std::size_t e = 0; e < experts_.size(); ++e) {
        const auto row = static_cast<Eigen::Index>(i);
        const auto col = static_cast<Eigen::Index>(e);
        out.quality(row, col) = (*quality)[e];
        if (!output_tokens_.empty()) out.output_tokens(row, col) = output_tokens_[e];
      }
    }
  }

 private:
  struct Rule {
    std::string keyword;
    std::vector<float> quality;
  };
  std::vector<std::string> experts_;
  std::vector<float> default_quality_;
  std::vector<Rule> rules_;
  std::vector<float> output_tokens_;
  std::string version_ = "table-scorer-1";
  double shortfall_ = 0.0;
};

}  // namespace torouter::testing
