#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <optional>
#include <sstream>

#include "sparse_projection.hpp"
#include "support/data_dir.hpp"
#include "support/model_bytes.hpp"
#include "support/synthetic_data.hpp"
#include "support/temp_dir.hpp"
#include "torouter/dataset.hpp"
#include "torouter/error.hpp"
#include "torouter/features.hpp"
#include "torouter/trainable_scorer.hpp"

using Catch::Matchers::Contains;
using torouter::DatasetRow;
using torouter::Error;
using torouter::Outcome;
using torouter::ScoreBatch;
using torouter::TrainingSet;
using torouter::TrainOptions;

namespace {

std::string temp_path(const std::string& name) {
  return (torouter::testing::process_temp_dir("torouter_knn_test") / name).string();
}

Outcome outcome(double quality, std::optional<std::size_t> chars = std::nullopt) {
  Outcome o;
  o.present = true;
  o.quality = quality;
  o.output_chars = chars;
  return o;
}

const std::vector<std::string> kCodePrompts{
    "Write a Python function that sorts a list of integers",
    "Fix the compile error in this C++ class constructor",
    "How do I parse a JSON array in Python with a loop",
    "Explain this Python function that reverses a linked list",
    "Why does my C++ loop over a vector crash with a segfault",
    "Write a function in Python to count words in a file",
};
const std::vector<std::string> kHistoryPrompts{
    "Who won the battle of Hastings in 1066",
    "Why did the Roman empire fall in the fifth century",
    "What treaty ended the Thirty Years War in Europe",
    "Which king ruled England during the Spanish Armada",
    "When did the Ottoman empire capture Constantinople",
    "What caused the French revolution of 1789",
};

// Experts "coder" and "historian"; code prompts favour the coder, history
// prompts the historian, with a little spread per row so means are distinct.
// Output lengths: the coder writes 400 + 40 i characters, the historian's are
// unknown.
TrainingSet code_history_set() {
  std::vector<DatasetRow> rows;
  for (std::size_t i = 0; i < kCodePrompts.size(); ++i) {
    DatasetRow row;
    row.prompt = kCodePrompts[i];
    row.outcomes = {outcome(0.9 - 0.02 * static_cast<double>(i), 400 + 40 * i),
                    outcome(0.2 + 0.03 * static_cast<double>(i))};
    rows.push_back(row);
  }
  for (std::size_t i = 0; i < kHistoryPrompts.size(); ++i) {
    DatasetRow row;
    row.prompt = kHistoryPrompts[i];
    row.outcomes = {outcome(0.3 + 0.01 * static_cast<double>(i), 200 + 40 * i),
                    outcome(0.95 - 0.04 * static_cast<double>(i))};
    rows.push_back(row);
  }
  return torouter::make_training_set({"coder", "historian"}, rows, "code-history");
}

TrainOptions all_rows() {
  TrainOptions o;
  o.validation_fraction = 0;
  return o;
}

struct Expected {
  std::vector<float> quality;
  std::vector<float> tokens;
};

// The kNN prediction computed the slow way: cosine by sparse_dot against every
// row, the K best positive ones (ties to the lower row), then the means.
Expected brute_force(const TrainingSet& set, const std::string& query, std::size_t k, bool uniform,
                     std::uint32_t buckets = 1u << 18) {
  torouter::FeaturizerOptions options;
  options.num_buckets = buckets;
  const torouter::Featurizer featurizer(options);
  torouter::SparseFeatures q, row;
  featurizer.featurize(query, q);
  std::vector<std::pair<float, std::size_t>> sims;
  for (std::size_t r = 0; r < set.rows(); ++r) {
    featurizer.featurize(set.prompts[r], row);
    const float s = torouter::sparse_dot(q, row);
    if (s > 0) sims.emplace_back(s, r);
  }
  std::sort(sims.begin(), sims.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  sims.resize(std::min(k, sims.size()));
  Expected out;
  const auto experts = static_cast<Eigen::Index>(set.experts.size());
  for (Eigen::Index e = 0; e < experts; ++e) {
    double qw = 0, w_sum = 0, tw = 0, tw_sum = 0;
    for (const auto& [s, r] : sims) {
      const auto i = static_cast<Eigen::Index>(r);
      const double w = uniform ? 1.0 : s;
      if (set.present(i, e) > 0) {
        qw += w * set.quality(i, e);
        w_sum += w;
      }
      if (std::isfinite(set.output_tokens(i, e))) {
        tw += w * set.output_tokens(i, e);
        tw_sum += w;
      }
    }
    double mean = 0, n = 0;
    for (Eigen::Index i = 0; i < set.quality.rows(); ++i) {
      if (set.present(i, e) > 0) {
        mean += set.quality(i, e);
        n += 1;
      }
    }
    out.quality.push_back(static_cast<float>(w_sum > 0 ? qw / w_sum : (n > 0 ? mean / n : 0)));
    out.tokens.push_back(tw_sum > 0 ? static_cast<float>(tw / tw_sum)
                                    : std::numeric_limits<float>::quiet_NaN());
  }
  return out;
}

void check_matches(const TrainingSet& set, const torouter::TrainableScorer& scorer,
                   const std::vector<std::string>& queries, std::size_t k, bool uniform) {
  const ScoreBatch scores = scorer.score_all(queries);
  for (std::size_t i = 0; i < queries.size(); ++i) {
    const Expected want = brute_force(set, queries[i], k, uniform);
    for (std::size_t e = 0; e < set.experts.size(); ++e) {
      INFO("query \"" << queries[i] << "\", expert " << set.experts[e]);
      const auto row = static_cast<Eigen::Index>(i);
      const auto col = static_cast<Eigen::Index>(e);
      CHECK(scores.quality(row, col) == Approx(want.quality[e]).epsilon(1e-5));
      if (std::isnan(want.tokens[e])) {
        CHECK(std::isnan(scores.output_tokens(row, col)));
      } else {
        CHECK(scores.output_tokens(row, col) == Approx(want.tokens[e]).epsilon(1e-5));
      }
    }
  }
}

const std::vector<std::string> kQueries{
    "Write a Python function that reverses a string",
    "Which empire fought the battle of Hastings",
    "fix my C++ vector loop",
    "the French revolution and the Roman empire",
    "",
    "zzzz qqqq",
};

// Model-file surgery for the corruption tests.
std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Writes `value` over value `i` of tensor `name`, where the header's offset
// and type ("f32" or "f16") put it.
void put_value(std::string& bytes, const std::string& name, std::size_t i, float value) {
  std::uint64_t header_size = 0;
  for (int b = 7; b >= 0; --b) {
    header_size =
        header_size * 256 + static_cast<unsigned char>(bytes[12 + static_cast<std::size_t>(b)]);
  }
  const std::string header = bytes.substr(20, header_size);
  const std::size_t entry = header.find("\"name\": \"" + name + "\"");
  REQUIRE(entry != std::string::npos);
  const std::string type_key = "\"type\": ";
  const bool half =
      header.compare(header.find(type_key, entry) + type_key.size(), 5, "\"f16\"") == 0;
  const std::string key = "\"offset\": ";
  const std::size_t at = header.find(key, entry) + key.size();
  const std::uint64_t offset = std::stoull(header.substr(at));
  const std::size_t position = 20 + header_size + offset + (half ? 2 : 4) * i;
  std::uint32_t raw = 0;
  if (half) {
    raw = Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(value));
  } else {
    std::memcpy(&raw, &value, sizeof(raw));
  }
  for (int b = 0; b < (half ? 2 : 4); ++b)
    bytes[position + static_cast<std::size_t>(b)] = static_cast<char>((raw >> (8 * b)) & 0xFF);
}

std::string fmt_spec(std::size_t k, bool uniform) {
  return "knn:" + std::to_string(k) + (uniform ? ",weighting=uniform" : "");
}

}  // namespace

