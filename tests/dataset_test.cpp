// Routing dataset loader: good rows, every kind of malformed line, U+2028
// inside a prompt, the README's cost rule, and the shared datasets' counts.
#include "torouter/dataset.hpp"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "support/data_dir.hpp"
#include "torouter/error.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

// A fresh folder under the system's temp directory, removed at scope end.
class TempDir {
 public:
  TempDir() {
    // A random part keeps concurrent runs (ctest -j) out of each other's way.
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("torouter_dataset_test_" + std::to_string(std::random_device{}()) + "_" +
             std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const fs::path& path() const { return path_; }

  std::string write(const std::string& name, const std::string& text) const {
    const fs::path file = path_ / name;
    std::ofstream out(file, std::ios::binary);
    out << text;
    return file.string();
  }

 private:
  fs::path path_;
};

const char* const kExpertsJson = R"({"source": "test", "experts": {
  "small": {"input_usd_per_mtok": 0.2, "output_usd_per_mtok": 0.6, "size": "7B"},
  "large": {"input_usd_per_mtok": 3, "output_usd_per_mtok": 15},
  "free": {}}})";

const std::vector<std::string> kExperts{"small", "large", "free"};

// U+2028 (LINE SEPARATOR) as UTF-8 bytes, raw inside the JSON string.
const std::string kLineSeparator = "\xE2\x80\xA8";

// Line 1 holds a raw U+2028 in its prompt: were lines split on it, every
// later line number would be off by one.
const std::string kGoodLine1 = R"({"id": "t.1", "task": "math", "prompt": "first)" +
                               kLineSeparator +
                               R"(second", "outcomes": {)"
                               R"("small": {"quality": 1.0, "cost_usd": 0.002, "output_chars": 5},)"
                               R"( "large": {"quality": 0.25}, "free": {"quality": 0}}})";
const std::string kGoodLine2 =
    R"({"id": "t.2", "task": "code", "prompt": "x", "extra": [1, 2],)"
    R"( "outcomes": {"free": {"quality": 0.5, "output_chars": 9, "latency_ms": 3}}})";

