// FNV-1a-64, the hash torouter writes where a short fingerprint of bytes is
// wanted (a redacted prompt, a model file's checksum); internal to src/.
#pragma once

#include <cstdint>
#include <string_view>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

constexpr std::uint64_t kFnvOffsetBasis = 14695981039346656037ull;

/// FNV-1a-64 of `bytes`, or of earlier bytes followed by `bytes` when
/// `hash` is theirs. Every change of a single byte changes it: each step
/// (xor a byte, multiply by an odd prime) is one-to-one.
inline std::uint64_t fnv1a_64(std::string_view bytes, std::uint64_t hash = kFnvOffsetBasis) {
  for (const char c : bytes) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  return hash;
}

}  // namespace detail
TOROUTER_END_NAMESPACE