TEST_CASE("kNN ranks the expert of the prompt's topic first") {
  // Words and characters in one vector, and in blocks of their own.
  const std::string spec = GENERATE(as<std::string>{}, "knn:3", "knn:3,blocks=2");
  const TrainingSet set = code_history_set();
  auto scorer = torouter::make_scorer(spec);
  scorer->train(set, all_rows());
  const ScoreBatch scores = scorer->score_all({"Write a Python function that reverses a string",
                                               "Which empire fought the battle of Hastings"});
  CHECK(scores.quality(0, 0) > scores.quality(0, 1));
  CHECK(scores.quality(1, 1) > scores.quality(1, 0));
  CHECK(scorer->expert_names() == std::vector<std::string>{"coder", "historian"});
  CHECK(std::string(scorer->version()).rfind(spec + "@", 0) == 0);
}

TEST_CASE("kNN predictions are the neighbours' means, weighted or not") {
  const TrainingSet set = code_history_set();
  const auto k = GENERATE(std::size_t{1}, std::size_t{3}, std::size_t{5}, std::size_t{100});
  const bool uniform = GENERATE(false, true);
  auto scorer = torouter::make_scorer(fmt_spec(k, uniform));
  scorer->train(set, all_rows());
  check_matches(set, *scorer, kQueries, k, uniform);
}

