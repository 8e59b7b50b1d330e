// torouter/dataset.hpp: routing datasets, the per-prompt outcomes of several
// experts that a router learns from and is judged on.
//
// A dataset is a folder with experts.json (the experts and their prices),
// train.jsonl and test.jsonl (one prompt per line with each expert's
// quality, and optionally its cost and answer length). The format and the
// cost rule are those of the shared datasets' README (../shared/data/README.md).
//
//   auto data = torouter::load_routing_dataset("../shared/data/llmrouter14");
//   auto rows = torouter::complete_rows(data.test);          // every expert answered
//   Eigen::MatrixXd quality = torouter::quality_matrix(rows);  // prompts x experts
//   Eigen::MatrixXd cost = torouter::cost_matrix(data, rows);  // USD, README's rule
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/expert.hpp"

TOROUTER_BEGIN_NAMESPACE

/// One expert's recorded result on one prompt.
struct Outcome {
  /// False when the dataset has no result of this expert for the prompt; the
  /// other fields are then meaningless.
  bool present = false;
  /// Score of the answer in [0, 1], higher is better.
  double quality = 0.0;
  /// What the call cost, in USD, when the dataset recorded it.
  std::optional<double> cost_usd;
  /// Length of the answer in Unicode characters, when recorded.
  std::optional<std::size_t> output_chars;
};

/// One prompt of a dataset and every expert's outcome on it.
struct DatasetRow {
  /// The row's identifier ("arc-challenge.test.1"); empty when the line has none.
  std::string id;
  /// The task or benchmark the prompt comes from; empty when the line has none.
  std::string task;
  /// The prompt, UTF-8.
  std::string prompt;
  /// One entry per expert, in the order of `RoutingDataset::experts`.
  std::vector<Outcome> outcomes;

  /// True when every expert has an outcome for this prompt.
  bool complete() const {
    for (const auto& o : outcomes) {
      if (!o.present) return false;
    }
    return true;
  }
};

/// A routing dataset folder, loaded.
struct RoutingDataset {
  /// The folder's name ("llmrouter14"), for reports.
  std::string name;
  /// Expert names in the order of experts.json; outcome vectors follow it.
  std::vector<std::string> experts;
  /// The experts with their prices, in the same order.
  ExpertRegistry registry;
  /// Rows of train.jsonl, in file order.
  std::vector<DatasetRow> train;
  /// Rows of test.jsonl, in file order.
  std::vector<DatasetRow> test;
};

/// Loads `dir`/experts.json, `dir`/train.jsonl and `dir`/test.jsonl. Throws
/// `Error` naming the file, the 1-based line and the field of the first
/// malformed line, or the file that cannot be read.
RoutingDataset load_routing_dataset(const std::string& dir);

/// Loads one JSONL file of rows whose outcomes name experts among `experts`
/// (the outcome vectors follow that order). Lines are split on '\n' only, so
/// a prompt may hold U+2028; blank lines at the end of the file are allowed.
/// Throws `Error` ("test.jsonl:12: outcomes.\"gpt-4\".quality: ...") for an
/// unreadable file, invalid JSON, a missing or mistyped field, a quality
/// outside [0, 1], or an outcome of an expert not in `experts`.
std::vector<DatasetRow> load_dataset_rows(const std::string& path,
                                          const std::vector<std::string>& experts);

/// Parses JSONL text as `load_dataset_rows` does; `origin` names it in errors.
std::vector<DatasetRow> parse_dataset_rows(std::string_view jsonl, const std::string& origin,
                                           const std::vector<std::string>& experts);

/// The README's cost of a query: `outcome.cost_usd` when recorded, otherwise
/// (ceil(chars(prompt) / 4) * input price + ceil(output_chars / 4) * output
/// price) / 1e6, characters being Unicode code points and an absent
/// `output_chars` counting as 0 (an absent price is already 0 in `ExpertSpec`).
double query_cost_usd(std::string_view prompt, const Outcome& outcome, const ExpertSpec& expert);

/// The cost of `row`'s outcome of the expert at position `expert` of `data`.
double query_cost_usd(const RoutingDataset& data, const DatasetRow& row, std::size_t expert);

/// The rows where every expert has an outcome: the rows figures are computed on.
std::vector<DatasetRow> complete_rows(const std::vector<DatasetRow>& rows);

/// True quality, rows = prompts and columns = experts. Throws `Error` naming
/// the row when an outcome is missing (pass `complete_rows(...)`).
Eigen::MatrixXd quality_matrix(const std::vector<DatasetRow>& rows);

/// True cost in USD by `query_cost_usd`, rows = prompts and columns = experts
/// of `data`. Throws `Error` naming the row when an outcome is missing.
Eigen::MatrixXd cost_matrix(const RoutingDataset& data, const std::vector<DatasetRow>& rows);

TOROUTER_END_NAMESPACE
