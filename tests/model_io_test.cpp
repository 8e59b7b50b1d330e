#include "torouter/model_io.hpp"

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "support/model_bytes.hpp"
#include "support/temp_dir.hpp"
#include "torouter/error.hpp"
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
  // Whole int8 steps of 2^-10 per row: stored as q8, so the file is format 3.
  out.add_tensor("steps", {1, 6},
                 {127.0f / 1024, -3.0f / 1024, 5.0f / 1024, 0, 64.0f / 1024, 1.0f / 1024});
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
  CHECK(in.tensor("steps", {1, 6}).values ==
        std::vector<float>{127.0f / 1024, -3.0f / 1024, 5.0f / 1024, 0, 64.0f / 1024, 1.0f / 1024});
}

TEST_CASE("empty tensors round-trip, however many and wherever they are") {
  ModelWriter out("demo");
  out.add_tensor("a.empty", {0}, {});
  out.add_tensor("b", {2}, {0.5f, 0.25f});
  out.add_tensor("c.empty", {0, 4}, {});
  out.add_tensor("z.empty", {3, 0}, {});  // last, at the payload's end
  const std::string path = temp_path("empties.tormodel");
  out.write(path);
  const ModelReader in = ModelReader::open(path);
  CHECK(in.tensor("a.empty", {0}).values.empty());
  CHECK(in.tensor("c.empty", {0, 4}).values.empty());
  CHECK(in.tensor("z.empty", {3, 0}).values.empty());
  CHECK(in.tensor("b", {2}).values == std::vector<float>{0.5f, 0.25f});
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
    write_bytes(path, torouter::testing::resealed(good + "xxxx"));
    CHECK_THAT(open_error(path), Contains("payload has"));
  }
  SECTION("a NaN weight") {
    std::string bytes = good;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(&bytes[bytes.size() - 4], &nan, 4);
    const std::string path = temp_path("nan.tormodel");
    write_bytes(path, torouter::testing::resealed(bytes));
    CHECK_THAT(open_error(path), Contains("nan.tormodel") && Contains("NaN or infinity"));
  }
  SECTION("a header that is not JSON") {
    std::string bytes = good;
    bytes[20] = '#';
    const std::string path = temp_path("header.tormodel");
    write_bytes(path, bytes);
    CHECK_THAT(open_error(path), Contains("header is not valid JSON"));
  }
  SECTION("any byte changed, in the header or the payload") {
    // One byte flipped at each of 40 places: each file is refused, as
    // damaged or by the check the flip breaks first (the magic, the
    // version, the sizes, the header's JSON); none loads.
    for (std::size_t i = 0; i < 40; ++i) {
      std::string bytes = good;
      const std::size_t at = i * (bytes.size() - 1) / 39;
      bytes[at] = static_cast<char>(bytes[at] ^ 0x10);
      const std::string path = temp_path("flipped.tormodel");
      write_bytes(path, bytes);
      INFO("byte " << at << " of " << bytes.size());
      CHECK_FALSE(open_error(path).empty());
    }
    // The header's last byte changed: no longer the checksum's ending, and
    // not the ending of a file written before checksums either.
    std::string ending = good;
    const std::size_t header_end =
        20 + static_cast<unsigned char>(good[12]) + 256 * static_cast<unsigned char>(good[13]);
    REQUIRE(ending.substr(header_end - 3, 3) == "\"}\n");
    ending[header_end - 1] = ' ';
    write_bytes(temp_path("ending.tormodel"), ending);
    CHECK_THAT(open_error(temp_path("ending.tormodel")), Contains("damaged"));
    std::string digit = good;
    digit[good.find("\"rate\": 0.25") + 10] = '3';  // 0.35: valid JSON, another number
    write_bytes(temp_path("digit.tormodel"), digit);
    CHECK_THAT(open_error(temp_path("digit.tormodel")), Contains("damaged"));
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

namespace {

// A model file from its parts, as another writer (or an attacker) could make it.
std::string handmade_model(std::uint32_t version, const std::string& tensors_json,
                           const std::string& payload) {
  const std::string header = "{\"format_version\": " + std::to_string(version) +
                             ", \"kind\": \"demo\", \"fields\": {}, \"tensors\": [" + tensors_json +
                             "]}";
  std::string bytes = "TORMODEL";
  for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>((version >> (8 * i)) & 0xFF));
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xFF));
  return bytes + header + payload;
}

std::string float_bytes(const std::vector<float>& values) {
  std::string out(values.size() * 4, '\0');
  std::memcpy(out.data(), values.data(), out.size());  // the tests run on little-endian hosts
  return out;
}

