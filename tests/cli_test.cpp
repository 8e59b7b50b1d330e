// Runs the torouter program as a user would: train on a dataset folder,
// route a prompt, and get clear errors for bad input.
#include <simdjson.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "support/logged_calls.hpp"
#include "support/synthetic_data.hpp"
#include "support/temp_dir.hpp"

using Catch::Matchers::Contains;

namespace {

struct Run {
  int status = 0;
  std::string output;  // stdout and stderr together
};

Run run(const std::string& arguments) {
  const auto out = torouter::testing::process_temp_dir("torouter_cli_test") / "run.out";
  const std::string command =
      std::string("'") + TOROUTER_CLI + "' " + arguments + " > '" + out.string() + "' 2>&1";
  const int raw = std::system(command.c_str());
  std::ifstream in(out);
  std::ostringstream text;
  text << in.rdbuf();
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, text.str()};
}

std::filesystem::path work_dir() {
  return torouter::testing::process_temp_dir("torouter_cli_test");
}

}  // namespace

TEST_CASE("torouter train with no scorer chooses one by cross-validation and records it") {
  const auto dir = work_dir();
  torouter::testing::write_synthetic_dataset(dir / "choose", 120, 20);
  const std::string model = (dir / "chosen.tormodel").string();
  const std::string oof = (dir / "oof.csv").string();
  const Run trained = run("train --data '" + (dir / "choose").string() +
                          "' --candidates 'knn:1000;knn:5' --folds 3 --out '" + model +
                          "' --out-of-fold '" + oof + "'");
  INFO(trained.output);
  REQUIRE(trained.status == 0);
  CHECK_THAT(trained.output, Contains("3-fold cross-validated AIQ") && Contains("knn:1000 ") &&
                                 Contains("stack:knn:5+knn:1000") && Contains("ECE") &&
                                 Contains("calibrated (linear)") && Contains("chose ") &&
                                 Contains("calibrated"));
  // One line per candidate (two, and their stack) and training row, each
  // with its fold in [0, 3).
  std::ifstream csv(oof);
  std::string line;
  REQUIRE(std::getline(csv, line));
  CHECK(line.rfind("candidate,id,fold,", 0) == 0);
  std::size_t rows = 0;
  std::set<std::string> folds;
  while (std::getline(csv, line)) {
    ++rows;
    const std::size_t id_end = line.find(',', line.find("\",") + 2);
    folds.insert(line.substr(id_end + 1, line.find(',', id_end + 1) - id_end - 1));
  }
  CHECK(rows == 3 * 120);
  CHECK(folds == std::set<std::string>{"0", "1", "2"});
  const std::string predictions = (dir / "predictions.csv").string();
  const Run evaluated = run("eval --data '" + (dir / "choose").string() + "' --model '" + model +
                            "' --predictions '" + predictions + "'");
  INFO(evaluated.output);
  CHECK(evaluated.status == 0);
  std::ifstream predicted(predictions);
  REQUIRE(std::getline(predicted, line));
  CHECK(line.rfind("id,", 0) == 0);
  std::size_t test_rows = 0;
  while (std::getline(predicted, line)) ++test_rows;
  CHECK(test_rows == 20);

  Run r = run("train --data x --out y --candidates 'mlp/adam'");
  CHECK_THAT(r.output, Contains("bce or soft"));
  r = run("train --data '" + (dir / "choose").string() + "' --out y --folds 1");
  CHECK_THAT(r.output, Contains("--folds"));
  r = run("train --data x --out y --candidates 'gbt,trees=3'");
  CHECK_THAT(r.output, Contains("unknown option \"trees\""));
  r = run("train --data x --out y --calibration platt");
  CHECK_THAT(r.output, Contains("expected linear or isotonic"));
  r = run("train --data x --out y --scorer knn:5 --out-of-fold z.csv");
  CHECK_THAT(r.output, Contains("--out-of-fold") && Contains("not with --scorer"));
}