TEST_CASE("kNN with K = 1 returns the nearest row's outcomes") {
  const TrainingSet set = code_history_set();
  auto scorer = torouter::make_scorer("knn:1");
  scorer->train(set, all_rows());
  for (std::size_t r = 0; r < set.rows(); ++r) {
    const ScoreBatch s = scorer->score_all({set.prompts[r]});
    const auto row = static_cast<Eigen::Index>(r);
    INFO(set.prompts[r]);
    CHECK(s.quality(0, 0) == set.quality(row, 0));
    CHECK(s.quality(0, 1) == set.quality(row, 1));
    // The coder's answer lengths are known, ceil(chars / 4); the historian's not.
    CHECK(s.output_tokens(0, 0) == set.output_tokens(row, 0));
    CHECK(std::isnan(s.output_tokens(0, 1)));
  }
}

TEST_CASE("kNN averages only over neighbours with an outcome, else the training mean") {
  // "critic" has outcomes on the history rows only, "coder" misses row 0.
  std::vector<DatasetRow> rows;
  for (std::size_t i = 0; i < kCodePrompts.size(); ++i) {
    DatasetRow row;
    row.prompt = kCodePrompts[i];
    row.outcomes = {i == 0 ? Outcome{} : outcome(0.5 + 0.05 * static_cast<double>(i), 80),
                    Outcome{}};
    rows.push_back(row);
  }
  double critic_sum = 0;
  for (std::size_t i = 0; i < kHistoryPrompts.size(); ++i) {
    DatasetRow row;
    row.prompt = kHistoryPrompts[i];
    const double critic = 0.1 * static_cast<double>(i + 1);
    critic_sum += static_cast<float>(critic);
    row.outcomes = {outcome(0.25), outcome(critic)};
    rows.push_back(row);
  }
  const TrainingSet set = torouter::make_training_set({"coder", "critic"}, rows, "missing");
  const bool uniform = GENERATE(false, true);
  const auto k = GENERATE(std::size_t{1}, std::size_t{2}, std::size_t{4});
  auto scorer = torouter::make_scorer(fmt_spec(k, uniform));
  scorer->train(set, all_rows());
  check_matches(set, *scorer, kQueries, k, uniform);
  check_matches(set, *scorer, kCodePrompts, k, uniform);

  // Row 0 is its own nearest neighbour but has no coder outcome: with K = 1
  // the coder falls back to its mean over the rows that have one; so does the
  // critic, which no code row has.
  if (k == 1) {
    const ScoreBatch s = scorer->score_all({kCodePrompts[0]});
    double coder_sum = 0, coder_n = 0;
    for (Eigen::Index r = 0; r < set.quality.rows(); ++r) {
      if (set.present(r, 0) > 0) {
        coder_sum += set.quality(r, 0);
        coder_n += 1;
      }
    }
    CHECK(s.quality(0, 0) == Approx(coder_sum / coder_n).epsilon(1e-6));
    CHECK(s.quality(0, 1) == Approx(critic_sum / 6).epsilon(1e-6));
    CHECK(std::isnan(s.output_tokens(0, 0)));
  }
}

TEST_CASE("a prompt that shares no bucket with any row gets the training means") {
  const TrainingSet set = code_history_set();
  auto scorer = torouter::make_scorer("knn");
  scorer->train(set, all_rows());
  const ScoreBatch s = scorer->score_all({""});
  for (Eigen::Index e = 0; e < 2; ++e) {
    CHECK(s.quality(0, e) == Approx(set.quality.col(e).mean()).epsilon(1e-6));
    CHECK(std::isnan(s.output_tokens(0, e)));
  }
}

