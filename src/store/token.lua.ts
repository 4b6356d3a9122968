/**
 * token.lua: the credential state scripts, the port of MemoryTokenStore (memory-tokens.ts), one
 * EVALSHA per call so each is atomic in Redis as the memory store's calls are by construction.
 * A .ts module for the reason given in decide.lua.ts (String.raw, no backtick inside).
 *
 * KEYS[1] the credential's state hash. ARGV[1] now in ms ('' = Redis TIME; tests pass their
 * driven clock); the other ARGV are given per script below. Replies are strings where a number
 * may have a fraction: Redis truncates Lua numbers to integers.
 * State, one hash per credential (absent field: the memory store's initial value):
 *   f       fences handed out (the last grant's fence)          0
 *   t tf te the token as stored (sealed), its fence, its expiry   no token
 *   lf lu   the lock: the grant's fence, held until               no lock
 *   log     token-endpoint calls, oldest first, comma-separated   none
 *           (only the budget window's, at most max of them)
 *   bu      refreshing blocked until                              0
 *   rv      the revocation (token endpoint's error code)          not revoked
 *   c<i>    pool member i out of rotation until                   in rotation
 * Every write extends the hash's PEXPIRE to at least CREDENTIAL_STATE_TTL_MS, and to at least
 * what the write remembers (a token's lifetime, a budget window, a lock, a block, a cool-down).
 */
import { CLOCK_LUA } from './decide.lua.js';
import { CREDENTIAL_STATE_TTL_MS } from './tokens.js';

/** The clock, then helpers every script shares (after CLOCK_LUA: they close over now). */
const COMMON_LUA = String.raw`
${CLOCK_LUA}
local key = KEYS[1]
local CREDENTIAL_STATE_TTL_MS = ${CREDENTIAL_STATE_TTL_MS}
-- %.17g round-trips a double; tostring would keep only 14 digits.
local function num(x) return string.format('%.17g', x) end
-- Lifetimes are whole ms in Redis: round up, and never shorten what another write set.
local function keep(ms)
  ms = math.ceil(math.max(CREDENTIAL_STATE_TTL_MS, ms))
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
-- The log field as numbers, oldest first (HGET gives false for a missing field).
local function calls(log)
  local list = {}
  for at in string.gmatch(log or '', '[^,]+') do list[#list + 1] = tonumber(at) end
  return list
end
local function inWindow(list, perMs)
  local kept = {}
  for _, at in ipairs(list) do
    if at > now - perMs then kept[#kept + 1] = at end
  end
  return kept
end`;

/**
 * ARGV 2 budget perMs. Reply: has token ('1'/'0'), sealed, expiresInMs, fence, refreshesInWindow,
 * lastRefreshAgoMs ('' none), blockedForMs, revoked ('1'/'0'), revocation, lockedForMs.
 */
export const TOKEN_READ_LUA = String.raw`
${COMMON_LUA}
local h = redis.call('HMGET', key, 't', 'tf', 'te', 'log', 'bu', 'rv', 'lu')
local reply = { '0', '', '', '' }
if h[1] then reply = { '1', h[1], num(tonumber(h[3]) - now), h[2] } end
local list = calls(h[4])
local last = list[#list]
reply[5] = num(#inWindow(list, tonumber(ARGV[2])))
reply[6] = ''
if last then reply[6] = num(now - last) end
reply[7] = num(math.max(0, (tonumber(h[5]) or 0) - now))
reply[8] = h[6] and '1' or '0'
reply[9] = h[6] or ''
local lu = tonumber(h[7])
reply[10] = '0'
if lu and lu > now then reply[10] = num(lu - now) end
return reply
`;

/**
 * ARGV 2 replacing, 3 dueWithinMs, 4 lockTtlMs, 5 budget max, 6 perMs, 7 everyMs, 8 force ('1'/'0').
 * Reply: '1', fence; or '0', reason, retryAfterMs. The checks in MemoryTokenStore.acquire's order.
 */