// The message of the Error that parsing `line` as line 3 (after the two good
// lines) throws.
std::string error_on_line3(const std::string& line) {
  const std::string text = kGoodLine1 + "\n" + kGoodLine2 + "\n" + line + "\n";
  try {
    torouter::parse_dataset_rows(text, "rows.jsonl", kExperts);
  } catch (const torouter::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("good rows load in file order with outcomes in experts' order", "[dataset]") {
  TempDir dir;
  const auto path = dir.write("rows.jsonl", kGoodLine1 + "\n" + kGoodLine2 + "\n\n");
  const auto rows = torouter::load_dataset_rows(path, kExperts);
  REQUIRE(rows.size() == 2);

  const auto& first = rows[0];
  CHECK(first.id == "t.1");
  CHECK(first.task == "math");
  CHECK(first.prompt == "first" + kLineSeparator + "second");
  REQUIRE(first.outcomes.size() == 3);
  CHECK(first.complete());
  CHECK(first.outcomes[0].present);
  CHECK(first.outcomes[0].quality == 1.0);
  CHECK(first.outcomes[0].cost_usd == 0.002);
  CHECK(first.outcomes[0].output_chars == std::optional<std::size_t>(5));
  CHECK(first.outcomes[1].quality == 0.25);
  CHECK_FALSE(first.outcomes[1].cost_usd);
  CHECK_FALSE(first.outcomes[1].output_chars);
  CHECK(first.outcomes[2].quality == 0.0);  // an integer 0 is a number too

  const auto& second = rows[1];
  CHECK_FALSE(second.complete());
  CHECK_FALSE(second.outcomes[0].present);
  CHECK_FALSE(second.outcomes[1].present);
  CHECK(second.outcomes[2].present);
  CHECK(second.outcomes[2].quality == 0.5);
  CHECK(second.outcomes[2].output_chars == std::optional<std::size_t>(9));

  const auto complete = torouter::complete_rows(rows);
  REQUIRE(complete.size() == 1);
  CHECK(complete[0].id == "t.1");
}

TEST_CASE("a file without a final newline, and CRLF lines, load", "[dataset]") {
  const auto rows =
      torouter::parse_dataset_rows(kGoodLine1 + "\r\n" + kGoodLine2, "rows.jsonl", kExperts);
  REQUIRE(rows.size() == 2);
  CHECK(rows[1].id == "t.2");
  CHECK(torouter::parse_dataset_rows("", "empty.jsonl", kExperts).empty());
}

TEST_CASE("malformed lines name the file, the line and the field", "[dataset]") {
  SECTION("invalid JSON") {
    CHECK_THAT(error_on_line3(R"({"prompt": "x", "outcomes": {)"),
               Contains("rows.jsonl:3: not valid JSON"));
  }
  SECTION("not an object") {
    CHECK_THAT(error_on_line3("[1, 2]"), Contains("rows.jsonl:3: expected a JSON object"));
  }
  SECTION("missing prompt") {
    CHECK_THAT(error_on_line3(R"({"id": "a", "outcomes": {}})"),
               Contains("rows.jsonl:3: prompt: missing"));
  }
  SECTION("missing outcomes") {
    CHECK_THAT(error_on_line3(R"({"prompt": "a"})"), Contains("rows.jsonl:3: outcomes: missing"));
  }
  SECTION("prompt of the wrong type") {
    CHECK_THAT(error_on_line3(R"({"prompt": 7, "outcomes": {}})"),
               Contains("rows.jsonl:3: prompt: expected a string, got a number"));
  }
  SECTION("id of the wrong type") {
    CHECK_THAT(error_on_line3(R"({"id": null, "prompt": "a", "outcomes": {}})"),
               Contains("rows.jsonl:3: id: expected a string, got null"));
  }
  SECTION("outcomes of the wrong type") {
    CHECK_THAT(error_on_line3(R"({"prompt": "a", "outcomes": []})"),
               Contains("rows.jsonl:3: outcomes: expected an object"));
  }
  SECTION("an outcome that is not an object") {
    CHECK_THAT(error_on_line3(R"({"prompt": "a", "outcomes": {"small": 1}})"),
               Contains("rows.jsonl:3: outcomes.\"small\": expected an object, got a number"));
  }
  SECTION("quality above 1") {
    CHECK_THAT(error_on_line3(R"({"prompt": "a", "outcomes": {"small": {"quality": 1.5}}})"),
               Contains("rows.jsonl:3: outcomes.\"small\".quality: must be in [0, 1], got 1.5"));
  }
  SECTION("quality below 0") {
    CHECK_THAT(error_on_line3(R"({"prompt": "a", "outcomes": {"large": {"quality": -0.1}}})"),
               Contains("rows.jsonl:3: outcomes.\"large\".quality: must be in [0, 1]"));
  }
  SECTION("quality not a number") {
    CHECK_THAT(error_on_line3(R"({"prompt": "a", "outcomes": {"small": {"quality": "1"}}})"),
               Contains("rows.jsonl:3: outcomes.\"small\".quality: expected a number, got a "
                        "string"));
  }
  SECTION("quality missing") {
    CHECK_THAT(error_on_line3(R"({"prompt": "a", "outcomes": {"small": {"cost_usd": 1}}})"),
               Contains("rows.jsonl:3: outcomes.\"small\".quality: missing"));
  }
  SECTION("an expert not in experts.json") {
    CHECK_THAT(error_on_line3(R"({"prompt": "a", "outcomes": {"ghost": {"quality": 1}}})"),
               Contains("rows.jsonl:3: outcomes.\"ghost\": expert not listed in experts.json"));
  }
  SECTION("the same expert twice") {
    CHECK_THAT(error_on_line3(R"({"prompt": "a", "outcomes": {"small": {"quality": 1}, )"
                              R"("small": {"quality": 0}}})"),
               Contains("rows.jsonl:3: outcomes.\"small\": duplicate outcome"));
  }
  SECTION("negative cost") {
    CHECK_THAT(error_on_line3(R"({"prompt": "a", "outcomes": {"small": {"quality": 1, )"
                              R"("cost_usd": -1}}})"),
               Contains("rows.jsonl:3: outcomes.\"small\".cost_usd: must be a finite number"));
  }
  SECTION("cost of the wrong type") {
    CHECK_THAT(error_on_line3(R"({"prompt": "a", "outcomes": {"small": {"quality": 1, )"
                              R"("cost_usd": true}}})"),
               Contains("rows.jsonl:3: outcomes.\"small\".cost_usd: expected a number, got a "
                        "boolean"));
  }
  SECTION("output_chars not a whole number") {
    CHECK_THAT(error_on_line3(R"({"prompt": "a", "outcomes": {"small": {"quality": 1, )"
                              R"("output_chars": 2.5}}})"),
               Contains("rows.jsonl:3: outcomes.\"small\".output_chars: expected a whole "
                        "number >= 0, got 2.5"));
    CHECK_THAT(error_on_line3(R"({"prompt": "a", "outcomes": {"small": {"quality": 1, )"
                              R"("output_chars": -3}}})"),
               Contains("rows.jsonl:3: outcomes.\"small\".output_chars"));
  }
  SECTION("a blank line before a row") {
    const std::string text = kGoodLine1 + "\n\n" + kGoodLine2 + "\n";
    CHECK_THROWS_WITH(torouter::parse_dataset_rows(text, "rows.jsonl", kExperts),
                      Contains("rows.jsonl:2: empty line"));
  }
}

TEST_CASE("load errors name the file", "[dataset]") {
  TempDir dir;
  const auto path = dir.write("bad.jsonl", kGoodLine1 + "\n{\"prompt\": 1}\n");
  CHECK_THROWS_WITH(torouter::load_dataset_rows(path, kExperts),
                    Contains(path + ":2: prompt: expected a string"));
  CHECK_THROWS_WITH(torouter::load_dataset_rows((dir.path() / "absent.jsonl").string(), kExperts),
                    Contains("absent.jsonl: cannot open file"));
}

TEST_CASE("the cost of a query follows the README's rule", "[dataset]") {
  torouter::ExpertSpec small;
  small.name = "small";
  small.input_usd_per_mtok = 0.2;
  small.output_usd_per_mtok = 0.6;
  torouter::ExpertSpec unpriced;  // prices absent: 0
  unpriced.name = "free";
  // "Größe von π?" is 12 code points in 15 bytes: ceil(12 / 4) = 3 input
  // tokens (bytes would give ceil(15 / 4) = 4).
  // Split so that the escape \x9F does not swallow the "e" after it.
  const std::string prompt =
      "Gr\xC3\xB6\xC3\x9F"
      "e von \xCF\x80?";
  REQUIRE(prompt.size() == 15);

  torouter::Outcome outcome;
  outcome.present = true;
  outcome.quality = 1.0;

  // Neither cost_usd nor output_chars: (3 * 0.2 + 0 * 0.6) / 1e6 = 0.6e-6.
  CHECK(torouter::query_cost_usd(prompt, outcome, small) == Approx(0.6e-6).epsilon(1e-12));

  // output_chars 10 -> ceil(10 / 4) = 3 output tokens:
  // (3 * 0.2 + 3 * 0.6) / 1e6 = (0.6 + 1.8) / 1e6 = 2.4e-6.
  outcome.output_chars = 10;
  CHECK(torouter::query_cost_usd(prompt, outcome, small) == Approx(2.4e-6).epsilon(1e-12));

  // Absent prices count as 0.
  CHECK(torouter::query_cost_usd(prompt, outcome, unpriced) == 0.0);

  // cost_usd, when given, is the cost whatever the prices and lengths.
  outcome.cost_usd = 0.5;
  CHECK(torouter::query_cost_usd(prompt, outcome, small) == 0.5);
  CHECK(torouter::query_cost_usd(prompt, outcome, unpriced) == 0.5);
}

TEST_CASE("a dataset folder loads, with matrices of quality and cost", "[dataset]") {
  TempDir dir;
  dir.write("experts.json", kExpertsJson);
  dir.write("train.jsonl", kGoodLine1 + "\n" + kGoodLine2 + "\n");
  // The prompt "abcdefghi" is 9 characters: ceil(9 / 4) = 3 input tokens.
  dir.write("test.jsonl",
            R"({"id": "q", "prompt": "abcdefghi", "outcomes": {"small": {"quality": 0.5, )"
            R"("output_chars": 4}, "large": {"quality": 1}, "free": {"quality": 0.75, )"
            R"("cost_usd": 0.125}}})"
            "\n");
  const auto data = torouter::load_routing_dataset(dir.path().string());
  CHECK(data.name == dir.path().filename().string());
  CHECK(data.experts == kExperts);
  REQUIRE(data.registry.size() == 3);
  CHECK(data.registry[1].input_usd_per_mtok == 3.0);
  CHECK(data.train.size() == 2);
  REQUIRE(data.test.size() == 1);

  const auto quality = torouter::quality_matrix(data.test);
  REQUIRE(quality.rows() == 1);
  REQUIRE(quality.cols() == 3);
  CHECK(quality(0, 0) == 0.5);
  CHECK(quality(0, 1) == 1.0);
  CHECK(quality(0, 2) == 0.75);

  const auto cost = torouter::cost_matrix(data, data.test);
  // small: (3 * 0.2 + ceil(4 / 4) * 0.6) / 1e6 = 1.2e-6
  CHECK(cost(0, 0) == Approx(1.2e-6).epsilon(1e-12));
  // large: no output_chars: (3 * 3 + 0 * 15) / 1e6 = 9e-6
  CHECK(cost(0, 1) == Approx(9e-6).epsilon(1e-12));
  // free: cost_usd given
  CHECK(cost(0, 2) == 0.125);

  // An incomplete row is refused by the matrices, naming it.
  CHECK_THROWS_WITH(torouter::quality_matrix(data.train), Contains("id \"t.2\""));
  CHECK_THROWS_WITH(torouter::cost_matrix(data, data.train), Contains("id \"t.2\""));
}

TEST_CASE("the shared datasets load with the README's counts", "[dataset][data]") {
  TOROUTER_SHARED_DATA_OR_SKIP(root_dir);
  {
    const auto data = torouter::load_routing_dataset((root_dir / "routerbench3").string());
    CHECK(data.name == "routerbench3");
    CHECK(data.experts.size() == 11);
    CHECK(data.train.size() == 2225);
    CHECK(data.test.size() == 953);
    CHECK(torouter::complete_rows(data.test).size() == 945);
  }
  {
    const auto data = torouter::load_routing_dataset((root_dir / "llmrouter14").string());
    CHECK(data.name == "llmrouter14");
    CHECK(data.experts.size() == 9);
    CHECK(data.train.size() == 5608);
    CHECK(data.test.size() == 500);
    CHECK(torouter::complete_rows(data.test).size() == 500);
  }
}
