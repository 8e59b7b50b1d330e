#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "support/temp_dir.hpp"
#include "torouter/error.hpp"
#include "torouter/model_io.hpp"
#include "torouter/trainable_scorer.hpp"

using torouter::Error;
using torouter::ModelReader;
using torouter::ModelWriter;
using Catch::Matchers::Contains;

namespace {

std::string temp_path(const std::string& name) {
  return (torouter::testing::process_temp_dir("torouter_model_io_test") / name).string();
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string sample_model(const std::string& name) {
  ModelWriter out("demo");
  out.set("count", 3);
  out.set("rate", 0.25);
  out.set("name", std::string("héllo \"quoted\"\n"));
  out.set("on", true);
  out.set("widths", std::vector<double>{64, 32});
  out.set("experts", std::vector<std::string>{"a", "b"});
  Eigen::MatrixXf m(2, 3);
  m << 1, 2, 3, 4, 5, -6.5f;
  out.add_tensor("weights", m);
  out.add_tensor("bias", {3}, {0.5f, -0.5f, 1e-8f});
  const std::string path = temp_path(name);
  out.write(path);
  return path;
}

std::string open_error(const std::string& path) {
  try {
    ModelReader::open(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The code of the error opening `path` throws (a program branches on it).
torouter::ErrorCode open_error_code(const std::string& path) {
  try {
    ModelReader::open(path);
  } catch (const Error& e) {
    return e.code();
  }
  FAIL("no error");
  return torouter::ErrorCode::InvalidInput;
}

}  // namespace

TEST_CASE("fields and tensors round-trip through a model file") {
  const ModelReader in = ModelReader::open(sample_model("good.tormodel"));
  CHECK(in.kind() == "demo");
  CHECK(in.format_version() == torouter::kModelFormatVersion);
  CHECK(in.integer("count") == 3);
  CHECK(in.number("rate") == 0.25);
  CHECK(in.text("name") == "héllo \"quoted\"\n");
  CHECK(in.flag("on"));
  CHECK(in.numbers("widths") == std::vector<double>{64, 32});
  CHECK(in.texts("experts") == std::vector<std::string>{"a", "b"});
  Eigen::MatrixXf m;
  in.tensor("weights", 2, 3, m);
  CHECK(m(1, 2) == -6.5f);
  CHECK(m(0, 1) == 2.0f);
  CHECK(in.tensor("bias", {3}).values[2] == 1e-8f);
}

TEST_CASE("an empty tensor round-trips (a fuzzing regression)") {
  // tests/fuzz/corpus/fuzz_model_file/regression-empty-tensor.tormodel is the
  // input that found memcpy called on an empty tensor's null data.
  ModelWriter out("demo");
  out.add_tensor("empty", {0, 3}, {});
  out.add_tensor("after", {1}, {2.5f});
  const std::string path = temp_path("empty.tormodel");
  out.write(path);
  const ModelReader in = ModelReader::open(path);
  CHECK(in.tensor("empty", {0, 3}).values.empty());
  CHECK(in.tensor("after", {1}).values[0] == 2.5f);
  CHECK_THROWS_AS(torouter::load_model(ModelReader::parse(
                      read_bytes(std::string(TOROUTER_SOURCE_DIR) +
                                 "/tests/fuzz/corpus/fuzz_model_file/regression-empty-tensor.tormodel"),
                      "regression")),
                  Error);
}

TEST_CASE("reading a field or tensor that is absent or of another type names it") {
  const ModelReader in = ModelReader::open(sample_model("types.tormodel"));
  CHECK_THROWS_WITH(in.number("missing"), Contains("types.tormodel") && Contains("missing field \"missing\""));
  CHECK_THROWS_WITH(in.text("count"), Contains("field \"count\": expected a string"));
  CHECK_THROWS_WITH(in.integer("rate"), Contains("field \"rate\": expected a whole number"));
  CHECK_THROWS_WITH(in.integer("count", 5, 10), Contains("[5, 10]"));
  Eigen::MatrixXf m;
  CHECK_THROWS_WITH(in.tensor("weights", 3, 2, m),
                    Contains("tensor \"weights\" has shape [2, 3], expected [3, 2]"));
  CHECK_THROWS_WITH(in.tensor("nothing", {1}), Contains("missing tensor \"nothing\""));
}

TEST_CASE("a damaged model file is refused, naming the file and the problem") {
  const std::string good = read_bytes(sample_model("source.tormodel"));
  SECTION("not a model file") {
    const std::string path = temp_path("text.tormodel");
    write_bytes(path, "{\"json\": true}");
    CHECK_THAT(open_error(path), Contains("text.tormodel") && Contains("not a torouter model file"));
    CHECK(open_error_code(path) == torouter::ErrorCode::InvalidInput);
  }
  SECTION("a newer format version") {
    std::string bytes = good;
    bytes[8] = static_cast<char>(torouter::kModelFormatVersion + 1);
    const std::string path = temp_path("newer.tormodel");
    write_bytes(path, bytes);
    CHECK_THAT(open_error(path), Contains("newer.tormodel") && Contains("newer than this torouter") &&
                                     Contains("upgrade torouter"));
    CHECK(open_error_code(path) == torouter::ErrorCode::IncompatibleModel);
  }
  SECTION("truncated in the payload, in the header, in the preamble") {
    for (std::size_t keep : {good.size() - 2, std::size_t{40}, std::size_t{10}}) {
      const std::string path = temp_path("truncated.tormodel");
      write_bytes(path, good.substr(0, keep));
      const std::string message = open_error(path);
      INFO(message);
      CHECK_THAT(message, Contains("truncated.tormodel"));
      CHECK_FALSE(message.empty());
    }
    const std::string path = temp_path("truncated.tormodel");
    write_bytes(path, good.substr(0, good.size() - 2));
    CHECK_THAT(open_error(path), Contains("truncated"));
  }
  SECTION("trailing bytes") {
    const std::string path = temp_path("trailing.tormodel");
    write_bytes(path, good + "xxxx");
    CHECK_THAT(open_error(path), Contains("payload has"));
  }
  SECTION("a NaN weight") {
    std::string bytes = good;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(&bytes[bytes.size() - 4], &nan, 4);
    const std::string path = temp_path("nan.tormodel");
    write_bytes(path, bytes);
    CHECK_THAT(open_error(path), Contains("nan.tormodel") && Contains("NaN or infinity"));
  }
  SECTION("a header that is not JSON") {
    std::string bytes = good;
    bytes[20] = '#';
    const std::string path = temp_path("header.tormodel");
    write_bytes(path, bytes);
    CHECK_THAT(open_error(path), Contains("header is not valid JSON"));
  }
  SECTION("a missing file") {
    CHECK_THAT(open_error(temp_path("absent.tormodel")), Contains("cannot open model file"));
    CHECK(open_error_code(temp_path("absent.tormodel")) == torouter::ErrorCode::FileAccess);
    CHECK(std::string(torouter::to_string(torouter::ErrorCode::FileAccess)) == "file_access");
  }
}

TEST_CASE("the writer refuses what it cannot store") {
  ModelWriter out("demo");
  CHECK_THROWS_WITH(out.add_tensor("t", {2, 2}, {1, 2, 3}), Contains("does not hold 3 values"));
  out.add_tensor("inf", {1}, {std::numeric_limits<float>::infinity()});
  CHECK_THROWS_WITH(out.write(temp_path("inf.tormodel")), Contains("NaN or infinity"));
  ModelWriter field("demo");
  field.set("x", std::numeric_limits<double>::quiet_NaN());
  CHECK_THROWS_WITH(field.write(temp_path("nanfield.tormodel")), Contains("not finite"));
}