std::string parse_error(const std::string& bytes) {
  try {
    ModelReader::parse(bytes, "handmade");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a tensor of half-precision numbers takes two bytes a value, losing nothing") {
  std::vector<float> halves;
  std::vector<float> singles;
  for (int i = 0; i < 1000; ++i) {
    halves.push_back(static_cast<float>(i % 97) / 64.0f - 0.75f);  // exact in half precision
    singles.push_back(1.0f + static_cast<float>(i) * 1e-6f);       // not
  }
  halves[3] = -0.0f;
  halves[4] = 6.0e-8f;  // near the smallest half-precision subnormal, 2^-24, but not it
  const auto write = [](const std::string& name, const std::vector<float>& values) {
    ModelWriter out("demo");
    out.add_tensor("t", {static_cast<std::int64_t>(values.size())}, values);
    const std::string path = temp_path(name);
    out.write(path);
    return path;
  };
  SECTION("values that all fit") {
    halves[4] = std::ldexp(1.0f, -24);  // the smallest half-precision subnormal
    const std::string half_path = write("half.tormodel", halves);
    const std::string single_path = write("single.tormodel", singles);
    // Two bytes fewer a value; the f16 file's header names the type.
    CHECK(std::filesystem::file_size(single_path) - std::filesystem::file_size(half_path) ==
          2000 - std::string(", \"type\": \"f16\"").size());
    CHECK_THAT(read_bytes(half_path), Contains("\"type\": \"f16\""));
    CHECK(ModelReader::open(half_path).format_version() == 2);
    // A file with nothing of format 2 is written as format 1, which older
    // readers load.
    CHECK(ModelReader::open(single_path).format_version() == 1);
    const std::vector<float> back = ModelReader::open(half_path).tensor("t", {1000}).values;
    CHECK(std::memcmp(back.data(), halves.data(), halves.size() * 4) == 0);  // -0 stays -0
    CHECK(ModelReader::open(single_path).tensor("t", {1000}).values == singles);
  }
  SECTION("one value that does not fit keeps the whole tensor float32") {
    const std::string path = write("mixed.tormodel", halves);
    CHECK_THAT(read_bytes(path), !Contains("\"type\""));
    CHECK(ModelReader::open(path).format_version() == 1);
    const std::vector<float> back = ModelReader::open(path).tensor("t", {1000}).values;
    CHECK(back[4] == 6.0e-8f);
    CHECK(back[5] == halves[5]);
  }
}

TEST_CASE("a tensor equal to an earlier one is stored once and read under both names") {
  std::vector<float> shared(500);
  for (std::size_t i = 0; i < shared.size(); ++i) shared[i] = 1.0f / static_cast<float>(i + 3);
  ModelWriter once("demo");
  once.add_tensor("a.projection", {50, 10}, shared);
  once.add_tensor("m", {1}, {0.1f});
  const std::string once_path = temp_path("once.tormodel");
  once.write(once_path);
  ModelWriter twice = once;
  twice.add_tensor("z.projection", {10, 50}, shared);  // same values, another shape
  const std::string twice_path = temp_path("twice.tormodel");
  twice.write(twice_path);
  // Only the header grows (a new entry, and each entry's type now that the
  // file is format 2): the second name points at the first one's bytes.
  CHECK(std::filesystem::file_size(twice_path) - std::filesystem::file_size(once_path) < 150);
  const ModelReader in = ModelReader::open(twice_path);
  CHECK(in.format_version() == 2);
  CHECK(in.tensor("a.projection", {50, 10}).values == shared);
  CHECK(in.tensor("z.projection", {10, 50}).values == shared);
  CHECK(in.tensor("m", {1}).values[0] == 0.1f);

  // Several members of a stack sharing one half-precision projection: each
  // name decodes the bytes again, well inside the reader's bound.
  ModelWriter stack("stack");
  const std::vector<float> projection(4096, 0.375f);
  for (int member = 0; member < 6; ++member) {
    stack.add_tensor("member" + std::to_string(member) + ".projection", {64, 64}, projection);
  }
  const std::string stack_path = temp_path("stack.tormodel");
  stack.write(stack_path);
  CHECK(std::filesystem::file_size(stack_path) < 4096 * 2 + 1024);
  CHECK(ModelReader::open(stack_path).tensor("member5.projection", {64, 64}).values == projection);
}

TEST_CASE("format 1 files still read, and forged offsets and types are refused") {
  const std::string payload = float_bytes({1.5f, 2.5f, 3.5f});
  SECTION("format 1: float32 only, no type") {
    const ModelReader in =
        ModelReader::parse(handmade_model(1, R"({"name": "a", "shape": [2], "offset": 0},
                             {"name": "b", "shape": [1], "offset": 8})",
                                          payload),
                           "v1");
    CHECK(in.format_version() == 1);
    CHECK(in.tensor("a", {2}).values == std::vector<float>{1.5f, 2.5f});
    CHECK(in.tensor("b", {1}).values == std::vector<float>{3.5f});
  }
  SECTION("format 1 with a type, or with shared bytes") {
    CHECK_THAT(parse_error(handmade_model(
                   1, R"({"name": "a", "shape": [3], "type": "f32", "offset": 0})", payload)),
               Contains("tensor \"a\": \"type\" needs model format 2"));
    CHECK_THAT(parse_error(handmade_model(1, R"({"name": "a", "shape": [3], "offset": 0},
                                               {"name": "b", "shape": [3], "offset": 0})",
                                          payload)),
               Contains("tensor \"b\": offset 0 where 12 was expected"));
  }
  SECTION("an f16 tensor cut short, or holding an infinity") {
    CHECK_THAT(parse_error(handmade_model(
                   2, R"({"name": "a", "shape": [7], "type": "f16", "offset": 0})", payload)),
               Contains("truncated: tensor \"a\""));
    const std::string infinity("\x00\x7c", 2);  // binary16 +inf
    CHECK_THAT(parse_error(handmade_model(
                   2, R"({"name": "a", "shape": [1], "type": "f16", "offset": 0})", infinity)),
               Contains("tensor \"a\" holds NaN or infinity at index 0"));
  }
  SECTION("many names for one tensor cannot make the reader allocate without limit") {
    std::string entries = R"({"name": "a", "shape": [3], "type": "f32", "offset": 0})";
    for (int i = 0; i < 20; ++i) {
      entries += R"(, {"name": "b)" + std::to_string(i) +
                 R"(", "shape": [3], "type": "f32", "offset": 0})";
    }
    CHECK_THAT(parse_error(handmade_model(2, entries, payload)),
               Contains("tensor \"b15\": the tensors decode to more than 16 times"));
  }
  SECTION("an unknown type") {
    CHECK_THAT(parse_error(handmade_model(
                   2, R"({"name": "a", "shape": [3], "type": "bf16", "offset": 0})", payload)),
               Contains("tensor \"a\": unknown type \"bf16\""));
  }
  SECTION("an offset into the middle of an earlier tensor") {
    CHECK_THAT(parse_error(handmade_model(2, R"({"name": "a", "shape": [2], "offset": 0},
                                               {"name": "b", "shape": [1], "offset": 4},
                                               {"name": "c", "shape": [1], "offset": 8})",
                                          payload)),
               Contains("tensor \"b\": offset 4 where 8"));
  }
  SECTION("a shared offset with another size or type") {
    CHECK_THAT(parse_error(handmade_model(2, R"({"name": "a", "shape": [2], "offset": 0},
                                               {"name": "b", "shape": [3], "offset": 0})",
                                          payload)),
               Contains("tensor \"b\": offset 0 where 8"));
    CHECK_THAT(
        parse_error(handmade_model(2, R"({"name": "a", "shape": [3], "type": "f32", "offset": 0},
                                        {"name": "b", "shape": [3], "type": "f16", "offset": 0})",
                                   payload)),
        Contains("tensor \"b\": offset 0 where 12"));
  }
  SECTION("a shared offset with the same size and type reads the same values") {
    const ModelReader in = ModelReader::parse(
        handmade_model(2, R"({"name": "a", "shape": [3], "type": "f32", "offset": 0},
                             {"name": "b", "shape": [3], "type": "f32", "offset": 0})",
                       payload),
        "shared");
    CHECK(in.tensor("b", {3}).values == in.tensor("a", {3}).values);
  }
}

