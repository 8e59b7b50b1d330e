// Internal to the torouter program: the cost-quality plane of an evaluation
// as an SVG picture.
#pragma once

#include <string>

#include "torouter/eval.hpp"

namespace torouter::cli {

/// An SVG (720 x 480) of `report`: each expert as a labelled point, random
/// and the oracle, and the router's curve and its upper hull, cost on a log
/// axis. `title` heads the picture.
std::string cost_quality_svg(const EvalReport& report, const std::string& title);

}  // namespace torouter::cli