TEST_CASE("a workspace gives the same scores as none, call after call") {
  const TrainingSet set = code_history_set();
  auto scorer = torouter::make_scorer("knn:4");
  scorer->train(set, all_rows());
  const ScoreBatch fresh = scorer->score_all(kQueries);
  auto workspace = scorer->make_workspace();
  REQUIRE(workspace != nullptr);
  std::vector<std::string_view> views(kQueries.begin(), kQueries.end());
  for (int round = 0; round < 3; ++round) {
    ScoreBatch batch;
    scorer->score(views.data(), views.size(), batch, workspace.get());
    CHECK(batch.quality == fresh.quality);
    // One at a time, reusing the batch.
    for (std::size_t i = 0; i < views.size(); ++i) {
      scorer->score(&views[i], 1, batch, workspace.get());
      CHECK(batch.quality.row(0) == fresh.quality.row(static_cast<Eigen::Index>(i)));
    }
  }
}

TEST_CASE("kNN reports leave-out validation figures and keeps every row") {
  const TrainingSet set = code_history_set();
  auto scorer = torouter::make_scorer("knn:1,weighting=uniform");
  TrainOptions options;
  options.validation_fraction = 0.25;
  options.seed = 3;
  std::vector<int> epochs;
  torouter::EpochProgress last;
  options.on_epoch = [&](const torouter::EpochProgress& p) {
    epochs.push_back(p.epoch);
    last = p;
  };
  const auto report = scorer->train(set, options);
  CHECK(epochs == std::vector<int>{1});
  CHECK(last.validation_quality == report.validation_quality);
  CHECK(report.epochs_run == 1);
  CHECK(report.best_epoch == 1);
  CHECK(report.validation_rows == 3);
  CHECK(report.train_rows == 9);
  // Held-out code prompts find code neighbours and history ones history.
  CHECK(report.validation_quality > 0.8);
  CHECK(report.validation_loss > 0);
  CHECK(report.validation_loss < 0.05);
  // The final index holds the held-out rows too: each is its own neighbour.
  for (std::size_t r = 0; r < set.rows(); ++r) {
    const ScoreBatch s = scorer->score_all({set.prompts[r]});
    CHECK(s.quality(0, 1) == set.quality(static_cast<Eigen::Index>(r), 1));
  }
  // The same seed holds out the same rows.
  auto twin = torouter::make_scorer("knn:1,weighting=uniform");
  const auto again = twin->train(set, options);
  CHECK(again.validation_loss == report.validation_loss);

  options.validation_fraction = 1;
  CHECK_THROWS_AS(twin->train(set, options), Error);
}

TEST_CASE("kNN spec strings parse, canonicalise and round-trip") {
  CHECK(torouter::make_scorer("knn")->spec() == "knn:40");
  CHECK(torouter::make_scorer("knn:40")->spec() == "knn:40");
  CHECK(torouter::make_scorer("knn:7")->spec() == "knn:7");
  CHECK(torouter::make_scorer("knn,weighting=similarity")->spec() == "knn:40");
  CHECK(torouter::make_scorer("knn:5,weighting=uniform,buckets=4096")->spec() ==
        "knn:5,buckets=4096,weighting=uniform");
  CHECK(torouter::make_scorer("knn,buckets=262144")->spec() == "knn:40");
  CHECK(torouter::make_scorer("knn:3")->kind() == "knn");
  // Dense mode: dims after K; its default bucket count is 2^14.
  CHECK(torouter::make_scorer("knn,dims=64")->spec() == "knn:40,dims=64");
  CHECK(torouter::make_scorer("knn:5,buckets=16384,dims=32")->spec() == "knn:5,dims=32");
  CHECK(torouter::make_scorer("knn,weighting=uniform,buckets=262144,dims=8")->spec() ==
        "knn:40,dims=8,buckets=262144,weighting=uniform");
  CHECK(torouter::make_scorer("knn:40,blocks=2,dims=32")->spec() == "knn:40,dims=32,blocks=2");
  CHECK(torouter::make_scorer("knn,blocks=1")->spec() == "knn:40");
  for (const char* spec :
       {"knn", "knn:1", "knn:9,buckets=16", "knn:2,weighting=uniform", "knn:3,blocks=2",
        "knn:3,dims=8,buckets=4096,blocks=2", "knn:100000,buckets=16777216,weighting=uniform",
        "knn:3,dims=1", "knn:7,dims=512,buckets=1048576,weighting=uniform"}) {
    const std::string canonical = torouter::make_scorer(spec)->spec();
    CHECK(torouter::make_scorer(canonical)->spec() == canonical);
  }
}

