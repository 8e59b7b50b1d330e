// Small helpers to write JSON text with fmt; internal to src/.
#pragma once

#include <fmt/format.h>

#include <cmath>
#include <iterator>
#include <string>
#include <string_view>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

/// Appends `text` to `out` as a quoted JSON string; control characters
/// escaped, other bytes passed through (the input is expected to be UTF-8).
inline void append_json_string(std::string& out, std::string_view text) {
  out.push_back('"');
  std::size_t clean_from = 0;  // start of the run of bytes that need no escape
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(text.data() + clean_from, i - clean_from);
    clean_from = i + 1;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default: fmt::format_to(std::back_inserter(out), "\\u{:04x}", c);
    }
  }
  out.append(text.data() + clean_from, text.size() - clean_from);
  out.push_back('"');
}

/// `text` as a quoted JSON string (see `append_json_string`).
inline std::string json_string(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  append_json_string(out, text);
  return out;
}

/// A number as JSON; NaN and infinity, which JSON lacks, become null.
inline std::string json_number(double value) {
  return std::isfinite(value) ? fmt::format("{}", value) : std::string("null");
}

}  // namespace detail
TOROUTER_END_NAMESPACE
