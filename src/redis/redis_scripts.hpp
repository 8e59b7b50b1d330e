// Internal: the Lua scripts the Redis store runs, each one atomic on the
// server (Redis runs a script alone), loaded once per connection and
// called by their SHA1 (EVALSHA).
//
// Keys (one hash tag, the fleet's prefix P, so a Redis Cluster keeps a
// fleet's keys on one node; see docs/SCALING.md):
//   {P}:budget:<window>:<expert|*>:<tag|*>:<window id>  hash spent, reserved
//   {P}:inflight:<expert>        calls admitted and not settled
//   {P}:rate:<expert>:<minute>   hash requests, tokens (expires after 2 minutes)
//   {P}:held                     sorted set: admitted calls by expiry time
//   {P}:call:<ticket>            hash: what an admitted call holds (no expiry:
//                                it goes at settlement or reclaim, so nothing
//                                it holds can be lost)
//   {P}:spent                    USD spent by every call
//   {P}:cooldown:<expert>        cooldown end, Unix ms (expires with it)
//   {P}:given-back:<ticket>      a ticket settled before its admission arrived
//                                (expires after the calls' expiry)
#pragma once

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace redis_detail {

/// Admits a call or says why not; nothing for a ticket given back already
/// (an admission that reached Redis after its settlement: a lost reply).
/// KEYS: held, call, inflight, rate, given back, budget keys...
/// ARGV: ticket, expiry_ms, usd, tokens, cap, rpm, tpm, ignore_budgets (0/1),
///       rate_ttl_ms, then per budget key: limit, expire_at_ms (0: none)
/// Returns {"admitted"}, {"given_back"},
/// {"over_budget", budget number (1-based), spent, reserved},
/// {"at_capacity", in flight}, {"rate_limited", "requests"|"tokens", used}.
extern const char* const kAdmitScript;

/// Settles a call once: the held reservation becomes the charge. A ticket
/// that holds nothing is marked given back (for `ttl_ms`), so its admission,
/// if it reaches Redis later, takes nothing.
/// KEYS: held, call, spent, given back.
/// ARGV: ticket, spent_usd, used_tokens, extra_requests, ttl_ms.
/// Returns 1, or 0 when the ticket was settled, reclaimed or never admitted.
extern const char* const kSettleScript;

/// Gives back what calls past their expiry hold (a crashed replica's).
/// KEYS: held. ARGV: now_ms, most calls to reclaim. Returns how many.
extern const char* const kReclaimScript;

/// Sets a cooldown unless a later one is set. KEYS: cooldown. ARGV: until_ms, now_ms.
extern const char* const kCooldownScript;

}  // namespace redis_detail
TOROUTER_END_NAMESPACE
