// Internal: which window of a budget a moment falls in, and when it ends,
// for the in-process store and the Redis store alike.
#pragma once

#include <cstdint>

#include "torouter/abi.hpp"
#include "torouter/state_store.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

/// The window of `window` holding `unix_ms` (milliseconds since 1970 UTC):
/// 0 for a lifetime; else the count of whole windows since 1970 (a month:
/// year * 12 + month - 1).
std::int64_t window_id(BudgetWindow window, std::int64_t unix_ms);

/// The first millisecond after window `id` of `window` (a lifetime: never,
/// INT64_MAX).
std::int64_t window_end_ms(BudgetWindow window, std::int64_t id);

}  // namespace detail
TOROUTER_END_NAMESPACE