TEST_CASE("bad kNN specs are refused naming the spec") {
  const auto bad = GENERATE(
      as<std::string>{}, "knn:0", "knn:abc", "knn:-3", "knn:100001", "knn:5,weighting=cosine",
      "knn,weighting=", "knn,buckets=8", "knn,buckets=16777217", "knn,buckets=lots", "knn,k=5",
      "knn:5,weighting", "knn:4x4", "knn,dims=0", "knn,dims=513", "knn,dims=x",
      "knn:5,dims=8,buckets=2097152", "knn,blocks=0", "knn:5,dims=8,blocks=two");
  INFO(bad);
  CHECK_THROWS_WITH(torouter::make_scorer(bad), Contains(bad));
  CHECK_THROWS_AS(torouter::make_scorer(bad), Error);
}

TEST_CASE("a scorer that was never trained refuses to score") {
  auto scorer = torouter::make_scorer("knn");
  CHECK_THROWS_AS(scorer->score_all({"hello"}), Error);
}

TEST_CASE("a kNN model file round-trips to identical scores") {
  const TrainingSet set = code_history_set();
  const std::string spec =
      GENERATE(as<std::string>{}, "knn:3", "knn:5,buckets=1024,weighting=uniform",
               "knn:3,buckets=4096,blocks=2");
  auto scorer = torouter::make_scorer(spec);
  scorer->train(set, all_rows());
  const std::string path = temp_path("roundtrip.tormodel");
  torouter::save_model(*scorer, path);
  const torouter::LoadedModel loaded = torouter::load_model(path);
  CHECK(loaded.scorer->spec() == scorer->spec());
  CHECK(loaded.scorer->kind() == "knn");
  CHECK(loaded.scorer->expert_names() == scorer->expert_names());
  CHECK(loaded.scorer->version() == scorer->version());
  std::vector<std::string> queries = kQueries;
  queries.insert(queries.end(), set.prompts.begin(), set.prompts.end());
  const ScoreBatch before = scorer->score_all(queries);
  const ScoreBatch after = loaded.scorer->score_all(queries);
  CHECK(after.quality == before.quality);
  for (Eigen::Index i = 0; i < before.output_tokens.size(); ++i) {
    const float a = before.output_tokens.data()[i];
    const float b = after.output_tokens.data()[i];
    CHECK(((std::isnan(a) && std::isnan(b)) || a == b));
  }
}

