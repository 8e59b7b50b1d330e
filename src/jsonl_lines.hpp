// Internal: reading a JSON-lines file (datasets, prompts, the collect
// journal) with errors that name the file, the line and the field.
#pragma once

#include <fmt/format.h>
#include <simdjson.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include "ascii.hpp"
#include "json_type_name.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open file", path), ErrorCode::FileAccess);
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error(fmt::format("{}: cannot read file", path), ErrorCode::FileAccess);
  return text.str();
}

inline bool is_blank(std::string_view line) {
  for (char c : line) {
    if (!is_space(c)) return false;
  }
  return true;
}

// Calls `fn(line, line_no)` for each line, split on '\n' only (prompts may
// hold U+2028). Blank lines (ASCII whitespace only) are allowed at the end
// only.
template <typename Fn>
void for_each_line(std::string_view text, const std::string& origin, Fn&& fn) {
  std::size_t line_no = 0;
  std::size_t start = 0;
  std::size_t first_blank = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(start, end - start);
    ++line_no;
    start = end + 1;
    if (is_blank(line)) {
      if (first_blank == 0) first_blank = line_no;
      continue;
    }
    if (first_blank != 0) throw Error(fmt::format("{}:{}: empty line", origin, first_blank));
    fn(line, line_no);
  }
}

inline simdjson::dom::object parse_object(simdjson::dom::parser& parser, std::string_view line,
                                          const std::string& origin, std::size_t line_no) {
  const simdjson::padded_string padded(line);
  simdjson::dom::element root;
  if (auto error = parser.parse(padded).get(root); error != simdjson::SUCCESS) {
    throw Error(
        fmt::format("{}:{}: not valid JSON: {}", origin, line_no, simdjson::error_message(error)));
  }
  simdjson::dom::object object;
  if (root.get_object().get(object) != simdjson::SUCCESS) {
    throw Error(fmt::format("{}:{}: expected a JSON object, got {}", origin, line_no,
                            detail::json_type_name(root)));
  }
  return object;
}

// One line's field readers: each error names the origin, the line and the
// field, and says what was expected.
struct LineFields {
  const std::string& origin;
  std::size_t line_no;

  [[noreturn]] void fail(std::string_view field, std::string_view problem) const {
    throw Error(fmt::format("{}:{}: {}: {}", origin, line_no, field, problem));
  }
  std::string_view text(std::string_view field, simdjson::dom::element value) const {
    std::string_view out;
    if (value.get_string().get(out) != simdjson::SUCCESS) {
      fail(field, fmt::format("expected a string, got {}", json_type_name(value)));
    }
    return out;
  }
  double number(std::string_view field, simdjson::dom::element value) const {
    double out = 0;
    if (value.get_double().get(out) != simdjson::SUCCESS) {
      fail(field, fmt::format("expected a number, got {}", json_type_name(value)));
    }
    return out;
  }
  std::size_t whole(std::string_view field, simdjson::dom::element value) const {
    std::uint64_t out = 0;
    if (value.get_uint64().get(out) != simdjson::SUCCESS) {
      fail(field, fmt::format("expected a whole number >= 0, got {}", simdjson::to_string(value)));
    }
    return static_cast<std::size_t>(out);
  }
};

}  // namespace detail
TOROUTER_END_NAMESPACE
