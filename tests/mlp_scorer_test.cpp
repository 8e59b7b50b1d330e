#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "support/data_dir.hpp"
#include "support/model_bytes.hpp"
#include "support/synthetic_data.hpp"
#include "support/temp_dir.hpp"
#include "torouter/error.hpp"
#include "torouter/eval.hpp"
#include "torouter/model_io.hpp"
#include "torouter/router.hpp"
#include "torouter/trainable_scorer.hpp"

using torouter::Error;
using torouter::ScoreBatch;
using torouter::TrainOptions;
using torouter::testing::synthetic_experts;
using torouter::testing::synthetic_rows;
using Catch::Matchers::Contains;

namespace {

std::string temp_path(const std::string& name) {
  return (torouter::testing::process_temp_dir("torouter_mlp_test") / name).string();
}

torouter::TrainingSet synthetic_set() {
  return torouter::make_training_set(synthetic_experts(), synthetic_rows(400, 1), "synthetic");
}

TrainOptions quick_options() {
  TrainOptions o;
  o.max_epochs = 15;
  o.batch_size = 32;
  o.learning_rate = 5e-3;
  return o;
}

const std::vector<std::string> kHeldOut{
    "please explain recursion in python with a short function",
    "why did the empire of rome fall after the battle",
    "how do I fix a bug in this loop over a json array",
    "what treaty ended the war in that century"};

}  // namespace

TEST_CASE("an MLP learns which expert answers which prompts, and how long") {
  const auto loss = GENERATE(torouter::Loss::Bce, torouter::Loss::Soft);
  auto scorer = torouter::make_scorer("mlp:16,buckets=1024");
  TrainOptions options = quick_options();
  options.loss = loss;
  int epochs_seen = 0;
  options.on_epoch = [&](const torouter::EpochProgress& p) { epochs_seen = p.epoch; };
  const auto report = scorer->train(synthetic_set(), options);
  CHECK(epochs_seen == report.epochs_run);
  CHECK(report.validation_quality > 0.9);
  CHECK(report.train_rows + report.validation_rows == 400);

  const ScoreBatch s = scorer->score_all(kHeldOut);
  for (Eigen::Index i = 0; i < 4; ++i) {
    Eigen::Index best = 0;
    s.quality.row(i).maxCoeff(&best);
    INFO("prompt " << i << " (" << torouter::to_string(loss) << "): " << s.quality.row(i));
    CHECK(best == (i % 2 == 0 ? 0 : 1));  // coder for code, historian for history
    CHECK(s.quality.row(i).minCoeff() >= 0.0f);
    CHECK(s.quality.row(i).maxCoeff() <= 1.0f);
  }
  if (loss == torouter::Loss::Soft) {
    CHECK(s.quality.row(0).sum() == Approx(1.0f).epsilon(1e-5));
  }
  // Answer lengths (true ratio 20 and 10): the coder writes 200 tokens on code,
  // 10 on history; the historian 100 on history, 10 on code.
  CHECK(s.output_tokens(0, 0) > 3 * s.output_tokens(1, 0));
  CHECK(s.output_tokens(1, 1) > 3 * s.output_tokens(0, 1));
}

TEST_CASE("training is deterministic for a seed and a thread count") {
  TrainOptions options = quick_options();
  options.max_epochs = 3;
  options.threads = 2;
  auto a = torouter::make_scorer("mlp:16x8,buckets=512");
  auto b = torouter::make_scorer("mlp:16x8,buckets=512");
  a->train(synthetic_set(), options);
  b->train(synthetic_set(), options);
  CHECK(a->score_all(kHeldOut).quality == b->score_all(kHeldOut).quality);
  options.seed = 2;
  auto c = torouter::make_scorer("mlp:16x8,buckets=512");
  c->train(synthetic_set(), options);
  CHECK(a->score_all(kHeldOut).quality != c->score_all(kHeldOut).quality);
}

