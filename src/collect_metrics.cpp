// The answer metrics of `torouter collect` (collect.hpp): exact match,
// SQuAD's token F1 and ROUGE-L, on ASCII-normalised text.
#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "ascii.hpp"
#include "torouter/abi.hpp"
#include "torouter/collect.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE

namespace {

using detail::ascii_lower;
using detail::is_ascii_punctuation;
using detail::is_space;

std::vector<std::string> split_tokens(const std::string& text) {
  std::vector<std::string> tokens;
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && is_space(text[i])) ++i;
    const std::size_t begin = i;
    while (i < text.size() && !is_space(text[i])) ++i;
    if (i > begin) tokens.emplace_back(text.substr(begin, i - begin));
  }
  return tokens;
}

std::vector<std::string> squad_tokens(std::string_view text) {
  std::string cleaned;
  cleaned.reserve(text.size());
  for (char c : text) {
    if (!is_ascii_punctuation(c)) cleaned.push_back(ascii_lower(c));
  }
  std::vector<std::string> tokens = split_tokens(cleaned);
  tokens.erase(
      std::remove_if(tokens.begin(), tokens.end(),
                     [](const std::string& t) { return t == "a" || t == "an" || t == "the"; }),
      tokens.end());
  return tokens;
}

std::vector<std::string> rouge_tokens(std::string_view text) {
  std::string cleaned;
  cleaned.reserve(text.size());
  for (char c : text) cleaned.push_back(is_ascii_punctuation(c) ? ' ' : ascii_lower(c));
  return split_tokens(cleaned);
}

double f_measure(std::size_t common, std::size_t answer_tokens, std::size_t reference_tokens) {
  if (answer_tokens == 0 || reference_tokens == 0) {
    return answer_tokens == reference_tokens ? 1.0 : 0.0;
  }
  if (common == 0) return 0.0;
  const double precision = static_cast<double>(common) / static_cast<double>(answer_tokens);
  const double recall = static_cast<double>(common) / static_cast<double>(reference_tokens);
  return 2.0 * precision * recall / (precision + recall);
}

}  // namespace

Metric parse_metric(std::string_view name) {
  for (Metric m : {Metric::ExactMatch, Metric::TokenF1, Metric::RougeL}) {
    if (name == to_string(m)) return m;
  }
  throw Error(fmt::format("unknown metric \"{}\" (known: exact, f1, rougeL)", name));
}

std::string normalize_answer(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool pending_space = false;
  for (char c : text) {
    if (is_space(c)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(ascii_lower(c));
  }
  return out;
}

double exact_match_score(std::string_view answer, std::string_view reference) {
  return normalize_answer(answer) == normalize_answer(reference) ? 1.0 : 0.0;
}

double token_f1_score(std::string_view answer, std::string_view reference) {
  std::vector<std::string> a = squad_tokens(answer);
  std::vector<std::string> r = squad_tokens(reference);
  // Shared tokens as multisets: merge the two sorted lists.
  std::sort(a.begin(), a.end());
  std::sort(r.begin(), r.end());
  std::size_t common = 0;
  for (std::size_t i = 0, j = 0; i < a.size() && j < r.size();) {
    if (a[i] == r[j]) {
      ++common;
      ++i;
      ++j;
    } else if (a[i] < r[j]) {
      ++i;
    } else {
      ++j;
    }
  }
  return f_measure(common, a.size(), r.size());
}

double rouge_l_score(std::string_view answer, std::string_view reference) {
  const std::vector<std::string> a = rouge_tokens(answer);
  const std::vector<std::string> r = rouge_tokens(reference);
  // LCS length by dynamic programming, two rows of the table at a time.
  std::vector<std::size_t> previous(r.size() + 1, 0), current(r.size() + 1, 0);
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= r.size(); ++j) {
      current[j] =
          a[i - 1] == r[j - 1] ? previous[j - 1] + 1 : std::max(previous[j], current[j - 1]);
    }
    std::swap(previous, current);
  }
  return f_measure(previous[r.size()], a.size(), r.size());
}

AnswerScorer make_metric_scorer(Metric metric) {
  switch (metric) {
    case Metric::ExactMatch:
      return [](const CollectPrompt& p, std::string_view a) {
        return exact_match_score(a, p.reference);
      };
    case Metric::TokenF1:
      return
          [](const CollectPrompt& p, std::string_view a) { return token_f1_score(a, p.reference); };
    case Metric::RougeL:
      return
          [](const CollectPrompt& p, std::string_view a) { return rouge_l_score(a, p.reference); };
  }
  throw Error("make_metric_scorer: unknown metric");
}

TOROUTER_END_NAMESPACE
