// Routing dataset loader (format: ../shared/data/README.md). Each line is
// parsed on its own so that an error can name its line; lines are split on
// '\n' only, because prompts may hold U+2028 and other separators that a
// general-purpose line splitter would cut on.
#include "torouter/dataset.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "json_type_name.hpp"
#include "jsonl_lines.hpp"
#include "torouter/abi.hpp"
#include "torouter/cost_model.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE

namespace {

using simdjson::dom::element;

// Reads one line's object; every error names the origin, the line and the field.
class RowReader {
 public:
  RowReader(const std::string& origin, const std::vector<std::string>& experts)
      : origin_(origin), experts_(experts) {}

  DatasetRow read(simdjson::dom::parser& parser, std::string_view line, std::size_t line_no) {
    line_no_ = line_no;
    const simdjson::dom::object object = detail::parse_object(parser, line, origin_, line_no);
    DatasetRow row;
    row.outcomes.resize(experts_.size());
    bool saw_prompt = false;
    bool saw_outcomes = false;
    // Other fields are ignored, so that tools may record more per row.
    for (auto field : object) {
      const std::string_view key = field.key;
      if (key == "id") {
        row.id = std::string(text(key, field.value));
      } else if (key == "task") {
        row.task = std::string(text(key, field.value));
      } else if (key == "prompt") {
        row.prompt = std::string(text(key, field.value));
        saw_prompt = true;
      } else if (key == "outcomes") {
        read_outcomes(field.value, row);
        saw_outcomes = true;
      }
    }
    if (!saw_prompt) fail("prompt", "missing");
    if (!saw_outcomes) fail("outcomes", "missing");
    return row;
  }

 private:
  detail::LineFields fields() const { return {origin_, line_no_}; }
  [[noreturn]] void fail(std::string_view field, std::string_view problem) const {
    fields().fail(field, problem);
  }
  std::string_view text(std::string_view field, element value) const {
    return fields().text(field, value);
  }
  double number(std::string_view field, element value) const {
    return fields().number(field, value);
  }

  void read_outcomes(element value, DatasetRow& row) const {
    simdjson::dom::object by_expert;
    if (value.get_object().get(by_expert) != simdjson::SUCCESS) {
      fail("outcomes", fmt::format("expected an object keyed by expert, got {}",
                                   detail::json_type_name(value)));
    }
    for (auto entry : by_expert) {
      const std::string field = fmt::format("outcomes.\"{}\"", entry.key);
      std::size_t index = experts_.size();
      for (std::size_t i = 0; i < experts_.size(); ++i) {
        if (experts_[i] == entry.key) index = i;
      }
      if (index == experts_.size()) fail(field, "expert not listed in experts.json");
      Outcome& outcome = row.outcomes[index];
      if (outcome.present) fail(field, "duplicate outcome");
      outcome = read_outcome(field, entry.value);
    }
  }

  Outcome read_outcome(const std::string& where, element value) const {
    simdjson::dom::object object;
    if (value.get_object().get(object) != simdjson::SUCCESS) {
      fail(where, fmt::format("expected an object, got {}", detail::json_type_name(value)));
    }
    Outcome outcome;
    outcome.present = true;
    bool saw_quality = false;
    for (auto field : object) {
      const std::string_view key = field.key;
      if (key == "quality") {
        const std::string name = fmt::format("{}.quality", where);
        outcome.quality = number(name, field.value);
        // Written as a negated range test so that NaN, were it ever parsed, fails too.
        if (!(outcome.quality >= 0.0 && outcome.quality <= 1.0)) {
          fail(name, fmt::format("must be in [0, 1], got {}", outcome.quality));
        }
        saw_quality = true;
      } else if (key == "cost_usd") {
        const std::string name = fmt::format("{}.cost_usd", where);
        const double cost = number(name, field.value);
        if (!(std::isfinite(cost) && cost >= 0.0)) {
          fail(name, fmt::format("must be a finite number >= 0, got {}", cost));
        }
        outcome.cost_usd = cost;
      } else if (key == "output_chars") {
        const std::string name = fmt::format("{}.output_chars", where);
        outcome.output_chars = fields().whole(name, field.value);
      }
    }
    if (!saw_quality) fail(fmt::format("{}.quality", where), "missing");
    return outcome;
  }

