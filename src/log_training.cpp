// Training rows from a decision log (see torouter/log_training.hpp).
#include "torouter/log_training.hpp"

#include <algorithm>
#include <string>

TOROUTER_BEGIN_NAMESPACE

namespace {

// The column of `name` in `data`, added (absent everywhere, unpriced) when new.
std::size_t expert_column(RoutingDataset& data, const std::string& name) {
  const auto found = std::find(data.experts.begin(), data.experts.end(), name);
  if (found != data.experts.end()) return static_cast<std::size_t>(found - data.experts.begin());
  data.experts.push_back(name);
  data.registry.add(ExpertSpec(name, 0.0, 0.0));
  for (auto* rows : {&data.train, &data.test}) {
    for (DatasetRow& row : *rows) row.outcomes.emplace_back();
  }
  return data.experts.size() - 1;
}

}  // namespace

void add_logged_rows(RoutingDataset& data, const DecisionLogReading& reading) {
  // Every candidate gets a column, not only those called: the model's
  // experts must match the registry the log was written with.
  for (const std::string& name : reading.experts) expert_column(data, name);
  for (const LoggedCall& call : reading.calls) {
    const std::size_t column = expert_column(data, call.expert);
    DatasetRow row;
    row.id = "log:" + call.id;
    // A logged call's task is unknown (not "log": the task scorer would
    // learn it as one task among the dataset's).
    row.prompt = call.prompt;
    row.outcomes.resize(data.experts.size());
    Outcome& outcome = row.outcomes[column];
    outcome.present = true;
    outcome.quality = call.quality;
    outcome.cost_usd = call.cost_usd;
    outcome.output_chars = call.output_tokens * 4;
    data.train.push_back(std::move(row));
  }
}

TOROUTER_END_NAMESPACE
