// The kNN scorer's inverted index against a plain brute force: every stored
// row's cosine by a merge of the two sorted sparse vectors, summed in float in
// ascending bucket order (the order the scorer has always used), the K best
// rows among those sharing a bucket (ties to the lower row), then the
// documented means. Predictions must match bit for bit, on random prompts
// with duplicates (ties), on llmrouter14 when the shared data is there, and
// past 2^16 rows, where the index splits its posting lists into chunks.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "support/data_dir.hpp"
#include "torouter/dataset.hpp"
#include "torouter/features.hpp"
#include "torouter/trainable_scorer.hpp"

using torouter::DatasetRow;
using torouter::Outcome;
using torouter::ScoreBatch;
using torouter::SparseFeatures;
using torouter::TrainingSet;

namespace {

// Float dot product of two sorted sparse vectors in ascending bucket order;
// `shared` says whether they have a bucket in common.
float merge_dot(const SparseFeatures& a, const SparseFeatures& b, bool& shared) {
  float sum = 0.0f;
  shared = false;
  std::size_t i = 0, j = 0;
  while (i < a.indices.size() && j < b.indices.size()) {
    if (a.indices[i] < b.indices[j]) {
      ++i;
    } else if (b.indices[j] < a.indices[i]) {
      ++j;
    } else {
      sum += a.values[i] * b.values[j];
      shared = true;
      ++i;
      ++j;
    }
  }
  return sum;
}

struct Neighbour {
  float similarity;
  std::size_t row;
};

std::vector<Neighbour> brute_force_neighbours(const std::vector<SparseFeatures>& rows,
                                              const SparseFeatures& query, std::size_t k) {
  std::vector<Neighbour> all;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    bool shared = false;
    const float s = merge_dot(query, rows[r], shared);
    if (shared) all.push_back({s, r});
  }
  std::sort(all.begin(), all.end(), [](const Neighbour& a, const Neighbour& b) {
    return a.similarity > b.similarity || (a.similarity == b.similarity && a.row < b.row);
  });
  all.resize(std::min(k, all.size()));
  return all;
}

// The documented prediction of one expert from the neighbours: the weighted
// mean over those with an outcome (uniform when the weights sum to 0), the
// expert's mean over all rows without any; tokens likewise, NaN without any.
void brute_force_predict(const TrainingSet& set, const std::vector<Neighbour>& neighbours,
                         bool uniform, Eigen::Index e, float& quality, float& tokens) {
  double qw = 0, qw_sum = 0, q_sum = 0, q_n = 0, tw = 0, tw_sum = 0, t_sum = 0, t_n = 0;
  for (const Neighbour& n : neighbours) {
    const auto r = static_cast<Eigen::Index>(n.row);
    const double w = uniform ? 1.0 : std::max(0.0f, n.similarity);
    if (set.present(r, e) > 0.5f) {
      qw += w * set.quality(r, e);
      qw_sum += w;
      q_sum += set.quality(r, e);
      q_n += 1;
    }
    if (std::isfinite(set.output_tokens(r, e))) {
      tw += w * set.output_tokens(r, e);
      tw_sum += w;
      t_sum += set.output_tokens(r, e);
      t_n += 1;
    }
  }
  if (q_n > 0) {
    quality = static_cast<float>(qw_sum > 0 ? qw / qw_sum : q_sum / q_n);
  } else {
    double mean = 0, n = 0;
    for (Eigen::Index r = 0; r < set.present.rows(); ++r) {
      if (set.present(r, e) > 0.5f) {
        mean += set.quality(r, e);
        n += 1;
      }
    }
    quality = n > 0 ? static_cast<float>(mean / n) : 0.0f;
  }
  tokens = t_n == 0 ? std::numeric_limits<float>::quiet_NaN()
                    : static_cast<float>(tw_sum > 0 ? tw / tw_sum : t_sum / t_n);
}

bool same_bits(float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

struct Config {
  std::size_t k;
  bool uniform;
};

// What the data exercised: queries with fewer than K rows sharing a bucket,
// and queries with a tie across the K-th place.
struct Coverage {
  std::size_t few_rows = 0, ties = 0;
};

// Trains one scorer per config on `set` (every row kept) and checks each
// query's predictions against the brute force, bit for bit.
Coverage check_against_brute_force(const TrainingSet& set, const std::vector<std::string>& queries,
                                   const std::vector<Config>& configs) {
  std::vector<ScoreBatch> scores;
  std::size_t most = 0;
  for (const Config& c : configs) {
    auto scorer = torouter::make_scorer("knn:" + std::to_string(c.k) +
                                        (c.uniform ? ",weighting=uniform" : ""));
    torouter::TrainOptions options;
    options.validation_fraction = 0;
    scorer->train(set, options);
    scores.push_back(scorer->score_all(queries));
    most = std::max(most, c.k);
  }
  const torouter::Featurizer featurizer;
  std::vector<SparseFeatures> rows(set.rows());
  for (std::size_t r = 0; r < set.rows(); ++r) featurizer.featurize(set.prompts[r], rows[r]);
  Coverage coverage;
  SparseFeatures query;
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < queries.size(); ++i) {
    featurizer.featurize(queries[i], query);
    const auto ranked = brute_force_neighbours(rows, query, most + 1);
    for (std::size_t c = 0; c < configs.size(); ++c) {
      const std::size_t k = configs[c].k;
      if (ranked.size() <= k) ++coverage.few_rows;
      if (ranked.size() > k && ranked[k].similarity == ranked[k - 1].similarity) ++coverage.ties;
      const std::vector<Neighbour> kept(
          ranked.begin(), ranked.begin() + static_cast<long>(std::min(k, ranked.size())));
      for (Eigen::Index e = 0; e < static_cast<Eigen::Index>(set.experts.size()); ++e) {
        float quality = 0, tokens = 0;
        brute_force_predict(set, kept, configs[c].uniform, e, quality, tokens);
        const auto row = static_cast<Eigen::Index>(i);
        if (same_bits(scores[c].quality(row, e), quality) &&
            same_bits(scores[c].output_tokens(row, e), tokens)) {
          continue;
        }
        ++mismatches;
        INFO("knn:" << k << (configs[c].uniform ? " uniform" : "") << ", query " << i << " \""
                    << queries[i].substr(0, 80) << "\", expert " << e);
        CHECK(scores[c].quality(row, e) == quality);
        CHECK(same_bits(scores[c].output_tokens(row, e), tokens));
      }
    }
  }
  INFO(queries.size() << " queries over " << set.rows() << " rows");
  CHECK(mismatches == 0);
  return coverage;
}

