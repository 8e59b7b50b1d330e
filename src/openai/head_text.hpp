// head_text.hpp: an HTTP message's head (start line and fields) as one
// string, written by Beast's own fields writer (the FieldsWriter that its
// serializer uses). The listener's answers and the upstream client's
// requests go out as this string and their body, two buffers. Written
// through the serializer instead, a head is a buffer sequence in layers (a
// prefix of a suffix of a concatenation of a buffer for each field) that
// every step of a write walks again: about 13,000 of a routed request's
// instructions for its answer and its upstream request together, where
// these copies cost a few hundred (docs/BENCHMARKS.md). Internal.
#pragma once

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>
#include <cstddef>
#include <memory_resource>
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

/// Fields whose elements come from a memory resource, so that a head
/// built where it is written (HeadArena) costs no allocation for each of
/// its dozen fields.
using ArenaFields = boost::beast::http::basic_fields<std::pmr::polymorphic_allocator<char>>;

/// Memory for one head's fields, where the head is built: 2 KiB, then the
/// heap. Nothing is given back before the arena goes.
class HeadArena {
 public:
  HeadArena() = default;
  HeadArena(const HeadArena&) = delete;
  HeadArena& operator=(const HeadArena&) = delete;
  std::pmr::polymorphic_allocator<char> allocator() { return &resource_; }

 private:
  alignas(std::max_align_t) std::byte bytes_[2048];
  std::pmr::monotonic_buffer_resource resource_{bytes_, sizeof bytes_};
};

/// An answer's head as Beast writes it.
template <class Fields>
std::string head_text(const boost::beast::http::header<false, Fields>& head) {
  typename Fields::writer writer(head, head.version(), head.result_int());
  return detail::joined_text(writer.get());
}

/// A request's head as Beast writes it.
template <class Fields>
std::string head_text(const boost::beast::http::header<true, Fields>& head) {
  typename Fields::writer writer(head, head.version(), head.method());
  return detail::joined_text(writer.get());
}

}  // namespace openai
TOROUTER_END_NAMESPACE
