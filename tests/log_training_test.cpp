// Training rows from a decision log: one label per call, new experts
// become columns (torouter/log_training.hpp).
#include "torouter/log_training.hpp"

#include <catch2/catch.hpp>

#include "support/synthetic_data.hpp"
#include "torouter/train.hpp"

namespace {

torouter::DecisionLogReading two_calls() {
  torouter::DecisionLogReading reading;
  reading.experts = {"coder", "historian", "newcomer"};
  reading.calls.push_back({"a", "fix my loop", "coder", 0.5, 0.9, 0.002, 0.0, 120});
  reading.calls.push_back({"b", "who was caesar", "newcomer", 0.25, 0.7, 0.001, 0.0, 30});
  return reading;
}

}  // namespace

TEST_CASE("add_logged_rows labels only the called expert") {
  torouter::RoutingDataset data;
  torouter::add_logged_rows(data, two_calls());
  CHECK(data.experts == std::vector<std::string>{"coder", "historian", "newcomer"});
  CHECK(data.registry.size() == 3);
  REQUIRE(data.train.size() == 2);
  const torouter::DatasetRow& a = data.train[0];
  CHECK(a.id == "log:a");
  CHECK(a.prompt == "fix my loop");
  REQUIRE(a.outcomes.size() == 3);
  CHECK(a.outcomes[0].present);
  CHECK(a.outcomes[0].quality == 0.9);
  CHECK(*a.outcomes[0].cost_usd == 0.002);
  CHECK(*a.outcomes[0].output_chars == 480);
  CHECK_FALSE(a.outcomes[1].present);
  CHECK_FALSE(a.outcomes[2].present);
  CHECK(data.train[1].outcomes[2].quality == 0.7);

  // The training set masks the absent outcomes and keeps the billed tokens.
  const auto set = torouter::make_training_set(data.experts, data.train, "log");
  CHECK(set.present(0, 0) == 1.0f);
  CHECK(set.present(0, 1) == 0.0f);
  CHECK(set.output_tokens(0, 0) == 120.0f);
}

TEST_CASE("add_logged_rows adds a column for an expert the dataset lacks") {
  torouter::RoutingDataset data;
  data.experts = torouter::testing::synthetic_experts();
  for (const auto& name : data.experts) data.registry.add(torouter::ExpertSpec(name, 1.0, 2.0));
  data.train = torouter::testing::synthetic_rows(4, 1);
  data.test = torouter::testing::synthetic_rows(2, 2);
  torouter::add_logged_rows(data, two_calls());
  CHECK(data.experts == std::vector<std::string>{"coder", "historian", "generalist", "newcomer"});
  REQUIRE(data.train.size() == 6);
  for (const auto* rows : {&data.train, &data.test}) {
    for (const auto& row : *rows) CHECK(row.outcomes.size() == 4);
  }
  CHECK_FALSE(data.train[0].outcomes[3].present);  // an earlier row
  CHECK(data.train[0].outcomes[0].present);
  CHECK(data.train[5].outcomes[3].present);  // call b, by the newcomer
  CHECK(data.registry.find("newcomer")->input_usd_per_mtok == 0.0);
  CHECK(data.registry.find("coder")->input_usd_per_mtok == 1.0);
}
