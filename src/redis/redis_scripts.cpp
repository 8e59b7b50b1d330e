// The Lua scripts of the Redis store (see redis_scripts.hpp). Amounts are
// kept with HINCRBYFLOAT; keys a call holds are recorded in its call hash,
// so settling or reclaiming it touches exactly what admitting it took.
#include "redis_scripts.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace redis_detail {

namespace {

// Returns what the call of ticket `ticket` (hash `call`) holds, once: the
// held entry is removed first, so a second settlement finds nothing.
// Budget keys that expired meanwhile are not recreated.
#define TOROUTER_RELEASE_FUNCTION                                                 \
  "local function release(held, call, ticket, spent, used, extra)\n"              \
  "  if redis.call('ZREM', held, ticket) == 0 then return 0 end\n"                \
  "  local h = redis.call('HGETALL', call)\n"                                     \
  "  redis.call('DEL', call)\n"                                                   \
  "  local f = {}\n"                                                              \
  "  for i = 1, #h, 2 do f[h[i]] = h[i + 1] end\n"                                \
  "  if f.usd == nil then return 0 end\n"                                         \
  "  local usd = tonumber(f.usd)\n"                                               \
  "  for key in string.gmatch(f.budgets or '', '[^\\n]+') do\n"                   \
  "    if redis.call('EXISTS', key) == 1 then\n"                                  \
  "      redis.call('HINCRBYFLOAT', key, 'reserved', -usd)\n"                     \
  "      if spent > 0 then redis.call('HINCRBYFLOAT', key, 'spent', spent) end\n" \
  "    end\n"                                                                     \
  "  end\n"                                                                       \
  "  if tonumber(redis.call('GET', f.inflight) or '0') > 0 then\n"                \
  "    redis.call('DECR', f.inflight)\n"                                          \
  "  end\n"                                                                       \
  "  if redis.call('EXISTS', f.rate) == 1 then\n"                                 \
  "    redis.call('HINCRBYFLOAT', f.rate, 'tokens', used - tonumber(f.tokens))\n" \
  "    if extra > 0 then redis.call('HINCRBY', f.rate, 'requests', extra) end\n"  \
  "  end\n"                                                                       \
  "  return 1\n"                                                                  \
  "end\n"

}  // namespace

const char* const kAdmitScript =
    "local usd = tonumber(ARGV[3])\n"
    "local tokens = tonumber(ARGV[4])\n"
    "if redis.call('EXISTS', KEYS[5]) == 1 then return {'given_back'} end\n"
    "local budgets = #KEYS - 5\n"
    "if ARGV[8] ~= '1' then\n"
    "  for i = 1, budgets do\n"
    "    local key = KEYS[5 + i]\n"
    "    local spent = tonumber(redis.call('HGET', key, 'spent') or '0')\n"
    "    local reserved = tonumber(redis.call('HGET', key, 'reserved') or '0')\n"
    "    if spent + reserved + usd > tonumber(ARGV[8 + 2 * i]) then\n"
    "      return {'over_budget', tostring(i), tostring(spent), tostring(reserved)}\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local cap = tonumber(ARGV[5])\n"
    "local inflight = tonumber(redis.call('GET', KEYS[3]) or '0')\n"
    "if cap > 0 and inflight >= cap then return {'at_capacity', tostring(inflight)} end\n"
    "local requests = tonumber(redis.call('HGET', KEYS[4], 'requests') or '0')\n"
    "local used = tonumber(redis.call('HGET', KEYS[4], 'tokens') or '0')\n"
    "local rpm = tonumber(ARGV[6])\n"
    "local tpm = tonumber(ARGV[7])\n"
    "if rpm > 0 and requests + 1 > rpm then\n"
    "  return {'rate_limited', 'requests', tostring(requests)}\n"
    "end\n"
    "if tpm > 0 and used > 0 and used + tokens > tpm then\n"
    "  return {'rate_limited', 'tokens', tostring(used)}\n"
    "end\n"
    "local held = {}\n"
    "for i = 1, budgets do\n"
    "  local key = KEYS[5 + i]\n"
    "  redis.call('HINCRBYFLOAT', key, 'reserved', usd)\n"
    "  local expire_at = tonumber(ARGV[9 + 2 * i])\n"
    "  if expire_at > 0 then redis.call('PEXPIREAT', key, expire_at) end\n"
    "  held[#held + 1] = key\n"
    "end\n"
    "redis.call('INCR', KEYS[3])\n"
    "redis.call('HINCRBY', KEYS[4], 'requests', 1)\n"
    "redis.call('HINCRBYFLOAT', KEYS[4], 'tokens', tokens)\n"
    "redis.call('PEXPIRE', KEYS[4], ARGV[9])\n"
    "redis.call('HSET', KEYS[2], 'usd', ARGV[3], 'tokens', ARGV[4], 'inflight', KEYS[3],\n"
    "           'rate', KEYS[4], 'budgets', table.concat(held, '\\n'))\n"
    "redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])\n"
    "return {'admitted'}\n";

const char* const kSettleScript = TOROUTER_RELEASE_FUNCTION
    "local spent = tonumber(ARGV[2])\n"
    "local done = release(KEYS[1], KEYS[2], ARGV[1], spent, tonumber(ARGV[3]),\n"
    "                     tonumber(ARGV[4]))\n"
    "if done == 1 and spent > 0 then redis.call('INCRBYFLOAT', KEYS[3], ARGV[2]) end\n"
    "if done == 0 then redis.call('SET', KEYS[4], '1', 'PX', ARGV[5]) end\n"
    "return done\n";

const char* const kReclaimScript = TOROUTER_RELEASE_FUNCTION
    "local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0,\n"
    "                           tonumber(ARGV[2]))\n"
    "local prefix = string.sub(KEYS[1], 1, #KEYS[1] - 4)\n"
    "local n = 0\n"
    "for _, ticket in ipairs(expired) do\n"
    "  n = n + release(KEYS[1], prefix .. 'call:' .. ticket, ticket, 0, 0, 0)\n"
    "end\n"
    "return n\n";

const char* const kCooldownScript =
    "local current = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "local until_ms = tonumber(ARGV[1])\n"
    "if until_ms <= current or until_ms <= tonumber(ARGV[2]) then return 0 end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', until_ms - tonumber(ARGV[2]))\n"
    "return 1\n";

#undef TOROUTER_RELEASE_FUNCTION

}  // namespace redis_detail
TOROUTER_END_NAMESPACE