TEST_CASE("torouter train then route") {
  const auto dir = work_dir();
  torouter::testing::write_synthetic_dataset(dir / "synthetic", 300, 20);
  const std::string model = (dir / "synthetic.tormodel").string();
  const Run trained =
      run("train --data '" + (dir / "synthetic").string() +
          "' --scorer mlp:16,buckets=1024 --out '" + model + "' --epochs 12 --seed 3 --threads 2");
  INFO(trained.output);
  REQUIRE(trained.status == 0);
  CHECK_THAT(trained.output,
             Contains("epoch   1") && Contains("validation loss") && Contains("wrote " + model));

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
  const Run cheap =
      run("route --model '" + model + "' --lambda-cost 1e6 'fix the bug in my python loop'");
  REQUIRE(cheap.status == 0);
  REQUIRE(parser.parse(cheap.output).get(decision) == simdjson::SUCCESS);
  CHECK(std::string_view(decision["pick"]) == "generalist");

  // Every expert reaches a quality floor of 0, so the cheapest is picked.
  const Run floor =
      run("route --model '" + model + "' --quality-floor 0 'fix the bug in my python loop'");
  REQUIRE(floor.status == 0);
  REQUIRE(parser.parse(floor.output).get(decision) == simdjson::SUCCESS);
  CHECK(std::string_view(decision["pick"]) == "generalist");
  CHECK(std::string_view(decision["reason"]) == "cheapest_above_floor");
  CHECK(double(decision["knobs"]["quality_floor"]) == 0.0);
  const Run bad_floor = run("route --model '" + model + "' --quality-floor 1.5 'x'");
  CHECK(bad_floor.status != 0);
  CHECK_THAT(bad_floor.output, Contains("--quality-floor") && Contains("[0, 1]"));
}

