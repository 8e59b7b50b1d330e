// A model file's bytes made consistent again after a test changed them on
// purpose, so the loader's checks behind the file's checksum (a tensor's
// values, the recorded predictions) get to see the change.
#pragma once

#include <fmt/format.h>

#include <catch2/catch.hpp>
#include <string>

#include "fnv.hpp"  // src/: the checksum src/model_io.cpp writes

namespace torouter::testing {

/// `bytes` with the header's checksum member recomputed, as a writer that
/// wrote them would have (see src/model_io.cpp, kChecksumMember).
inline std::string resealed(std::string bytes) {
  const std::string member = "\"checksum\": \"";
  const std::size_t found = bytes.find(member);
  REQUIRE(found != std::string::npos);
  const std::size_t at = found + member.size();
  bytes.replace(at, 16, std::string(16, '0'));
  bytes.replace(at, 16, fmt::format("{:016x}", torouter::detail::fnv1a_64(bytes)));
  return bytes;
}

}  // namespace torouter::testing