TEST_CASE("rows of whole int8 steps are stored in a byte a value, and nothing else is") {
  // 300 rows of 32: each a whole number of steps of its largest magnitude
  // / 127 (kept to 17 significant bits), as compact_storage.hpp rounds them,
  // with a row of zeros among them; not half-precision numbers.
  std::vector<float> steps(300 * 32);
  for (std::size_t r = 0; r < 300; ++r) {
    const float scale = r == 7 ? 0.0f : std::ldexp(1.0f + static_cast<float>(r) / 512.0f, -12);
    for (std::size_t c = 0; c < 32; ++c) {
      const int step = c == 0 ? 127 : static_cast<int>((r * 31 + c * 17) % 255) - 127;
      steps[r * 32 + c] = static_cast<float>(step) * scale;
    }
  }
  ModelWriter out("demo");
  out.add_tensor("steps", {300, 32}, steps);
  const std::string path = temp_path("steps.tormodel");
  out.write(path);
  const ModelReader in = ModelReader::open(path);
  CHECK(in.format_version() == 3);
  CHECK(in.tensor("steps", {300, 32}).values == steps);
  // A byte a value and a scale a row, against 4 bytes a value for float32.
  CHECK(std::filesystem::file_size(path) < 300 * 32 + 300 * 4 + 512);

  // A q8 tensor in a file that says format 2 is refused by name.
  std::string bytes = read_bytes(path);
  bytes[8] = 2;
  CHECK_THAT(parse_error(torouter::testing::resealed(bytes)),
             Contains("tensor \"steps\": type \"q8\" needs model format 3"));

  // One value off its row's steps: the tensor is stored as it is, exactly.
  std::vector<float> off_steps = steps;
  off_steps[5 * 32 + 3] += 1e-7f;
  ModelWriter off("demo");
  off.add_tensor("steps", {300, 32}, off_steps);
  const std::string off_path = temp_path("off_steps.tormodel");
  off.write(off_path);
  CHECK(ModelReader::open(off_path).tensor("steps", {300, 32}).values == off_steps);
  CHECK(std::filesystem::file_size(off_path) > 300 * 32 * 4);
}