TEST_CASE("torouter eval reports the shared figures as text and JSON") {
  const auto dir = work_dir();
  torouter::testing::write_synthetic_dataset(dir / "synthetic_eval", 300, 40);
  const std::string model = (dir / "synthetic_eval.tormodel").string();
  REQUIRE(run("train --data '" + (dir / "synthetic_eval").string() +
              "' --scorer mlp:16,buckets=1024 --epochs 10 --out '" + model + "'")
              .status == 0);
  const std::string json = (dir / "synthetic_eval.json").string();
  const Run evaluated = run("eval --data '" + (dir / "synthetic_eval").string() + "' --model '" +
                            model + "' --json '" + json + "'");
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
  CHECK(double(router["aiq"]) > double(report["experts_alone_aiq"]));
  CHECK(double(router["routes_per_second"]) > 0);
  // Calibration at lambda = 0: ten bins holding the 40 picks, and the ECE
  // they give.
  CHECK_THAT(evaluated.output, Contains("ECE "));
  simdjson::dom::array bins = router["reliability"];
  REQUIRE(bins.size() == 10);
  std::uint64_t picks = 0;
  double ece = 0;
  for (simdjson::dom::element bin : bins) {
    const std::uint64_t count = bin["count"];
    picks += count;
    if (count == 0) {
      CHECK(bin["predicted"].is_null());
      continue;
    }
    const double gap = std::abs(double(bin["predicted"]) - double(bin["observed"]));
    ece += static_cast<double>(count) / 40 * gap;
  }
  CHECK(picks == 40);
  CHECK(double(router["ece"]) == Approx(ece).margin(1e-12));
  CHECK(double(router["ece"]) >= 0);
  CHECK(double(router["ece"]) <= 1);

  // The plot: one labelled point per expert, random, the oracle, the curve.
  const std::string svg_path = (dir / "synthetic_eval.svg").string();
  REQUIRE(run("eval --data '" + (dir / "synthetic_eval").string() + "' --model '" + model +
              "' --plot '" + svg_path + "'")
              .status == 0);
  std::ifstream svg_file(svg_path);
  std::ostringstream svg_text;
  svg_text << svg_file.rdbuf();
  const std::string svg = svg_text.str();
  CHECK(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  std::size_t circles = 0;
  for (std::size_t at = svg.find("<circle class=\"expert\""); at != std::string::npos;
       at = svg.find("<circle class=\"expert\"", at + 1)) {
    ++circles;
  }
  CHECK(circles == 3);
  for (const char* label :
       {">coder<", ">historian<", ">generalist<", ">random<", ">oracle<", "router (AIQ"}) {
    CHECK_THAT(svg, Contains(label));
  }
  // Every curve point lies inside the picture.
  const std::size_t curve_at = svg.find("class=\"router-curve\"");
  REQUIRE(curve_at != std::string::npos);
  const std::size_t points_at = svg.find("points=\"", curve_at) + 8;
  std::istringstream points(svg.substr(points_at, svg.find('"', points_at) - points_at));
  std::string point;
  std::size_t count = 0;
  while (points >> point) {
    const double x = std::stod(point.substr(0, point.find(',')));
    const double y = std::stod(point.substr(point.find(',') + 1));
    CHECK((x >= 0 && x <= 720 && y >= 0 && y <= 480));
    ++count;
  }
  CHECK(count == simdjson::dom::array(router["curve"]).size());

  // Beside the plane, the reliability diagram: its diagonal and one labelled
  // point per non-empty bin, inside the picture.
  CHECK_THAT(svg,
             Contains("class=\"reliability-diagonal\"") && Contains("reliability at lambda = 0"));
  std::size_t filled = 0;
  for (simdjson::dom::element bin : bins) filled += std::uint64_t(bin["count"]) > 0;
  std::size_t dots = 0;
  for (std::size_t at = svg.find("<circle class=\"reliability-bin\""); at != std::string::npos;
       at = svg.find("<circle class=\"reliability-bin\"", at + 1)) {
    const double cx = std::stod(svg.substr(svg.find("cx=\"", at) + 4));
    const double cy = std::stod(svg.substr(svg.find("cy=\"", at) + 4));
    CHECK((cx > 720 && cx <= 1140 && cy >= 0 && cy <= 480));
    ++dots;
  }
  CHECK(dots == filled);
  CHECK_THAT(svg, Contains(">n=") && Contains("width=\"1140\""));
}

TEST_CASE("torouter calibrate finds the smallest lambda meeting a budget") {
  const auto dir = work_dir();
  torouter::testing::write_synthetic_dataset(dir / "synthetic_calibrate", 300, 40);
  const std::string data = (dir / "synthetic_calibrate").string();
  const std::string model = (dir / "synthetic_calibrate.tormodel").string();
  REQUIRE(run("train --data '" + data + "' --scorer mlp:16,buckets=1024 --epochs 10 --out '" +
              model + "'")
              .status == 0);
  // The coder is the dearest expert: keep it to at most 10% of the prompts.
  Run r = run("calibrate --data '" + data + "' --model '" + model + "' --max-share coder=0.1");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK_THAT(r.output, Contains("lambda_cost = "));
  const double lambda = std::stod(r.output.substr(r.output.find("lambda_cost = ") + 14));
  CHECK(lambda > 0);
  // Below that lambda the coder still answers its half of the prompts.
  r = run("calibrate --data '" + data + "' --model '" + model + "' --max-share coder=0.45");
  REQUIRE(r.status == 0);
  CHECK(std::stod(r.output.substr(r.output.find("lambda_cost = ") + 14)) < lambda);
  // No lambda makes a query free.
  r = run("calibrate --data '" + data + "' --model '" + model + "' --max-cost-per-query 0");
  CHECK(r.status == 1);
  CHECK_THAT(r.output, Contains("no lambda meets the budget"));
  r = run("calibrate --data '" + data + "' --model '" + model + "'");
  CHECK_THAT(r.output, Contains("exactly one of"));
  r = run("calibrate --data '" + data + "' --model '" + model + "' --max-share nobody=0.1");
  CHECK_THAT(r.output, Contains("unknown expert \"nobody\""));
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
  CHECK_THAT(r.output, Contains("missing --data or --log"));
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

TEST_CASE("torouter eval --log estimates a model on logged calls with feedback") {
  const auto dir = work_dir();
  torouter::testing::write_synthetic_dataset(dir / "offpolicy", 200, 10);
  const std::string model = (dir / "offpolicy.tormodel").string();
  const Run trained = run("train --data '" + (dir / "offpolicy").string() +
                          "' --scorer knn:5 --folds 0 --out '" + model + "'");
  INFO(trained.output);
  REQUIRE(trained.status == 0);
  // A log whose calls went to the generalist (propensity 0.5) or, explored,
  // to the coder (0.25), with verdicts.
  const std::string log = (dir / "calls.jsonl").string();
  {
    std::ofstream out(log);
    const auto rows = torouter::testing::synthetic_rows(40, 9);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const bool explored = i % 4 == 0;
      const std::string expert = explored ? "coder" : "generalist";
      const std::string id = "r" + std::to_string(i);
      out << torouter::testing::logged_decision_line(id, rows[i].prompt, expert,
                                                     explored ? 0.25 : 0.5, 0.001, 50,
                                                     torouter::testing::synthetic_experts())
          << "\n"
          << torouter::testing::logged_feedback_line(id, rows[i].outcomes[explored ? 0 : 2].quality)
          << "\n";
    }
  }
  const std::string json = (dir / "offpolicy.json").string();
  const Run evaluated =
      run("eval --log '" + log + "' --model '" + model + "' --json '" + json + "'");
  INFO(evaluated.output);
  REQUIRE(evaluated.status == 0);
  CHECK_THAT(evaluated.output, Contains("40 with feedback used") && Contains("doubly robust"));
  std::ifstream in(json);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  simdjson::dom::parser parser;
  simdjson::dom::element report;
  REQUIRE(parser.parse(text).get(report) == simdjson::SUCCESS);
  CHECK(int64_t(report["calls"]) == 40);
  CHECK(int64_t(report["matching"]) > 0);
  const double low = report["quality"]["doubly_robust"]["low"];
  const double high = report["quality"]["doubly_robust"]["high"];
  CHECK(low <= high);

  std::ofstream(log, std::ios::app) << "{\"type\": \"decision\"}\n";
  const Run bad = run("eval --log '" + log + "' --model '" + model + "'");
  CHECK(bad.status != 0);
  CHECK_THAT(bad.output, Contains("calls.jsonl:81") && Contains("id"));
}

namespace {

// A log of `rows` spread evenly over the synthetic experts and, with
// `newcomer`, a fourth expert that answers history as well as the historian;
// each call with the true quality as its verdict.
void write_exploring_log(const std::string& path, const std::vector<torouter::DatasetRow>& rows,
                         bool newcomer) {
  std::vector<std::string> experts = torouter::testing::synthetic_experts();
  if (newcomer) experts.push_back("newcomer");
  std::ofstream out(path);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const std::size_t e = (i / 2) % experts.size();  // rows alternate code and history
    const torouter::Outcome& truth = rows[i].outcomes[e == 3 ? 1 : e];
    const std::string id = "call" + std::to_string(i);
    out << torouter::testing::logged_decision_line(
               id, rows[i].prompt, experts[e], 1.0 / static_cast<double>(experts.size()),
               1e-6 * static_cast<double>(e + 1) * static_cast<double>(*truth.output_chars),
               *truth.output_chars / 4, experts)
        << "\n"
        << torouter::testing::logged_feedback_line(id, truth.quality) << "\n";
  }
}

// The expert `model` picks for `prompt` at lambda 0, and how many candidates it lists.
std::pair<std::string, std::size_t> routed_pick(const std::string& model,
                                                const std::string& prompt) {
  const Run routed = run("route --model '" + model + "' '" + prompt + "'");
  INFO(routed.output);
  REQUIRE(routed.status == 0);
  simdjson::dom::parser parser;
  simdjson::dom::element decision;
  REQUIRE(parser.parse(routed.output).get(decision) == simdjson::SUCCESS);
  return {std::string(std::string_view(decision["pick"])),
          simdjson::dom::array(decision["candidates"]).size()};
}

}  // namespace

