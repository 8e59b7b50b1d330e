// head_text.hpp: an HTTP message's head (start line and fields) as one
// string, written by Beast's own fields writer (the FieldsWriter that its
// serializer uses). The listener's answers and the upstream client's
// requests go out as this string and their body, two buffers. Written
// through the serializer instead, a head is a buffer sequence in layers (a
// prefix of a suffix of a concatenation of a buffer for each field) that
// every step of a write walks again: about 12,000 instructions an answer,
// where this copy costs a few hundred (docs/BENCHMARKS.md). Internal.
#pragma once

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>
#include <string>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace openai {

namespace detail {

template <class Buffers>
std::string joined_text(const Buffers& buffers) {
  std::string text;
  text.reserve(512);
  const auto end = boost::asio::buffer_sequence_end(buffers);
  for (auto it = boost::asio::buffer_sequence_begin(buffers); it != end; ++it) {
    const boost::asio::const_buffer piece = *it;
    text.append(static_cast<const char*>(piece.data()), piece.size());
  }
  return text;
}

}  // namespace detail

/// An answer's head as Beast writes it.
inline std::string head_text(const boost::beast::http::response_header<>& head) {
  boost::beast::http::fields::writer writer(head, head.version(), head.result_int());
  return detail::joined_text(writer.get());
}

/// A request's head as Beast writes it.
inline std::string head_text(const boost::beast::http::request_header<>& head) {
  boost::beast::http::fields::writer writer(head, head.version(), head.method());
  return detail::joined_text(writer.get());
}

}  // namespace openai
TOROUTER_END_NAMESPACE