TEST_CASE("a trained MLP round-trips through a model file, checks included") {
  auto scorer = torouter::make_scorer("mlp:16,buckets=1024");
  TrainOptions options = quick_options();
  options.max_epochs = 4;
  options.seed = 9;
  scorer->train(synthetic_set(), options);
  torouter::ExpertRegistry prices;
  prices.add(torouter::ExpertSpec("coder", 1, 2));
  prices.add(torouter::ExpertSpec("historian", 0.5, 1));
  const std::string path = temp_path("round_trip.tormodel");
  torouter::save_model(*scorer, path, &prices);

  const torouter::LoadedModel model = torouter::load_model(path);
  CHECK(model.scorer->kind() == "mlp");
  CHECK(model.scorer->spec() == "mlp:16,buckets=1024");
  CHECK(model.scorer->version() == scorer->version());
  CHECK(model.scorer->expert_names() == synthetic_experts());
  CHECK(model.scorer->training().options.seed == 9);
  CHECK(model.scorer->training().data_fingerprint == synthetic_set().fingerprint);
  CHECK(model.scorer->score_all(kHeldOut).quality == scorer->score_all(kHeldOut).quality);
  CHECK(model.scorer->score_all(kHeldOut).output_tokens ==
        scorer->score_all(kHeldOut).output_tokens);
  CHECK(model.experts.find("coder")->output_usd_per_mtok == 2);
  CHECK(model.experts.find("generalist")->input_usd_per_mtok == 0);  // not priced

  SECTION("a model whose weights no longer give its recorded predictions is refused") {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream buffer;
    buffer << in.rdbuf();
    std::string bytes = buffer.str();
    // The last tensor (alphabetically "mlp.tokens_head.weight") ends the file:
    // change its final weight.
    float w = 0;
    std::memcpy(&w, &bytes[bytes.size() - 4], 4);
    w += 0.75f;
    std::memcpy(&bytes[bytes.size() - 4], &w, 4);
    const std::string tampered = temp_path("tampered.tormodel");
    std::ofstream(tampered, std::ios::binary) << torouter::testing::resealed(bytes);
    CHECK_THROWS_WITH(torouter::load_model(tampered),
                      Contains("tampered.tormodel") && Contains("recorded check"));
  }
}

TEST_CASE("an MLP served with an int8 table round-trips and predicts as its float twin") {
  TrainOptions options = quick_options();
  options.max_epochs = 4;
  options.seed = 9;
  auto float_table = torouter::make_scorer("mlp:16,buckets=1024");
  auto int8_table = torouter::make_scorer("mlp:16,buckets=1024,table=int8");
  CHECK(int8_table->spec() == "mlp:16,buckets=1024,table=int8");
  float_table->train(synthetic_set(), options);
  int8_table->train(synthetic_set(), options);

  // Same training; only the served table is rounded, by at most half a step
  // of each row, so predictions move little.
  const ScoreBatch a = float_table->score_all(kHeldOut);
  const ScoreBatch b = int8_table->score_all(kHeldOut);
  CHECK((a.quality - b.quality).cwiseAbs().maxCoeff() < 0.02f);
  CHECK((a.quality - b.quality).cwiseAbs().maxCoeff() > 0.0f);

  const std::string path = temp_path("int8.tormodel");
  torouter::save_model(*int8_table, path);
  const torouter::LoadedModel model = torouter::load_model(path);  // recorded checks pass
  CHECK(model.scorer->spec() == "mlp:16,buckets=1024,table=int8");
  const ScoreBatch c = model.scorer->score_all(kHeldOut);
  CHECK((c.quality - b.quality).cwiseAbs().maxCoeff() < 1e-6f);

  // The file keeps the table as floats, each row a multiple of its step.
  const torouter::ModelReader reader = torouter::ModelReader::open(path);
  CHECK(reader.text("mlp.embedding.storage") == "int8");
  Eigen::MatrixXf table;
  reader.tensor("mlp.embedding.table", 1024, 16, table);
  int rows_checked = 0;
  for (Eigen::Index r = 0; r < table.rows(); ++r) {
    const float step = table.row(r).cwiseAbs().maxCoeff() / 127.0f;
    if (step == 0.0f) continue;
    for (Eigen::Index col = 0; col < table.cols(); ++col) {
      const float steps = table(r, col) / step;
      REQUIRE(std::abs(steps - std::round(steps)) < 1e-3f);
    }
    ++rows_checked;
  }
  CHECK(rows_checked > 100);

  CHECK_THROWS_WITH(torouter::make_scorer("mlp:16,table=int4"),
                    Contains("table must be float or int8"));
}

TEST_CASE("a trained router routes empty, invalid UTF-8 and 1 MB prompts") {
  auto trained = torouter::make_scorer("mlp:16,buckets=1024");
  TrainOptions options = quick_options();
  options.max_epochs = 3;
  trained->train(synthetic_set(), options);
  std::shared_ptr<torouter::TrainableScorer> scorer = std::move(trained);
  torouter::ExpertRegistry experts;
  for (const auto& name : synthetic_experts()) experts.add(torouter::ExpertSpec(name, 1, 1));
  torouter::Router router(experts, scorer);
  const std::string megabyte(1 << 20, 'x');
  std::string mixed;
  for (int i = 0; i < 4096; ++i) mixed += "python \xff\xfe loop \xc3 \xe2\x82 ";
  for (const std::string& prompt : {std::string(), std::string("\x80\x80\xff"), megabyte, mixed}) {
    const torouter::RouteDecision d = router.route(prompt);
    REQUIRE(d.pick() != nullptr);
    for (const auto& c : d.candidates) {
      CHECK(std::isfinite(c.predicted_quality));
      CHECK(std::isfinite(c.cost_usd));
    }
  }
  // 1 MB of 'x' is 2^20 characters: 262144 estimated tokens.
  CHECK(router.route(megabyte).input_tokens == 262144);
}

