// json_parsers.hpp: a simdjson parser to reuse on this thread; internal to
// src/ and the server.
//
// A parser allocates its buffers (several times the document's size) on its
// first parse; a parser made per request paid that on every request
// (torouter-server's chat bodies, the upstream's answers). One per thread,
// reused, pays it once. Documents above kReusedParserBytes get a parser of
// their own, so no thread keeps a large document's buffers for good.
#pragma once

#include <simdjson.h>

#include <cstddef>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

inline constexpr std::size_t kReusedParserBytes = 64 * 1024;

/// This thread's parser for a document of `bytes`, or `own` when the
/// document is larger. The caller must be done with a document before it
/// parses another on the same thread (no nested use).
inline simdjson::dom::parser& reusable_parser(std::size_t bytes, simdjson::dom::parser& own) {
  thread_local simdjson::dom::parser parser;
  return bytes <= kReusedParserBytes ? parser : own;
}

}  // namespace detail
TOROUTER_END_NAMESPACE