  const std::string& origin_;
  const std::vector<std::string>& experts_;
  std::size_t line_no_ = 0;
};

void require_complete(const DatasetRow& row, std::size_t i) {
  if (!row.complete()) {
    throw Error(
        fmt::format("row {} (id \"{}\"): an expert has no outcome; evaluate "
                    "complete_rows(...) only",
                    i, row.id));
  }
}

}  // namespace

std::vector<DatasetRow> parse_dataset_rows(std::string_view jsonl, const std::string& origin,
                                           const std::vector<std::string>& experts) {
  std::vector<DatasetRow> rows;
  simdjson::dom::parser parser;
  RowReader reader(origin, experts);
  // Blank lines are tolerated at the end of a file only; inside it they
  // are more likely a damaged file than a style choice.
  detail::for_each_line(jsonl, origin, [&](std::string_view line, std::size_t line_no) {
    rows.push_back(reader.read(parser, line, line_no));
  });
  return rows;
}

std::vector<DatasetRow> load_dataset_rows(const std::string& path,
                                          const std::vector<std::string>& experts) {
  return parse_dataset_rows(detail::read_file(path), path, experts);
}

RoutingDataset load_routing_dataset(const std::string& dir) {
  const std::filesystem::path folder(dir);
  RoutingDataset data;
  data.name = folder.filename().string();
  if (data.name.empty() || data.name == ".") {
    // "data/llmrouter14/" has an empty filename; its parent's last part is the name.
    data.name = folder.parent_path().filename().string();
  }
  data.registry = load_expert_registry((folder / "experts.json").string());
  for (const auto& expert : data.registry.experts()) data.experts.push_back(expert.name);
  data.train = load_dataset_rows((folder / "train.jsonl").string(), data.experts);
  data.test = load_dataset_rows((folder / "test.jsonl").string(), data.experts);
  return data;
}

double query_cost_usd(std::string_view prompt, const Outcome& outcome, const ExpertSpec& expert) {
  if (outcome.cost_usd) return *outcome.cost_usd;
  const auto input_tokens = static_cast<double>(estimate_tokens(prompt));
  const auto output_tokens =
      static_cast<double>(estimate_tokens_from_characters(outcome.output_chars.value_or(0)));
  return CostModel().cost_usd(expert, input_tokens, output_tokens);
}

double query_cost_usd(const RoutingDataset& data, const DatasetRow& row, std::size_t expert) {
  return query_cost_usd(row.prompt, row.outcomes.at(expert), data.registry[expert]);
}

std::vector<DatasetRow> complete_rows(const std::vector<DatasetRow>& rows) {
  std::vector<DatasetRow> out;
  for (const auto& row : rows) {
    if (row.complete()) out.push_back(row);
  }
  return out;
}

Eigen::MatrixXd quality_matrix(const std::vector<DatasetRow>& rows) {
  const auto columns = rows.empty() ? 0 : static_cast<Eigen::Index>(rows.front().outcomes.size());
  Eigen::MatrixXd out(static_cast<Eigen::Index>(rows.size()), columns);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    require_complete(rows[i], i);
    if (static_cast<Eigen::Index>(rows[i].outcomes.size()) != columns) {
      throw Error(fmt::format("row {} (id \"{}\"): {} outcomes, the first row has {}", i,
                              rows[i].id, rows[i].outcomes.size(), columns));
    }
    for (Eigen::Index j = 0; j < columns; ++j) {
      out(static_cast<Eigen::Index>(i), j) = rows[i].outcomes[static_cast<std::size_t>(j)].quality;
    }
  }
  return out;
}

Eigen::MatrixXd cost_matrix(const RoutingDataset& data, const std::vector<DatasetRow>& rows) {
  const std::size_t columns = data.experts.size();
  Eigen::MatrixXd out(static_cast<Eigen::Index>(rows.size()), static_cast<Eigen::Index>(columns));
  for (std::size_t i = 0; i < rows.size(); ++i) {
    require_complete(rows[i], i);
    if (rows[i].outcomes.size() != columns) {
      throw Error(fmt::format("row {} (id \"{}\"): {} outcomes, the dataset has {} experts", i,
                              rows[i].id, rows[i].outcomes.size(), columns));
    }
    for (std::size_t j = 0; j < columns; ++j) {
      out(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j)) =
          query_cost_usd(data, rows[i], j);
    }
  }
  return out;
}

TOROUTER_END_NAMESPACE
