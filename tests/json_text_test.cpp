// The JSON text helpers internal to src/ (json_text.hpp): append_minified
// against simdjson's own minify, on the values the server relays.
#include "json_text.hpp"

#include <simdjson.h>

#include <catch2/catch.hpp>
#include <string>

namespace {

simdjson::dom::element parsed(simdjson::dom::parser& parser, const std::string& json) {
  simdjson::dom::element doc;
  REQUIRE_FALSE(parser.parse(json).get(doc));
  return doc;
}

}  // namespace

TEST_CASE("append_minified writes what simdjson::minify writes, after what is there") {
  simdjson::dom::parser parser;
  const std::string json =
      R"({ "messages" : [ {"role": "user", "content": "caf\u00e9 \"quoted\"\n"},)"
      R"( {"role":"tool", "content": null, "n": [1, -2.5e3, true, false, 18446744073709551615]} ],)"
      R"( "empty": {}, "none": [] })";
  const simdjson::dom::element doc = parsed(parser, json);
  std::string out = "x:";
  torouter::detail::append_minified(out, doc);
  CHECK(out == "x:" + simdjson::minify(doc));

  simdjson::dom::array messages;
  REQUIRE_FALSE(doc["messages"].get(messages));
  simdjson::dom::object first;
  REQUIRE_FALSE(messages.at(0).get(first));
  out.clear();
  torouter::detail::append_minified(out, messages);
  torouter::detail::append_minified(out, first);
  CHECK(out == simdjson::minify(messages) + simdjson::minify(first));
}

TEST_CASE("append_minified is right after a value larger than the builder it keeps") {
  simdjson::dom::parser parser;
  // Past the 64 KiB the thread's builder keeps, then small values again.
  const std::string large = "[\"" + std::string(100000, 'a') + "\",1]";
  std::string out;
  torouter::detail::append_minified(out, parsed(parser, large));
  CHECK(out == large);
  out.clear();
  torouter::detail::append_minified(out, parsed(parser, R"({"a": [ 1 , 2 ]})"));
  CHECK(out == R"({"a":[1,2]})");
}
