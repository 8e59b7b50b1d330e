// A small routing dataset with a known answer: prompts about code are
// answered well (and at length) by "coder", prompts about history by
// "historian", and "generalist" is middling on both. Trained scorers must
// learn that split.
#pragma once

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "torouter/dataset.hpp"

namespace torouter::testing {

inline const std::vector<std::string>& synthetic_experts() {
  static const std::vector<std::string> experts{"coder", "historian", "generalist"};
  return experts;
}

/// `count` rows alternating code and history prompts, worded at random.
inline std::vector<DatasetRow> synthetic_rows(std::size_t count, unsigned seed) {
  const std::vector<std::string> code_words{"python", "function", "compile", "array", "pointer",
                                            "recursion", "class", "bug", "loop", "json"};
  const std::vector<std::string> history_words{"empire", "king", "war", "treaty", "century",
                                               "revolution", "dynasty", "battle", "pharaoh", "rome"};
  const std::vector<std::string> filler{"please", "explain", "the", "about", "why", "how", "what",
                                        "a", "in", "short"};
  std::mt19937 rng(seed);
  std::vector<DatasetRow> rows;
  for (std::size_t i = 0; i < count; ++i) {
    const bool code = i % 2 == 0;
    const auto& topic = code ? code_words : history_words;
    std::string prompt;
    for (int w = 0; w < 8; ++w) {
      const auto& pool = w % 2 == 0 ? topic : filler;
      prompt += (w ? " " : "") + pool[rng() % pool.size()];
    }
    DatasetRow row;
    row.id = "synthetic." + std::to_string(i);
    row.task = code ? "code" : "history";
    row.prompt = prompt;
    Outcome coder{true, code ? 1.0 : 0.0, std::nullopt, code ? 800u : 40u};
    Outcome historian{true, code ? 0.0 : 1.0, std::nullopt, code ? 40u : 400u};
    Outcome generalist{true, 0.5, std::nullopt, 120u};
    row.outcomes = {coder, historian, generalist};
    rows.push_back(row);
  }
  return rows;
}

/// Writes the rows as a dataset folder (experts.json, train.jsonl,
/// test.jsonl) in the shared format.
inline void write_synthetic_dataset(const std::filesystem::path& dir, std::size_t train_rows,
                                    std::size_t test_rows) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "experts.json")
      << R"({"source": "synthetic", "experts": {"coder": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2},)"
      << R"( "historian": {"input_usd_per_mtok": 0.5, "output_usd_per_mtok": 1},)"
      << R"( "generalist": {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.1}}})";
  auto write = [](const std::filesystem::path& path, const std::vector<DatasetRow>& rows) {
    std::ofstream out(path);
    for (const auto& row : rows) {
      out << "{\"id\": \"" << row.id << "\", \"task\": \"" << row.task << "\", \"prompt\": \""
          << row.prompt << "\", \"outcomes\": {";
      for (std::size_t e = 0; e < row.outcomes.size(); ++e) {
        out << (e ? ", " : "") << "\"" << synthetic_experts()[e] << "\": {\"quality\": "
            << row.outcomes[e].quality << ", \"output_chars\": " << *row.outcomes[e].output_chars
            << "}";
      }
      out << "}}\n";
    }
  };
  write(dir / "train.jsonl", synthetic_rows(train_rows, 1));
  write(dir / "test.jsonl", synthetic_rows(test_rows, 2));
}

}  // namespace torouter::testing