TEST_CASE("scorer specs are checked") {
  CHECK(torouter::make_scorer("mlp")->spec() == "mlp:128");
  CHECK(torouter::make_scorer("mlp:64x32")->spec() == "mlp:64x32");
  CHECK_THROWS_WITH(torouter::make_scorer("forest"), Contains("unknown kind \"forest\""));
  CHECK_THROWS_WITH(torouter::make_scorer("mlp:abc"), Contains("hidden width"));
  CHECK_THROWS_WITH(torouter::make_scorer("mlp:0"), Contains("hidden width"));
  CHECK_THROWS_WITH(torouter::make_scorer("mlp:8,depth=3"), Contains("unknown option \"depth\""));
  CHECK_THROWS_WITH(torouter::make_scorer("mlp:8,buckets=x"), Contains("buckets"));
  CHECK_THROWS_WITH(torouter::make_scorer("mlp:8,buckets"), Contains("key=value"));
  auto untrained = torouter::make_scorer("mlp:8");
  CHECK_THROWS_WITH(torouter::save_model(*untrained, temp_path("untrained.tormodel")),
                    Contains("never trained"));
  CHECK_THROWS_WITH(untrained->train(torouter::TrainingSet{}, {}), Contains("empty training set"));
}

TEST_CASE("training sets carry a fingerprint of their content") {
  auto rows = synthetic_rows(10, 1);
  const auto a = torouter::make_training_set(synthetic_experts(), rows);
  CHECK(a.fingerprint.size() == 16);
  CHECK(a.has_output_tokens());
  CHECK(a.output_tokens(0, 0) == 200);  // ceil(800 / 4)
  rows[3].outcomes[1].quality = 0.25;
  CHECK(torouter::make_training_set(synthetic_experts(), rows).fingerprint != a.fingerprint);
  rows[3].outcomes[1].present = false;
  const auto c = torouter::make_training_set(synthetic_experts(), rows);
  CHECK(c.present(3, 1) == 0.0f);
  // The tasks are part of the content (the task scorer learns them).
  CHECK(c.tasks[3] == "history");
  CHECK(c.distinct_tasks() == std::vector<std::string>{"code", "history"});
  rows[3].task = "code";
  CHECK(torouter::make_training_set(synthetic_experts(), rows).fingerprint != c.fingerprint);
}

TEST_CASE("prices are fitted from recorded per-query costs") {
  torouter::RoutingDataset data;
  data.experts = {"priced", "input_only", "unrecorded"};
  for (int i = 0; i < 30; ++i) {
    torouter::DatasetRow row;
    row.prompt = std::string(static_cast<std::size_t>(40 + 8 * i), 'x');  // 10 + 2i tokens
    const double in = 10 + 2 * i;
    const std::size_t out_chars = static_cast<std::size_t>(4 * (5 + (i * 7) % 13));
    const double out = static_cast<double>(out_chars) / 4;
    torouter::Outcome priced{true, 1.0, (in * 3.0 + out * 15.0) / 1e6, out_chars};
    torouter::Outcome input_only{true, 1.0, in * 0.5 / 1e6, std::nullopt};
    torouter::Outcome unrecorded{true, 1.0, std::nullopt, std::nullopt};
    row.outcomes = {priced, input_only, unrecorded};
    data.train.push_back(row);
  }
  const auto fitted = torouter::fit_prices(data, data.train);
  REQUIRE(fitted.size() == 2);
  CHECK(fitted[0].expert == "priced");
  CHECK(fitted[0].input_usd_per_mtok == Approx(3.0));
  CHECK(fitted[0].output_usd_per_mtok == Approx(15.0));
  CHECK(fitted[0].rmse_usd == Approx(0.0).margin(1e-12));
  CHECK(fitted[0].rows == 30);
  CHECK(fitted[1].input_usd_per_mtok == Approx(0.5));
  CHECK(fitted[1].output_usd_per_mtok == 0.0);
}

TEST_CASE("an MLP trained on a shared dataset routes better than a random expert") {
  TOROUTER_SHARED_DATA_OR_SKIP(data_dir);
  const auto data = torouter::load_routing_dataset((data_dir / "routerbench3").string());
  auto scorer = torouter::make_scorer("mlp:32,buckets=8192");
  TrainOptions options;
  options.max_epochs = 8;
  options.threads = 2;
  scorer->train(torouter::make_training_set(data.experts, data.train), options);
  const auto rows = torouter::complete_rows(data.test);
  std::vector<std::string> prompts;
  for (const auto& r : rows) prompts.push_back(r.prompt);
  const Eigen::MatrixXd quality = torouter::quality_matrix(rows);
  const ScoreBatch s = scorer->score_all(prompts);
  double routed = 0;
  for (Eigen::Index i = 0; i < quality.rows(); ++i) {
    Eigen::Index best = 0;
    s.quality.row(i).maxCoeff(&best);
    routed += quality(i, best);
  }
  routed /= static_cast<double>(quality.rows());
  const double random = quality.mean();
  INFO("routed quality " << routed << ", random " << random);
  CHECK(routed > random + 0.1);
}