export const TOKEN_ACQUIRE_LUA = String.raw`
${COMMON_LUA}
local replacing, due, lockTtl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local max, perMs, everyMs = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local force = ARGV[8] == '1'
local h = redis.call('HMGET', key, 'rv', 'tf', 'te', 'lu', 'bu', 'log')
if h[1] and not force then return { '0', 'revoked', '0' } end
local tf, te = tonumber(h[2]), tonumber(h[3])
if not force and tf and tf > replacing and te - now > due then return { '0', 'newer', '0' } end
local lu = tonumber(h[4])
if lu and lu > now then return { '0', 'locked', num(lu - now) } end
local list = calls(h[6])
if not force then
  local bu = tonumber(h[5]) or 0
  if bu > now then return { '0', 'blocked', num(bu - now) } end
  -- memory-tokens.ts budgetWaitMs: a free slot in the window, and the spacing after the last call.
  local window = inWindow(list, perMs)
  local wait = 0
  if #window >= max then wait = window[#window - max + 1] + perMs - now end
  local last = list[#list]
  if last then wait = math.max(wait, last + everyMs - now) end
  if wait > 0 then return { '0', 'budget', num(wait) } end
end
local fence = redis.call('HINCRBY', key, 'f', 1)
local kept = inWindow(list, perMs)
kept[#kept + 1] = now
local log = {}
for i = math.max(1, #kept - math.max(max, 1) + 1), #kept do log[#log + 1] = num(kept[i]) end
redis.call('HSET', key, 'lf', num(fence), 'lu', num(now + lockTtl), 'log', table.concat(log, ','))
keep(math.max(perMs, lockTtl))
return { '1', num(fence) }
`;

/** ARGV 2 fence, 3 sealed token, 4 ttlMs. Reply 1 stored, 0 refused (another grant since). */
export const TOKEN_PUBLISH_LUA = String.raw`
${COMMON_LUA}
local fence, ttl = tonumber(ARGV[2]), tonumber(ARGV[4])
if fence < 1 or fence ~= (tonumber(redis.call('HGET', key, 'f')) or 0) then return 0 end
redis.call('HSET', key, 't', ARGV[3], 'tf', num(fence), 'te', num(now + ttl))
redis.call('HDEL', key, 'lf', 'lu', 'bu', 'rv')
keep(ttl)
return 1
`;

/** ARGV 2 fence, 3 blockMs ('' none), 4 revoked ('1'/'0'), 5 revocation. Reply 0. */
export const TOKEN_FAIL_LUA = String.raw`
${COMMON_LUA}
local blockMs = tonumber(ARGV[3])
local wrote = false
local lf = tonumber(redis.call('HGET', key, 'lf'))
if lf and lf == tonumber(ARGV[2]) then
  redis.call('HDEL', key, 'lf', 'lu')
  wrote = true
end
if blockMs then
  local bu = tonumber(redis.call('HGET', key, 'bu')) or 0
  redis.call('HSET', key, 'bu', num(math.max(bu, now + blockMs)))
  wrote = true
end
-- Only the latest grant may revoke: a stalled holder's late answer must not undo a newer refresh.
if ARGV[4] == '1' and tonumber(ARGV[2]) == (tonumber(redis.call('HGET', key, 'f')) or 0) then
  redis.call('HSET', key, 'rv', ARGV[5])
  wrote = true
end
if wrote then keep(blockMs or 0) end
return 0
`;

/** ARGV 2 member, 3 ms. Reply 0. */
export const TOKEN_COOL_DOWN_LUA = String.raw`
${COMMON_LUA}
local field, ms = 'c' .. ARGV[2], tonumber(ARGV[3])
local cooling = tonumber(redis.call('HGET', key, field)) or 0
redis.call('HSET', key, field, num(math.max(cooling, now + ms)))
keep(ms)
return 0
`;

/** Reply: member, ms left, ... for the members out of rotation now (no other field starts with c). */
export const TOKEN_COOLING_LUA = String.raw`
${COMMON_LUA}
local flat = redis.call('HGETALL', key)
local reply = {}
for i = 1, #flat, 2 do
  local member = string.match(flat[i], '^c(.+)$')
  local cooling = tonumber(flat[i + 1])
  if member and cooling > now then
    reply[#reply + 1] = member
    reply[#reply + 1] = num(cooling - now)
  end
end
return reply
`;
