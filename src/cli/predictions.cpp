#include "predictions.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "torouter/cost_model.hpp"
#include "torouter/error.hpp"

namespace torouter::cli {

Predictions predict(const LoadedModel& model, const std::vector<std::string>& experts,
                    const std::vector<DatasetRow>& rows) {
  const auto& names = model.scorer->expert_names();
  std::vector<Eigen::Index> column;
  for (const auto& e : experts) {
    auto it = std::find(names.begin(), names.end(), e);
    if (it == names.end()) throw Error(fmt::format("the model has no predictions for expert \"{}\"", e));
    column.push_back(static_cast<Eigen::Index>(it - names.begin()));
  }
  CostModelOptions cost_options;
  cost_options.default_output_tokens = 0;
  const CostModel cost_model(cost_options);
  const auto n = static_cast<Eigen::Index>(rows.size());
  const auto m = static_cast<Eigen::Index>(experts.size());
  Predictions out{Eigen::MatrixXd(n, m), Eigen::MatrixXd(n, m)};
  std::vector<std::string_view> prompts;
  for (const auto& r : rows) prompts.push_back(r.prompt);
  ScoreBatch batch;
  auto workspace = model.scorer->make_workspace();
  constexpr std::size_t kBatch = 256;
  for (std::size_t begin = 0; begin < rows.size(); begin += kBatch) {
    const std::size_t count = std::min(kBatch, rows.size() - begin);
    model.scorer->score(prompts.data() + begin, count, batch, workspace.get());
    for (std::size_t i = 0; i < count; ++i) {
      const auto row = static_cast<Eigen::Index>(begin + i);
      const auto b = static_cast<Eigen::Index>(i);
      const double input_tokens = static_cast<double>(estimate_tokens(prompts[begin + i]));
      for (Eigen::Index e = 0; e < m; ++e) {
        const Eigen::Index c = column[static_cast<std::size_t>(e)];
        const ExpertSpec& spec = model.experts[static_cast<std::size_t>(c)];
        const double output_tokens = cost_model.output_tokens_or_default(batch.output_tokens(b, c));
        out.quality(row, e) = batch.quality(b, c);
        out.cost(row, e) = cost_model.cost_usd(spec, input_tokens, output_tokens);
      }
    }
  }
  return out;
}

}  // namespace torouter::cli
