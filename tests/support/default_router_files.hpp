// The committed default router and its experts file, for the server tests.
#pragma once

#include <string>

namespace torouter::testing {

inline const std::string kDefaultRouterModel =
    std::string(TOROUTER_SOURCE_DIR) + "/examples/default_router/llmrouter14.tormodel";
inline const std::string kDefaultRouterExperts =
    std::string(TOROUTER_SOURCE_DIR) + "/examples/default_router/experts.json";

}  // namespace torouter::testing
