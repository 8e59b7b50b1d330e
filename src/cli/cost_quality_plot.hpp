// Internal to the torouter program: the cost-quality plane of an evaluation
// as an SVG picture.
#pragma once

#include <string>

#include "torouter/abi.hpp"
#include "torouter/eval.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace cli {

/// An SVG of `report`: on the left (720 x 480) each expert as a labelled
/// point, random and the oracle, and the router's curve and its upper hull,
/// cost on a log axis; when the router has an ECE, on the right (up to 1140
/// wide) its reliability diagram at lambda = 0: each non-empty bin's mean
/// predicted against mean true quality with its count, and the diagonal.
/// `title` heads the picture.
std::string cost_quality_svg(const EvalReport& report, const std::string& title);

}  // namespace cli
TOROUTER_END_NAMESPACE
