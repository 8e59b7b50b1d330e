// The kind of a parsed JSON value in words, for errors that say what a
// field held ("expected a number, got a string"); internal to src/ and the
// server.
#pragma once

#include <simdjson.h>

#include <string_view>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

/// "an array", "an object", "a number", "a string", "a boolean" or "null".
inline std::string_view json_type_name(simdjson::dom::element value) {
  switch (value.type()) {
    case simdjson::dom::element_type::ARRAY: return "an array";
    case simdjson::dom::element_type::OBJECT: return "an object";
    case simdjson::dom::element_type::INT64:
    case simdjson::dom::element_type::UINT64:
    case simdjson::dom::element_type::DOUBLE: return "a number";
    case simdjson::dom::element_type::STRING: return "a string";
    case simdjson::dom::element_type::BOOL: return "a boolean";
    case simdjson::dom::element_type::NULL_VALUE: return "null";
  }
  return "an unknown value";
}

}  // namespace detail
TOROUTER_END_NAMESPACE