TEST_CASE("a damaged kNN model file is refused naming the file and the tensor") {
  const TrainingSet set = code_history_set();
  auto scorer = torouter::make_scorer("knn:3");
  scorer->train(set, all_rows());
  const std::string good = temp_path("good.tormodel");
  torouter::save_model(*scorer, good);
  const std::string bytes = read_bytes(good);
  const std::string path = temp_path("damaged.tormodel");

  SECTION("an index beyond the buckets") {
    std::string damaged = bytes;
    put_value(damaged, "knn.indices", 5, static_cast<float>(1u << 18));
    write_bytes(path, torouter::testing::resealed(damaged));
    CHECK_THROWS_WITH(torouter::load_model(path), Contains(path) && Contains("knn.indices"));
  }
  SECTION("an index that is not a whole number") {
    std::string damaged = bytes;
    put_value(damaged, "knn.indices", 0, 2.5f);
    write_bytes(path, torouter::testing::resealed(damaged));
    CHECK_THROWS_WITH(torouter::load_model(path), Contains(path) && Contains("knn.indices"));
  }
  SECTION("indices out of order within a row") {
    std::string damaged = bytes;
    put_value(damaged, "knn.indices", 1, 0.0f);
    write_bytes(path, torouter::testing::resealed(damaged));
    CHECK_THROWS_WITH(torouter::load_model(path), Contains(path) && Contains("knn.indices"));
  }
  SECTION("decreasing offsets") {
    // Row 2's start (high, low halves at values 4 and 5) set to 0, before row 1's.
    std::string damaged = bytes;
    put_value(damaged, "knn.offsets", 5, 0.0f);
    write_bytes(path, torouter::testing::resealed(damaged));
    CHECK_THROWS_WITH(torouter::load_model(path),
                      Contains(path) && Contains("knn.offsets") && Contains("decrease"));
  }
  SECTION("offsets past the stored values") {
    std::string damaged = bytes;
    put_value(damaged, "knn.offsets", 2 * set.rows() + 1, 60000.0f);  // exact in f16 too
    write_bytes(path, torouter::testing::resealed(damaged));
    CHECK_THROWS_WITH(torouter::load_model(path), Contains(path) && Contains("knn.offsets"));
  }
  SECTION("a feature value that is not positive") {
    std::string damaged = bytes;
    put_value(damaged, "knn.values", 2, GENERATE(0.0f, -0.25f));
    write_bytes(path, torouter::testing::resealed(damaged));
    CHECK_THROWS_WITH(torouter::load_model(path), Contains(path) && Contains("knn.values"));
  }
  SECTION("a quality outside [0, 1]") {
    std::string damaged = bytes;
    put_value(damaged, "knn.quality", 3, 1.5f);
    write_bytes(path, torouter::testing::resealed(damaged));
    CHECK_THROWS_WITH(torouter::load_model(path), Contains(path) && Contains("knn.quality"));
  }
  SECTION("a presence that is not 0 or 1") {
    std::string damaged = bytes;
    put_value(damaged, "knn.present", 0, 0.5f);
    write_bytes(path, torouter::testing::resealed(damaged));
    CHECK_THROWS_WITH(torouter::load_model(path), Contains(path) && Contains("knn.present"));
  }
  SECTION("a truncated file") {
    write_bytes(path, bytes.substr(0, bytes.size() - 64));
    CHECK_THROWS_WITH(torouter::load_model(path), Contains(path) && Contains("truncated"));
  }
  SECTION("a changed value fails the recorded checks") {
    std::string damaged = bytes;
    for (std::size_t r = 0; r < set.rows(); ++r) {
      put_value(damaged, "knn.quality", 2 * r, 0.0f);
    }
    write_bytes(path, torouter::testing::resealed(damaged));
    CHECK_THROWS_WITH(torouter::load_model(path), Contains(path) && Contains("recorded check"));
  }
}

TEST_CASE("kNN trained on routerbench3 routes better than a random expert") {
  TOROUTER_SHARED_DATA_OR_SKIP(data_dir);
  const auto data = torouter::load_routing_dataset((data_dir / "routerbench3").string());
  const TrainingSet set =
      torouter::make_training_set(data.experts, data.train, "routerbench3/train.jsonl");
  auto scorer = torouter::make_scorer("knn");
  const auto report = scorer->train(set, TrainOptions{});
  const auto rows = torouter::complete_rows(data.test);
  REQUIRE(!rows.empty());
  const Eigen::MatrixXd quality = torouter::quality_matrix(rows);
  std::vector<std::string> prompts;
  for (const auto& row : rows) prompts.push_back(row.prompt);
  const ScoreBatch scores = scorer->score_all(prompts);
  double routed = 0;
  for (Eigen::Index i = 0; i < quality.rows(); ++i) {
    Eigen::Index best = 0;
    scores.quality.row(i).maxCoeff(&best);
    routed += quality(i, best);
  }
  routed /= static_cast<double>(quality.rows());
  const double random_expert = quality.mean();
  INFO("routed quality " << routed << ", random expert " << random_expert << ", best single "
                         << quality.colwise().mean().maxCoeff() << ", validation quality "
                         << report.validation_quality << ", trained in " << report.seconds << " s");
  CHECK(routed > random_expert);
}

// Dense mode (dims=D): the rows' IDF-weighted projections, fitted by
// SparseProjection on every training row with the training seed, each scaled
// to unit length; cosine is a plain dot product.