TEST_CASE("torouter train --log learns from logged calls with feedback, alone or with a dataset") {
  const auto dir = work_dir();
  const std::string log = (dir / "exploring.jsonl").string();
  // Only one expert of four has a label per call.
  write_exploring_log(log, torouter::testing::synthetic_rows(400, 21), true);
  const std::string from_log = (dir / "from_log.tormodel").string();
  const Run trained = run("train --log '" + log + "' --scorer knn:8 --out '" + from_log + "'");
  INFO(trained.output);
  REQUIRE(trained.status == 0);
  CHECK_THAT(trained.output, Contains("400 calls with feedback used") &&
                                 Contains("fitted from cost_usd") && Contains("wrote"));
  CHECK(routed_pick(from_log, "fix the bug in my python loop") ==
        std::make_pair(std::string("coder"), std::size_t{4}));
  const std::string history = routed_pick(from_log, "explain the war of the roman empire").first;
  CHECK((history == "historian" || history == "newcomer"));

  // Joined with a dataset that has never seen the newcomer: a column is
  // added, and a scorer must be named (no row is complete to choose on).
  torouter::testing::write_synthetic_dataset(dir / "joined", 60, 10);
  const std::string data = " --data '" + (dir / "joined").string() + "'";
  const std::string joined = (dir / "joined.tormodel").string();
  Run r = run("train --log '" + log + "'" + data + " --scorer knn:8 --out '" + joined + "'");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK_THAT(r.output, Contains("on 460 rows, 4 experts") && Contains("fitted from cost_usd"));
  CHECK(routed_pick(joined, "fix the bug in my python loop") ==
        std::make_pair(std::string("coder"), std::size_t{4}));
  // The newcomer's prices are fitted from its logged costs (the dearest of
  // the four), not left at 0: a large cost weight picks the cheapest.
  const Run cheap =
      run("route --model '" + joined + "' --lambda-cost 1e6 'explain the war of the roman empire'");
  INFO(cheap.output);
  CHECK_THAT(cheap.output, Contains("\"pick\": \"generalist\""));
  r = run("train --log '" + log + "'" + data + " --out '" + joined + "'");
  CHECK(r.status != 0);
  CHECK_THAT(r.output, Contains("experts not in dataset joined: newcomer"));

  // The dataset's experts only: the scorer is chosen on its complete rows.
  const std::string same_experts = (dir / "same_experts.jsonl").string();
  write_exploring_log(same_experts, torouter::testing::synthetic_rows(300, 22), false);
  r = run("train --log '" + same_experts + "'" + data +
          " --candidates 'knn:8;knn:30' --folds 3 --stacks 0 --out '" + joined + "'");
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK_THAT(r.output, Contains("360 training rows") && Contains("chose knn:"));
  CHECK(routed_pick(joined, "fix the bug in my python loop") ==
        std::make_pair(std::string("coder"), std::size_t{3}));

  r = run("train --log '" + log + "' --out '" + (dir / "x.tormodel").string() + "'");
  CHECK(r.status != 0);
  CHECK_THAT(r.output, Contains("--log without --data needs --scorer"));
  r = run("train --log '" + log + "' --scorer mlp:16 --loss soft --out '" +
          (dir / "x.tormodel").string() + "'");
  CHECK(r.status != 0);
  CHECK_THAT(r.output, Contains("--loss soft learns nothing from --log"));
  r = run("train --log '" + same_experts + "'" + data + " --candidates 'knn:8;mlp:16/soft'" +
          " --out '" + (dir / "x.tormodel").string() + "'");
  CHECK_THAT(r.output, Contains("--loss soft learns nothing from --log"));
  const std::string unjudged = (dir / "unjudged.jsonl").string();
  std::ofstream(unjudged) << torouter::testing::logged_decision_line("lonely", "a prompt", "coder",
                                                                     1.0, 0.001, 10, {"coder"})
                          << "\n";
  r = run("train --log '" + unjudged + "' --scorer knn:8 --out '" + (dir / "x.tormodel").string() +
          "'");
  CHECK(r.status != 0);
  CHECK_THAT(r.output, Contains("1 decisions") && Contains("no call with feedback"));
}
