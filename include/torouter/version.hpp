// torouter/version.hpp: the library's version, kept in step with CMake's
// project(VERSION) by a test.
#pragma once

#include "torouter/abi.hpp"

#define TOROUTER_VERSION_MAJOR 0
#define TOROUTER_VERSION_MINOR 1
#define TOROUTER_VERSION_PATCH 0

TOROUTER_BEGIN_NAMESPACE
/// "major.minor.patch"
inline constexpr const char* kVersion = "0.1.0";
TOROUTER_END_NAMESPACE