namespace {

torouter::TrainingSet synthetic_set(std::size_t rows, unsigned seed) {
  return torouter::make_training_set(torouter::testing::synthetic_experts(),
                                     torouter::testing::synthetic_rows(rows, seed), "synthetic");
}

std::vector<double> unit_projection(const torouter::detail::SparseProjection& projection,
                                    const torouter::SparseFeatures& features) {
  std::vector<float> out(static_cast<std::size_t>(projection.dims()));
  projection.project(features, out.data());
  double norm = 0;
  for (const float v : out) norm += static_cast<double>(v) * v;
  std::vector<double> unit(out.begin(), out.end());
  for (double& v : unit) v = norm > 0 ? v / std::sqrt(norm) : 0.0;
  return unit;
}

// The dense prediction in double: cosine against every row, the K best
// above 0 (ties to the lower row), then the sparse mode's means. `clear` is
// false when the K-th and the next similarity are too close for float
// rounding to be sure of the same neighbours.
Expected dense_brute_force(const TrainingSet& set, const torouter::Featurizer& featurizer,
                           const torouter::detail::SparseProjection& projection,
                           const std::string& query, std::size_t k, bool uniform, bool& clear) {
  torouter::SparseFeatures f;
  featurizer.featurize(query, f);
  const std::vector<double> q = unit_projection(projection, f);
  std::vector<std::pair<double, std::size_t>> sims;
  for (std::size_t r = 0; r < set.rows(); ++r) {
    featurizer.featurize(set.prompts[r], f);
    std::vector<double> row = unit_projection(projection, f);
    for (double& x : row) x = static_cast<float>(Eigen::half(static_cast<float>(x)));  // as stored
    double s = 0;
    for (std::size_t d = 0; d < q.size(); ++d) s += q[d] * row[d];
    sims.emplace_back(s, r);
  }
  std::sort(sims.begin(), sims.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  clear = k >= sims.size() || std::abs(sims[k - 1].first - sims[k].first) > 1e-5 ||
          sims[k - 1].first == sims[k].first;
  std::vector<std::pair<double, std::size_t>> neighbours;
  for (std::size_t i = 0; i < sims.size() && neighbours.size() < k; ++i) {
    if (sims[i].first > 1e-6) neighbours.push_back(sims[i]);
    if (std::abs(sims[i].first) <= 1e-6) clear = false;
  }
  Expected out;
  for (Eigen::Index e = 0; e < static_cast<Eigen::Index>(set.experts.size()); ++e) {
    double qw = 0, w_sum = 0, tw = 0, tw_sum = 0;
    for (const auto& [s, r] : neighbours) {
      const auto i = static_cast<Eigen::Index>(r);
      const double w = uniform ? 1.0 : s;
      // The synthetic rows have every outcome; dense mode stores each
      // quality at half precision.
      qw += w * static_cast<float>(Eigen::half(static_cast<float>(set.quality(i, e))));
      w_sum += w;
      tw += w * set.output_tokens(i, e);
      tw_sum += w;
    }
    out.quality.push_back(static_cast<float>(w_sum > 0 ? qw / w_sum : set.quality.col(e).mean()));
    out.tokens.push_back(tw_sum > 0 ? static_cast<float>(tw / tw_sum)
                                    : std::numeric_limits<float>::quiet_NaN());
  }
  return out;
}

}  // namespace

TEST_CASE("dense kNN learns which expert answers which prompts") {
  const TrainingSet set = synthetic_set(300, 1);
  auto scorer = torouter::make_scorer("knn:10,dims=8");
  scorer->train(set, TrainOptions{});
  const std::vector<std::string> prompts{"python function loop bug array json",
                                         "king empire war treaty battle rome"};
  const ScoreBatch scores = scorer->score_all(prompts);
  CHECK(scores.quality(0, 0) > 0.8f);  // coder on code
  CHECK(scores.quality(0, 1) < 0.2f);
  CHECK(scores.quality(1, 1) > 0.8f);  // historian on history
  CHECK(scores.quality(1, 0) < 0.2f);
  CHECK(scores.quality(0, 2) == Approx(0.5).margin(0.01));
  CHECK(scores.output_tokens(0, 0) > scores.output_tokens(1, 0));  // the coder writes more on code
}

TEST_CASE("dense kNN predictions equal a brute-force dense computation") {
  const TrainingSet set = synthetic_set(200, 1);
  const auto k = GENERATE(std::size_t{1}, std::size_t{5}, std::size_t{40});
  const bool uniform = GENERATE(false, true);
  const int dims = GENERATE(4, 16);
  TrainOptions options = all_rows();
  options.seed = 11;
  auto scorer = torouter::make_scorer("knn:" + std::to_string(k) + ",dims=" + std::to_string(dims) +
                                      (uniform ? ",weighting=uniform" : ""));
  scorer->train(set, options);

  torouter::FeaturizerOptions featurizer_options;
  featurizer_options.num_buckets = 1u << 14;
  const torouter::Featurizer featurizer(featurizer_options);
  std::vector<torouter::SparseFeatures> rows(set.rows());
  for (std::size_t r = 0; r < set.rows(); ++r) featurizer.featurize(set.prompts[r], rows[r]);
  const auto projection =
      torouter::detail::SparseProjection::fit(rows, 1u << 14, dims, options.seed);

  std::vector<std::string> queries = kQueries;
  for (const auto& row : torouter::testing::synthetic_rows(20, 2)) queries.push_back(row.prompt);
  queries.insert(queries.end(), set.prompts.begin(), set.prompts.begin() + 20);
  const ScoreBatch scores = scorer->score_all(queries);
  std::size_t compared = 0;
  for (std::size_t i = 0; i < queries.size(); ++i) {
    bool clear = true;
    const Expected want =
        dense_brute_force(set, featurizer, projection, queries[i], k, uniform, clear);
    if (!clear) continue;
    ++compared;
    for (std::size_t e = 0; e < set.experts.size(); ++e) {
      INFO("query \"" << queries[i] << "\", expert " << set.experts[e]);
      const auto row = static_cast<Eigen::Index>(i);
      const auto col = static_cast<Eigen::Index>(e);
      CHECK(scores.quality(row, col) == Approx(want.quality[e]).epsilon(1e-4));
      if (std::isnan(want.tokens[e])) {
        CHECK(std::isnan(scores.output_tokens(row, col)));
      } else {
        CHECK(scores.output_tokens(row, col) == Approx(want.tokens[e]).epsilon(1e-4));
      }
    }
  }
  CHECK(compared >= queries.size() - 5);
}

TEST_CASE("a dense kNN model file round-trips to identical scores") {
  // 12 rows and dims=64: the projection finds fewer directions than asked
  // and is padded, and the file still holds the asked width.
  // A third: words and characters in blocks of their own.
  const int shape = GENERATE(0, 1, 2);
  const bool small = shape == 1;
  const TrainingSet set = small ? code_history_set() : synthetic_set(200, 1);
  const std::string spec = small        ? "knn:3,dims=64"
                           : shape == 0 ? "knn:7,dims=16,buckets=4096,weighting=uniform"
                                        : "knn:7,dims=16,buckets=4096,blocks=2";
  auto scorer = torouter::make_scorer(spec);
  scorer->train(set, all_rows());
  const std::string path = temp_path("dense_roundtrip.tormodel");
  torouter::save_model(*scorer, path);
  const torouter::LoadedModel loaded = torouter::load_model(path);
  CHECK(loaded.scorer->spec() == spec);
  CHECK(loaded.scorer->kind() == "knn");
  std::vector<std::string> queries = kQueries;
  queries.insert(queries.end(), set.prompts.begin(), set.prompts.end());
  const ScoreBatch before = scorer->score_all(queries);
  const ScoreBatch after = loaded.scorer->score_all(queries);
  CHECK(after.quality == before.quality);
  for (Eigen::Index i = 0; i < before.output_tokens.size(); ++i) {
    const float a = before.output_tokens.data()[i];
    const float b = after.output_tokens.data()[i];
    CHECK(((std::isnan(a) && std::isnan(b)) || a == b));
  }
  const std::string bytes = read_bytes(path);
  CHECK(bytes.find("knn.dense_rows") != std::string::npos);
  CHECK(bytes.find("knn.indices") == std::string::npos);  // no sparse index in dense mode
}

TEST_CASE("a damaged dense kNN model file is refused naming the tensor") {
  const TrainingSet set = code_history_set();
  auto scorer = torouter::make_scorer("knn:3,dims=4");
  scorer->train(set, all_rows());
  const std::string good = temp_path("dense_good.tormodel");
  torouter::save_model(*scorer, good);
  const std::string bytes = read_bytes(good);
  const std::string path = temp_path("dense_damaged.tormodel");

  SECTION("a stored row that is not of unit length") {
    std::string damaged = bytes;
    put_value(damaged, "knn.dense_rows", 1, 3.0f);
    write_bytes(path, torouter::testing::resealed(damaged));
    CHECK_THROWS_WITH(torouter::load_model(path),
                      Contains(path) && Contains("knn.dense_rows") && Contains("norm"));
  }
  SECTION("an IDF weight that is not positive") {
    std::string damaged = bytes;
    put_value(damaged, "knn.idf", 7, -1.0f);
    write_bytes(path, torouter::testing::resealed(damaged));
    CHECK_THROWS_WITH(torouter::load_model(path), Contains(path) && Contains("knn.idf"));
  }
}
