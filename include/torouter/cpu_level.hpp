// torouter/cpu_level.hpp: which CPU level torouter's kernels run at.
//
// The library compiles its hot kernels (the transformer-lite, its matrix
// products, the kNN's dense similarity, the MLP's embedding bag) for the
// x86-64 baseline, x86-64-v3 (AVX2, FMA) and x86-64-v4 (AVX-512) and runs
// the best the CPU offers; the environment variable
// TOROUTER_CPU_LEVEL=x86-64|x86-64-v3|x86-64-v4 caps it.
//
//   std::cout << "kernels: " << torouter::kernel_level() << "\n";  // "x86-64-v4"
#pragma once

#include <string_view>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

/// "x86-64", "x86-64-v3" or "x86-64-v4": the highest level this CPU runs
/// among those this build compiled, at most TOROUTER_CPU_LEVEL's. Chosen
/// once per process; throws `torouter::Error` when TOROUTER_CPU_LEVEL names
/// no level.
std::string_view kernel_level();

TOROUTER_END_NAMESPACE
