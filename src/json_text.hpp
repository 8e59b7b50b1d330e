// Small helpers to write JSON text with fmt; internal to src/.
#pragma once

#include <fmt/compile.h>
#include <fmt/format.h>
#include <simdjson.h>

#include <cmath>
#include <iterator>
#include <string>
#include <string_view>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

/// The length of the UTF-8 sequence that starts `text` at `i`, or 0 when
/// it is not one (a stray byte, an overlong form, a surrogate, past U+10FFFF).
inline std::size_t utf8_sequence_length(std::string_view text, std::size_t i) {
  const auto byte = [&](std::size_t at) {
    return at < text.size() ? static_cast<unsigned char>(text[at]) : 0u;
  };
  const unsigned c = byte(i);
  if (c < 0x80) return 1;
  const auto tail = [&](std::size_t at) { return (byte(at) & 0xC0u) == 0x80u; };
  if (c >= 0xC2 && c <= 0xDF) return tail(i + 1) ? 2 : 0;
  const unsigned next = byte(i + 1);
  if (c >= 0xE0 && c <= 0xEF) {
    const bool ok_second =
        (c == 0xE0 && next >= 0xA0) || (c == 0xED && next < 0xA0) || (c != 0xE0 && c != 0xED);
    return ok_second && tail(i + 1) && tail(i + 2) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    const bool ok_second =
        (c == 0xF0 && next >= 0x90) || (c == 0xF4 && next < 0x90) || (c != 0xF0 && c != 0xF4);
    return ok_second && tail(i + 1) && tail(i + 2) && tail(i + 3) ? 4 : 0;
  }
  return 0;
}

/// `text` with every byte that is not part of valid UTF-8 replaced by
/// U+FFFD, as a decoder would show it.
inline std::string valid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t n = utf8_sequence_length(text, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(text.data() + i, n);
      i += n;
    }
  }
  return out;
}

/// Appends `text` to `out` as a quoted JSON string; control characters
/// escaped, other bytes passed through, but for bytes that are not UTF-8
/// (an upstream's, a client's path), which become U+FFFD: JSON text is
/// UTF-8 (RFC 8259, section 8.1), and a reader refuses the whole document.
inline void append_json_string(std::string& out, std::string_view text) {
  if (!simdjson::validate_utf8(text)) {
    const std::string valid = valid_utf8(text);
    append_json_string(out, valid);
    return;
  }
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

/// Appends a number as JSON; NaN and infinity, which JSON lacks, become null.
inline void append_json_number(std::string& out, double value) {
  if (std::isfinite(value)) {
    fmt::format_to(std::back_inserter(out), FMT_COMPILE("{}"), value);
  } else {
    out += "null";
  }
}

/// A number as JSON (see `append_json_number`).
inline std::string json_number(double value) {
  std::string out;
  append_json_number(out, value);
  return out;
}

/// Appends `value` (a simdjson DOM element, array or object) to `out` as
/// minified JSON text. simdjson::minify builds each result in a new vector
/// grown a character at a time, about 30 allocations in a routed request;
/// this reuses one builder per thread. The builder is simdjson's own,
/// the one minify uses (its `internal` namespace, stable in Debian 12's
/// 3.0.1). One that grew past kKeptMinifyBytes is let go afterwards: a
/// large request must not pin its size in every thread.
template <class Value>
void append_minified(std::string& out, Value value) {
  constexpr std::size_t kKeptMinifyBytes = 64 * 1024;
  thread_local simdjson::internal::string_builder<> builder;
  builder.clear();
  builder.append(value);
  const std::string_view text = builder.str();
  out.append(text.data(), text.size());
  if (text.size() > kKeptMinifyBytes) builder = {};
}

}  // namespace detail
TOROUTER_END_NAMESPACE
