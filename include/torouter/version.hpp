// torouter/version.hpp: the library's version, kept in step with CMake's
// project(VERSION) by a test.
#pragma once

#define TOROUTER_VERSION_MAJOR 0
#define TOROUTER_VERSION_MINOR 1
#define TOROUTER_VERSION_PATCH 0

namespace torouter {
/// "major.minor.patch"
inline constexpr const char* kVersion = "0.1.0";
}  // namespace torouter
