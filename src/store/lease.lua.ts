/**
 * The small scripts beside decide.lua (a .ts module for the reason given in decide.lua.ts).
 * Releasing a lease needs no script: it is a plain ZREM.
 */
import { CLOCK_LUA } from './decide.lua.js';

/**
 * Renew one lease, as MemoryStore.renew: only a lease still held (its id in the zset) gets the
 * new expiry, and the key lives at least until then. KEYS[1] concurrency zset; ARGV now ('' =
 * Redis TIME), TTL ms, lease id. Returns 1 when renewed.
 */
export const RENEW_LUA = String.raw`
${CLOCK_LUA}
local ttl = tonumber(ARGV[2])
-- As MemoryStore.renew: an expired lease stays expired (its slot may be someone else's by now).
local held = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not held or tonumber(held) <= now then return 0 end
redis.call('ZADD', KEYS[1], 'XX', string.format('%.17g', now + ttl), ARGV[3])
local ms = math.max(1, math.ceil(ttl))
if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], ms) end
return 1
`;

/**
 * Heartbeat of one gateway instance: registers it at Redis TIME in the instances zset, drops
 * instances not seen for ARGV[2] ms and returns how many are left. Always Redis time (not an
 * injected clock): liveness is about real time. KEYS[1] instances zset; ARGV id, window ms.
 */
export const HEARTBEAT_LUA = String.raw`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now - window))
redis.call('PEXPIRE', KEYS[1], window)
return redis.call('ZCARD', KEYS[1])
`;
