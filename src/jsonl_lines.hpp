// Internal: reading a JSON-lines file (prompts, the collect journal) with
// errors that name the file and the line.
#pragma once

#include <fmt/format.h>
#include <simdjson.h>

#include <cstddef>
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

}  // namespace detail
TOROUTER_END_NAMESPACE
