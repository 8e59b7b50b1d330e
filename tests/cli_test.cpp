// Runs the torouter program as a user would: train on a dataset folder,
// route a prompt, and get clear errors for bad input.
#include <catch2/catch.hpp>
#include <simdjson.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "support/synthetic_data.hpp"

using Catch::Matchers::Contains;

namespace {

struct Run {
  int status = 0;
  std::string output;  // stdout and stderr together
};

Run run(const std::string& arguments) {
  const auto out = std::filesystem::temp_directory_path() / "torouter_cli_test.out";
  const std::string command =
      std::string("'") + TOROUTER_CLI + "' " + arguments + " > '" + out.string() + "' 2>&1";
  const int raw = std::system(command.c_str());
  std::ifstream in(out);
  std::ostringstream text;
  text << in.rdbuf();
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, text.str()};
}

std::filesystem::path work_dir() {
  const auto dir = std::filesystem::temp_directory_path() / "torouter_cli_test";
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace

TEST_CASE("torouter train then route") {
  const auto dir = work_dir();
  torouter::testing::write_synthetic_dataset(dir / "synthetic", 300, 20);
  const std::string model = (dir / "synthetic.tormodel").string();
  const Run trained = run("train --data '" + (dir / "synthetic").string() +
                          "' --scorer mlp:16,buckets=1024 --out '" + model +
                          "' --epochs 12 --seed 3 --threads 2");
  INFO(trained.output);
  REQUIRE(trained.status == 0);
  CHECK_THAT(trained.output, Contains("epoch   1") && Contains("validation loss") &&
                                 Contains("wrote " + model));

  const Run routed = run("route --model '" + model + "' 'fix the bug in my python loop'");
  INFO(routed.output);
  REQUIRE(routed.status == 0);
  simdjson::dom::parser parser;
  simdjson::dom::element decision;
  REQUIRE(parser.parse(routed.output).get(decision) == simdjson::SUCCESS);
  CHECK(std::string_view(decision["pick"]) == "coder");
  CHECK(std::string_view(decision["model_version"]).rfind("mlp:16,buckets=1024@", 0) == 0);
  // The model carries experts.json's prices: coder is $1 in, $2 out per million.
  simdjson::dom::array candidates = decision["candidates"];
  CHECK(double(candidates.at(0)["cost_usd"]) > 0);

  // A large cost weight sends it to the cheapest expert.
  const Run cheap = run("route --model '" + model + "' --lambda-cost 1e6 'fix the bug in my python loop'");
  REQUIRE(cheap.status == 0);
  REQUIRE(parser.parse(cheap.output).get(decision) == simdjson::SUCCESS);
  CHECK(std::string_view(decision["pick"]) == "generalist");
}

TEST_CASE("torouter eval reports the shared figures as text and JSON") {
  const auto dir = work_dir();
  torouter::testing::write_synthetic_dataset(dir / "synthetic_eval", 300, 40);
  const std::string model = (dir / "synthetic_eval.tormodel").string();
  REQUIRE(run("train --data '" + (dir / "synthetic_eval").string() +
              "' --scorer mlp:16,buckets=1024 --epochs 10 --out '" + model + "'")
              .status == 0);
  const std::string json = (dir / "synthetic_eval.json").string();
  const Run evaluated =
      run("eval --data '" + (dir / "synthetic_eval").string() + "' --model '" + model +
          "' --json '" + json + "'");
  INFO(evaluated.output);
  REQUIRE(evaluated.status == 0);
  CHECK_THAT(evaluated.output, Contains("40 test rows") && Contains("oracle") && Contains("AIQ"));
  simdjson::dom::parser parser;
  simdjson::dom::element report;
  REQUIRE(parser.load(json).get(report) == simdjson::SUCCESS);
  CHECK(std::string_view(report["dataset"]) == "synthetic_eval");
  CHECK(uint64_t(report["test_rows"]) == 40);
  // The oracle answers every prompt perfectly; the best single expert is the
  // generalist (0.5) or a specialist (0.5): ties go to the cheaper, the generalist.
  CHECK(double(report["oracle"]["quality"]) == 1.0);
  CHECK(std::string_view(report["best_expert"]["name"]) == "generalist");
  // The learned router sends code to the coder and history to the historian.
  simdjson::dom::element router = report["router"];
  CHECK(double(router["curve"].at(0)["quality"]) == 1.0);
  // At the generalist's low cost (C*) the router can only pick the generalist.
  CHECK(double(router["quality_at_best_cost"]) == 0.5);
  CHECK(double(router["gap_won"]) == 0.0);
  CHECK(double(router["aiq"]) > double(report["experts_aiq"]));
  CHECK(double(router["routes_per_second"]) > 0);
}

TEST_CASE("torouter refuses bad input with a clear message") {
  const auto dir = work_dir();
  Run r = run("");
  CHECK(r.status == 2);
  CHECK_THAT(r.output, Contains("usage"));
  r = run("fly --data x");
  CHECK(r.status == 2);
  CHECK_THAT(r.output, Contains("unknown command \"fly\""));
  r = run("train --scorer mlp --out x.tormodel");
  CHECK(r.status == 1);
  CHECK_THAT(r.output, Contains("missing --data"));
  r = run("train --data /nonexistent/dataset --scorer mlp --out x.tormodel");
  CHECK(r.status == 1);
  CHECK_THAT(r.output, Contains("/nonexistent/dataset"));
  r = run("train --data x --scorer mlp --out y --loss focal");
  CHECK_THAT(r.output, Contains("--loss: expected bce or soft"));
  r = run("train --data x --scorer mlp --out y --threads two");
  CHECK_THAT(r.output, Contains("--threads"));
  r = run("train --data x --scorer mlp --out y --colour blue");
  CHECK_THAT(r.output, Contains("unknown option --colour"));
  r = run("route --model /nonexistent.tormodel hello");
  CHECK(r.status == 1);
  CHECK_THAT(r.output, Contains("/nonexistent.tormodel") && Contains("cannot open"));
  std::ofstream(dir / "broken.jsonl") << "not a model";
  r = run("route --model '" + (dir / "broken.jsonl").string() + "' hello");
  CHECK_THAT(r.output, Contains("not a torouter model file"));
}
