// Internal: ASCII character classes for the text parsers and the answer
// metrics (byte-wise, whatever the locale).
#pragma once

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

inline bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

inline char ascii_lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

// Python's string.punctuation: the printable ASCII that is neither a letter,
// a digit nor a space.
inline bool is_ascii_punctuation(char c) {
  return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') ||
         (c >= '{' && c <= '~');
}

}  // namespace detail
TOROUTER_END_NAMESPACE