// Prompts of random words from a small made-up vocabulary, so rows share
// many n-grams but few whole prompts.
class PromptMaker {
 public:
  explicit PromptMaker(std::uint64_t seed) : rng_(seed) {
    const char* syllables[] = {"ka", "lo", "mi", "ren", "tu",  "sha", "vo",  "pe",  "qui", "dra",
                               "on", "el", "ix", "um",  "bar", "zen", "tho", "gri", "ae",  "ny"};
    for (int w = 0; w < 400; ++w) {
      std::string word;
      const int n = 1 + static_cast<int>(rng_() % 3);
      for (int s = 0; s < n; ++s) word += syllables[rng_() % 20];
      words_.push_back(word);
    }
  }
  std::string prompt(std::size_t min_words, std::size_t max_words) {
    const std::size_t n = min_words + rng_() % (max_words - min_words + 1);
    std::string text;
    for (std::size_t i = 0; i < n; ++i) {
      // Zipf-like: low word numbers are common, as in real text.
      const std::size_t w = static_cast<std::size_t>(
          std::pow(static_cast<double>(rng_() % 10000) / 10000.0, 3.0) * 400.0);
      text += (i ? " " : "") + words_[std::min<std::size_t>(w, 399)];
    }
    return text;
  }
  std::mt19937_64& rng() { return rng_; }

 private:
  std::mt19937_64 rng_;
  std::vector<std::string> words_;
};

// Three experts: "id", whose quality is distinct per row (so a mean over
// different rows comes out different), and two with random outcomes, some
// missing, some without an answer length.
TrainingSet random_set(PromptMaker& maker, std::size_t rows, std::size_t min_words,
                       std::size_t max_words) {
  std::vector<DatasetRow> data;
  auto& rng = maker.rng();
  for (std::size_t r = 0; r < rows; ++r) {
    DatasetRow row;
    // Every 25th row repeats an earlier one: equal cosines, ties to the lower row.
    row.prompt =
        r % 25 == 24 ? data[rng() % data.size()].prompt : maker.prompt(min_words, max_words);
    Outcome id;
    id.present = true;
    id.quality = static_cast<double>(r + 1) / static_cast<double>(rows + 1);
    id.output_chars = 10 + r;
    row.outcomes.push_back(id);
    for (int e = 0; e < 2; ++e) {
      Outcome o;
      o.present = rng() % 5 != 0;
      o.quality = static_cast<double>(rng() % 1001) / 1000.0;
      if (rng() % 3 != 0) o.output_chars = rng() % 2000;
      row.outcomes.push_back(o);
    }
    data.push_back(row);
  }
  return torouter::make_training_set({"id", "a", "b"}, data, "random");
}

}  // namespace

TEST_CASE("kNN search equals brute force on random prompts, ties and misses included") {
  PromptMaker maker(7);
  const TrainingSet set = random_set(maker, 1500, 3, 80);
  std::vector<std::string> queries;
  for (int i = 0; i < 120; ++i) queries.push_back(maker.prompt(1, 120));
  for (std::size_t r = 0; r < set.rows(); r += 37) queries.push_back(set.prompts[r]);
  queries.push_back("");                        // no bucket at all
  queries.push_back("0123456789 98765 43210");  // no bucket shared with any row
  queries.push_back("kaka lolo");               // few rows
  const Coverage c = check_against_brute_force(
      set, queries, {{1, false}, {1, true}, {7, false}, {7, true}, {40, false}, {40, true}});
  // The data did reach the paths that differ from a plain sort.
  CHECK(c.few_rows > 0);
  CHECK(c.ties > 0);
}

TEST_CASE("kNN search equals brute force past 2^16 rows (chunked posting lists)") {
  PromptMaker maker(11);
  const TrainingSet set = random_set(maker, 70000, 1, 4);
  std::vector<std::string> queries;
  for (int i = 0; i < 12; ++i) queries.push_back(maker.prompt(2, 12));
  queries.push_back(set.prompts[3]);
  queries.push_back(set.prompts[69990]);
  check_against_brute_force(set, queries, {{40, false}, {5, true}});
}

TEST_CASE("kNN search equals brute force on llmrouter14") {
  TOROUTER_SHARED_DATA_OR_SKIP(data_dir);
  const auto data = torouter::load_routing_dataset((data_dir / "llmrouter14").string());
  const TrainingSet set =
      torouter::make_training_set(data.experts, data.train, "llmrouter14/train.jsonl");
  std::vector<std::string> queries;
  for (std::size_t i = 0; i < data.test.size(); i += 8) queries.push_back(data.test[i].prompt);
  for (std::size_t r = 0; r < set.rows(); r += 400) queries.push_back(set.prompts[r]);
  check_against_brute_force(set, queries, {{40, false}, {5, true}});
}
