/**
 * decide.lua: one limit decision in one EVALSHA, the port of MemoryStore.decideNow (memory.ts),
 * with the arithmetic of limits/bucket.ts and limits/fair.ts. Kept in a .ts module rather than a
 * .lua file because every build path (npm scripts, the Dockerfile, the test setup) runs a bare
 * `tsc -b`, which does not copy assets: a .lua file would be missing from dist/ at run time.
 * String.raw keeps the Lua text byte for byte (no escape processing); it must contain no backtick.
 * The constants are interpolated from their modules, so they cannot drift; the contract test's
 * differential run against the memory store catches any other difference.
 */
import { EPSILON } from '../limits/bucket.js';
import { ASSURED_BURST, BEHIND, BISECTION_STEPS, FAIR_STATE_WINDOWS, MIN_ASSURED_SHARE } from '../limits/fair.js';
import { QUOTA_GRACE_MS } from './memory.js';
import { CONCURRENCY_WAIT_HINT_MS } from './store.js';

/** Sets `now`: the test clock when ARGV[1] carries one, else Redis TIME (ms with fraction). */
export const CLOCK_LUA = String.raw`
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end`;

export const DECIDE_LUA = String.raw`
--[[
KEYS  every rule's state keys in rule order: one shared key, or one per credential candidate.
ARGV  1 now in ms ('' = Redis TIME; tests pass their driven clock)
      2 candidates   3 lease id   4 lease TTL ms   5 excluded candidates (0-based, comma-separated)
      6 mode: 'd' decide, 'p' peek (read every rule, consume nothing), 'l' lower (pull rate and
        quota rules down to their remaining counts in ARGV 7); peek and lower take one key per rule
      7 lower: the remaining count of each rule, comma-separated (else '')
      then 10 fields per rule: kind ('r' rate, 'f' fair-share rate, 'q' quota, 'c' concurrency),
      key count, limit, periodMs, burst, shadow ('1' or '0'), and for 'f' only (else ''):
      tenant, weight, reservePerMs, activeWindowMs.
Reply admitted ('1'/'0'), candidate (0-based), then per rule: ok ('1'/'0'), waitMs, remaining,
      resetMs. All strings: Redis truncates Lua numbers to integers. Peek: per rule only, with
      remaining counted from now (not after one more). Lower: nothing.
State (each key has a PEXPIRE, the lifetime the memory store gives the same entry):
  rate          hash {l = level, u = when measured}           drain time + 1 ms
  fair rate     hash {l, u} global bucket, and per tenant T:  max(current PTTL, drain times,
                l:T u:T assured bucket, s:T last seen,           5 active windows)
                p:T waiting since (0: not), w:T weight, r:T reserve,
                a:T admissions (decayed count), b:T when a:T was measured
  quota         string counter at KEY:period                  until period end + 60 s
  concurrency   zset lease id -> expiry ms                    max(current PTTL, lease expiry)
Redis Cluster: KEY:period is not declared in KEYS. That is allowed because it holds KEY's hash
tag (rule keys carry one, e.g. {sluice:twilio}), so it lives in the same slot as a declared key.
]]

local EPSILON = ${EPSILON}
local CONCURRENCY_WAIT_HINT_MS = ${CONCURRENCY_WAIT_HINT_MS}
local BISECTION_STEPS = ${BISECTION_STEPS}
local FAIR_STATE_WINDOWS = ${FAIR_STATE_WINDOWS}
local ASSURED_BURST = ${ASSURED_BURST}
local BEHIND = ${BEHIND}
local MIN_ASSURED_SHARE = ${MIN_ASSURED_SHARE}
local QUOTA_GRACE_MS = ${QUOTA_GRACE_MS}

-- %.17g round-trips a double; tostring would keep only 14 digits.
local function num(x) return string.format('%.17g', x) end

${CLOCK_LUA}
local candidates = tonumber(ARGV[2])
local lease = ARGV[3]
local leaseTtl = tonumber(ARGV[4])
local excluded = {}
for c in string.gmatch(ARGV[5], '%d+') do excluded[tonumber(c) + 1] = true end
local mode = ARGV[6]

-- Lifetimes are whole ms in Redis: round up so a key never dies before its memory twin.
local function expireIn(key, ms)
  redis.call('PEXPIRE', key, math.max(1, math.ceil(ms)))
end
local function extendTo(key, ms)
  ms = math.max(1, math.ceil(ms))
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

-- limits/bucket.ts checkBucket: level is nil for a bucket never used.
local function checkBucket(level, at, rate, capacity)
  local l = 0
  if level then l = math.max(0, level - math.max(0, now - at) * rate) end
  local ok = l + 1 <= capacity + EPSILON
  local after = l
  if ok then after = l + 1 end
  local wait = 0
  if not ok then wait = (l + 1 - capacity) / rate end
  return { ok = ok, wait = wait, level = l,
    remaining = math.max(0, math.floor(capacity - after + EPSILON)), reset = after / rate }
end

-- limits/fair.ts assuredRate: water-filling of max(reserve, weight * level) by bisection.
local function fairLevel(capacity, all)
  local minWeight = math.huge
  for _, t in ipairs(all) do minWeight = math.min(minWeight, t.weight) end
  if #all == 1 then return capacity / minWeight end
  local function allocated(level)
    local sum = 0
    for _, t in ipairs(all) do sum = sum + math.max(t.reserve, t.weight * level) end
    return sum
  end
  local lo, hi = 0, capacity / minWeight
  for _ = 1, BISECTION_STEPS do
    local mid = (lo + hi) / 2
    if allocated(mid) > capacity then hi = mid else lo = mid end
  end
  return lo
end

local function assuredAt(t, level, capacity)
  return math.max(t.reserve, t.weight * level, capacity * MIN_ASSURED_SHARE)
end

-- limits/fair.ts decayedCount
local function decayed(count, at, window)
  return count * math.exp(-math.max(0, now - at) / window)
end

-- memory.ts outcome()
local function outcome(e, ok, wait, remaining, reset)
  e.ok = ok
  e.wait = 0
  if not ok then e.wait = wait end
  e.remaining = math.max(0, remaining)
  e.reset = reset
  return e
end

local function rate(rule, key)
  local ratePerMs = rule.limit / rule.period
  local s = redis.call('HMGET', key, 'l', 'u')
  local check = checkBucket(tonumber(s[1]), tonumber(s[2]), ratePerMs, rule.burst)
  local e = { load = check.level / rule.burst }
  local function set(level)
    redis.call('HSET', key, 'l', num(level), 'u', num(now))
    expireIn(key, level / ratePerMs + 1)
  end
  e.commit = function() set(check.level + 1) end
  e.lower = function(remaining)
    local level = rule.burst - remaining
    if level > check.level then set(level) end
  end
  return outcome(e, check.ok, check.wait, check.remaining, check.reset)
end

-- The fair hash as a table: s.l, s.u global bucket; s.tenants[T] = {l, u, s, p, w, r}.
local function loadFair(key)
  local flat = redis.call('HGETALL', key)
  local s = { tenants = {} }
  for i = 1, #flat, 2 do
    local field, value = flat[i], tonumber(flat[i + 1])
    if field == 'l' or field == 'u' then
      s[field] = value
    else
      local name = string.sub(field, 3)
      local t = s.tenants[name]
      if not t then t = {}; s.tenants[name] = t end
      t[string.sub(field, 1, 1)] = value
    end
  end
  return s
end

local TENANT_FIELDS = { 'l:', 'u:', 's:', 'p:', 'w:', 'r:', 'a:', 'b:' }

-- memory.ts fairRate: a tenant within its assured rate needs room in the global bucket only;
-- beyond it, it borrows, which it may not while another active tenant waits.
local function fairRate(rule, key)
  local capacity = rule.limit / rule.period
  local window, me = rule.window, rule.tenant
  local s = loadFair(key)
  local mine = s.tenants[me]

  local all, others = { { weight = rule.weight, reserve = rule.reserve } }, {}
  for name, t in pairs(s.tenants) do
    if name ~= me and now - t.s <= window then
      local o = { weight = t.w, reserve = t.r, p = t.p, a = t.a or 0, b = t.b or now }
      others[#others + 1] = o
      all[#all + 1] = o
    end
  end
  local level = fairLevel(capacity, all)
  local assured = assuredAt(all[1], level, capacity)
  local othersWaiting, othersBehind = false, false
  for _, o in ipairs(others) do
    if o.p > 0 and now - o.p <= window then
      othersWaiting = true
      if decayed(o.a, o.b, window) / window < BEHIND * assuredAt(o, level, capacity) then othersBehind = true end
    end
  end
  local global = checkBucket(s.l, s.u, capacity, rule.burst)
  -- While a tenant behind its share waits, nobody makes up missed slots: they are that tenant's.
  local minBurst = ASSURED_BURST
  if othersBehind then minBurst = 1 end
  local own = checkBucket(mine and mine.l, mine and mine.u, assured,
    math.max(minBurst, (rule.burst * assured) / capacity))
  local borrowing = not own.ok
  local ok = global.ok and not (borrowing and othersWaiting)
  local wait = global.wait
  if borrowing and othersWaiting then wait = math.max(own.wait, global.wait) end

  local function tenant()
    local t = s.tenants[me]
    if not t then
      t = { s = now, p = 0, w = rule.weight, r = rule.reserve }
      s.tenants[me] = t
      redis.call('HSET', key, 's:' .. me, num(now), 'p:' .. me, '0', 'w:' .. me, num(rule.weight), 'r:' .. me, num(rule.reserve))
    end
    return t
  end
  local function keep()
    -- memory.ts forgetIdleTenants: silent for several windows, no longer active, bucket drained.
    for name, t in pairs(s.tenants) do
      if now - t.s > FAIR_STATE_WINDOWS * window then
        local fields = {}
        for i, f in ipairs(TENANT_FIELDS) do fields[i] = f .. name end
        redis.call('HDEL', key, unpack(fields))
        s.tenants[name] = nil -- clearing a field during pairs() is allowed in Lua
      end
    end
    extendTo(key, math.max((global.level + 1) / capacity, (own.level + 1) / assured, FAIR_STATE_WINDOWS * window))
  end

  local e = { load = global.level / rule.burst }
  e.observe = function()
    local t = tenant()
    t.s, t.w, t.r = now, rule.weight, rule.reserve
    redis.call('HSET', key, 's:' .. me, num(now), 'w:' .. me, num(rule.weight), 'r:' .. me, num(rule.reserve))
    if not ok and not borrowing and t.p == 0 then
      t.p = now
      redis.call('HSET', key, 'p:' .. me, num(now))
    end
    keep()
  end
  e.lower = function(remaining)
    local level = rule.burst - remaining
    if level <= global.level then return end
    redis.call('HSET', key, 'l', num(level), 'u', num(now))
    extendTo(key, level / capacity + 1)
  end
  e.commit = function()
    local t = tenant()
    redis.call('HSET', key, 'l', num(global.level + 1), 'u', num(now))
    if not borrowing then
      t.l, t.u = own.level + 1, now
      redis.call('HSET', key, 'l:' .. me, num(t.l), 'u:' .. me, num(now))
    end
    t.p = 0
    t.a, t.b = decayed(t.a or 0, t.b or now, window) + 1, now
    redis.call('HSET', key, 'p:' .. me, '0', 'a:' .. me, num(t.a), 'b:' .. me, num(now))
    keep()
  end
  local remaining = 0
  if ok then remaining = global.remaining end
  return outcome(e, ok, wait, remaining, global.reset)
end

local function quota(rule, key)
  local period = math.floor(now / rule.period)
  local periodKey = key .. ':' .. string.format('%.0f', period)
  local periodEnd = (period + 1) * rule.period
  local used = tonumber(redis.call('GET', periodKey) or '0')
  local ok = used + 1 <= rule.limit
  local e = { load = used / rule.limit }
  local function set(count)
    redis.call('SET', periodKey, num(count), 'PX', math.max(1, math.ceil(periodEnd + QUOTA_GRACE_MS - now)))
  end
  e.commit = function() set(used + 1) end
  e.lower = function(remaining)
    if rule.limit - remaining > used then set(rule.limit - remaining) end
  end
  local taken = 0
  if ok then taken = 1 end
  return outcome(e, ok, periodEnd - now, rule.limit - used - taken, periodEnd - now)
end

local function concurrency(rule, key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now))
  local held = redis.call('ZCARD', key)
  local ok = held + 1 <= rule.limit
  local e = { load = held / rule.limit }
  e.commit = function()
    redis.call('ZADD', key, num(now + leaseTtl), lease)
    extendTo(key, leaseTtl)
  end
  local taken = 0
  if ok then taken = 1 end
  return outcome(e, ok, 0, rule.limit - held - taken, 0)
end

local evaluate = { r = rate, f = fairRate, q = quota, c = concurrency }

-- Parse the rules and evaluate every (rule, key) once, before anything is consumed.
local rules, evaluations, k = {}, {}, 0
for i = 8, #ARGV, 10 do
  local rule = { kind = ARGV[i], nkeys = tonumber(ARGV[i + 1]), limit = tonumber(ARGV[i + 2]),
    period = tonumber(ARGV[i + 3]), burst = tonumber(ARGV[i + 4]), shadow = ARGV[i + 5] == '1',
    tenant = ARGV[i + 6], weight = tonumber(ARGV[i + 7]), reserve = tonumber(ARGV[i + 8]),
    window = tonumber(ARGV[i + 9]) }
  local list = {}
  for j = 1, rule.nkeys do list[j] = evaluate[rule.kind](rule, KEYS[k + j]) end
  k = k + rule.nkeys
  rules[#rules + 1] = rule
  evaluations[#evaluations + 1] = list
end

if mode == 'p' then
  local reply = {}
  for i, list in ipairs(evaluations) do
    -- memory.ts available(): counted from now, not after one more request.
    local e, rule = list[1], rules[i]
    local remaining, reset = 0, e.reset
    if e.ok then
      remaining = e.remaining + 1
      if rule.kind == 'r' or rule.kind == 'f' then reset = math.max(0, reset - rule.period / rule.limit) end
    end
    reply[#reply + 1] = e.ok and '1' or '0'
    reply[#reply + 1] = num(e.wait)
    reply[#reply + 1] = num(remaining)
    reply[#reply + 1] = num(reset)
  end
  return reply
end
if mode == 'l' then
  local i = 0
  for remaining in string.gmatch(ARGV[7], '[^,]+') do
    i = i + 1
    local e = evaluations[i][1]
    if e.lower then e.lower(tonumber(remaining)) end
  end
  return {}
end

-- A rule shared by every candidate is evaluated once: it must not be consumed twice.
local function per(i, c)
  if rules[i].nkeys > 1 then return evaluations[i][c] end
  return evaluations[i][1]
end

-- memory.ts score(): shadow rules never refuse.
local function score(c)
  local ok, load, wait = true, 0, 0
  for i, rule in ipairs(rules) do
    if not rule.shadow then
      local e = per(i, c)
      if rule.nkeys > 1 then load = math.max(load, e.load) end
      if not e.ok then
        ok = false
        if rule.kind == 'c' then wait = math.max(wait, CONCURRENCY_WAIT_HINT_MS) else wait = math.max(wait, e.wait) end
      end
    end
  end
  return { ok = ok, load = load, wait = wait }
end

-- store.ts chooseCandidate(): of those not excluded, the least loaded of those that admit (ties:
-- lowest), else the soonest.
local scores, best = {}, 0
for c = 1, candidates do scores[c] = score(c) end
for c = 1, candidates do
  if not excluded[c] then
    if best == 0 then
      best = c
    else
      local a, b = scores[best], scores[c]
      local better
      if b.ok ~= a.ok then better = b.ok elseif b.ok then better = b.load < a.load else better = b.wait < a.wait end
      if better then best = c end
    end
  end
end
if best == 0 then best = 1 end

local admitted = scores[best].ok
local reply = { admitted and '1' or '0', tostring(best - 1) }
-- Fair rules record that the tenant asked (and whether it now waits), admitted or not.
for i = 1, #rules do
  local e = per(i, best)
  if e.observe then e.observe() end
end
for i = 1, #rules do
  local e = per(i, best)
  if admitted and e.ok then e.commit() end
  reply[#reply + 1] = e.ok and '1' or '0'
  reply[#reply + 1] = num(e.wait)
  reply[#reply + 1] = num(e.remaining)
  reply[#reply + 1] = num(e.reset)
end
return reply
`;
