"""The Lua scripts the fleet runs in Redis (each one atomic, each one round trip).

Every time is Redis's own (``TIME``, in milliseconds), so hosts with skewed clocks agree on
when an open breaker may probe and which minute a limit counts in. A breaker is three keys:

- ``<prefix>:cb:<name>``: a hash: ``s`` state, ``g`` generation, ``u`` open-until (ms; for a
  forced state with a TTL, forced-until; 0: no TTL), ``f`` failures since the fleet's last
  success, ``ps``/``pf`` half-open verdicts, ``fb``/``fr``/``fa``/``ft`` who forced the state,
  why, when (unix ms) and its TTL (ms, 0: none);
- ``<prefix>:cb:<name>:w``: the failure-rate window, a ring of time buckets;
- ``<prefix>:cb:<name>:p``: half-open probe leases, a sorted set scored by expiry.

A transition is a compare-and-set on (state, generation) and resets all three, then
publishes the breaker's name on ``<prefix>:cb``.
"""

from __future__ import annotations

__all__ = [
    "BREAKER_CAS",
    "BREAKER_OUTCOMES",
    "BREAKER_PROBE",
    "BREAKER_READ",
    "BUDGET_RESERVE",
    "BUDGET_SETTLE",
    "HEARTBEAT",
    "LIMIT_TAKE",
]

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function forced(s) return s == 'forced_open' or s == 'disabled' end
local function record(key, now)
  local v = redis.call('HMGET', key, 's', 'g', 'u')
  local s = v[1] or 'closed'
  local g = tonumber(v[2] or '0')
  local u = tonumber(v[3] or '0')
  local rem = 0
  if s == 'open' then rem = math.max(0, u - now) end
  if forced(s) then
    if u > 0 then rem = math.max(0, u - now) else rem = -1 end  -- -1: no TTL
  end
  return s, g, rem
end
-- open_ms: how long an open state lasts, or a forced state's TTL (0: none). The message
-- carries the new record as BREAKER_READ returns it, after the name (a JSON array of
-- strings): a process adopts it without reading it back.
local function move(key, window, probes, s, g, open_ms, now, channel, name, by, why, at)
  local u = now + open_ms
  if forced(s) and open_ms == 0 then u = 0 end
  local ft = forced(s) and open_ms or 0
  redis.call('HSET', key, 's', s, 'g', g, 'u', u, 'f', 0, 'ps', 0, 'pf', 0,
    'fb', by or '', 'fr', why or '', 'fa', at or 0, 'ft', ft)
  redis.call('DEL', window, probes)
  local rem = 0
  if s == 'open' then rem = open_ms end
  if forced(s) then if u > 0 then rem = open_ms else rem = -1 end end
  redis.call('PUBLISH', channel, cjson.encode({name, s, tostring(g), tostring(rem), '1',
    by or '', why or '', tostring(at or 0), tostring(ft)}))
end
"""

HEARTBEAT = (
    _COMMON
    + """
-- KEYS[1]: the members set. ARGV[1]: this process's id. Returns the processes seen alive in
-- the last 5 s (each process beats every second).
local now = now_ms()
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 5000)
redis.call('PEXPIRE', KEYS[1], 60000)
return redis.call('ZCARD', KEYS[1])
"""
)

BREAKER_READ = (
    _COMMON
    + """
-- KEYS: breaker hashes. Returns per breaker: state, generation, ms until open (or a forced
-- state) ends (-1: a forced state without TTL), whether the record exists (0: never written,
-- or lost with Redis's data), and who forced it, why, when (unix ms) and its TTL (ms).
local now = now_ms()
local out = {}
for i = 1, #KEYS do
  local s, g, rem = record(KEYS[i], now)
  table.insert(out, s); table.insert(out, g); table.insert(out, rem)
  table.insert(out, redis.call('EXISTS', KEYS[i]))
  local f = redis.call('HMGET', KEYS[i], 'fb', 'fr', 'fa', 'ft')
  for j = 1, 4 do table.insert(out, f[j] or '') end
end
return out
"""
)

BREAKER_CAS = (
    _COMMON
    + """
-- KEYS: hash, window, probes. ARGV: expected state, expected generation, new state,
-- new generation, open ms (a forced state: its TTL, 0: none), channel, name, and for a
-- forced state who, why, when (unix ms). An open breaker moves to half-open only once
-- its time is up on Redis's clock.
local now = now_ms()
local s, g, rem = record(KEYS[1], now)
if s ~= ARGV[1] or g ~= tonumber(ARGV[2])
   or (s == 'open' and ARGV[3] == 'half_open' and rem > 0) then
  return {0, s, g, rem}
end
local open_ms = tonumber(ARGV[5])
move(KEYS[1], KEYS[2], KEYS[3], ARGV[3], tonumber(ARGV[4]), open_ms, now, ARGV[6], ARGV[7],
  ARGV[8], ARGV[9], ARGV[10])
if forced(ARGV[3]) and open_ms == 0 then open_ms = -1
elseif ARGV[3] ~= 'open' and not forced(ARGV[3]) then open_ms = 0 end
return {1, ARGV[3], tonumber(ARGV[4]), open_ms}
"""
)

BREAKER_OUTCOMES = (
    _COMMON
    + """
-- Outcomes of closed-state calls from one process. KEYS: hash, window, probes.
-- ARGV: generation, calls, failures, consecutive (-1: add failures to the fleet's count;
-- else set it: the process saw a success, then this many failures), threshold (0: rate
-- policy), rate (0: consecutive policy), minimum calls, bucket seconds, buckets, open ms,
-- channel, name. Returns tripped, state, generation, ms open, consecutive, window calls,
-- window failures.
local now = now_ms()
local s, g, rem = record(KEYS[1], now)
if s ~= 'closed' or g ~= tonumber(ARGV[1]) then return {0, s, g, rem, 0, 0, 0} end
local calls, failures, consecutive = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local threshold, rate, minimum = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local f
if consecutive >= 0 then
  redis.call('HSET', KEYS[1], 'f', consecutive); f = consecutive
else
  f = redis.call('HINCRBY', KEYS[1], 'f', failures)
end
local wc, wf = 0, 0
local trip = threshold > 0 and failures > 0 and f >= threshold
if rate > 0 then
  local width, n = tonumber(ARGV[8]), tonumber(ARGV[9])
  local bucket = math.floor(now / 1000 / width)
  local slot = bucket % n
  if tonumber(redis.call('HGET', KEYS[2], 't' .. slot) or '-1') ~= bucket then
    redis.call('HSET', KEYS[2], 't' .. slot, bucket, 'c' .. slot, 0, 'f' .. slot, 0)
  end
  redis.call('HINCRBY', KEYS[2], 'c' .. slot, calls)
  redis.call('HINCRBY', KEYS[2], 'f' .. slot, failures)
  redis.call('PEXPIRE', KEYS[2], math.ceil(width * n * 1000) + 1000)
  for i = 0, n - 1 do
    local v = redis.call('HMGET', KEYS[2], 't' .. i, 'c' .. i, 'f' .. i)
    if v[1] and tonumber(v[1]) > bucket - n then
      wc = wc + tonumber(v[2]); wf = wf + tonumber(v[3])
    end
  end
  trip = failures > 0 and wc >= minimum and wf >= rate * wc
end
if trip then
  move(KEYS[1], KEYS[2], KEYS[3], 'open', g + 1, tonumber(ARGV[10]), now, ARGV[11], ARGV[12])
  return {1, 'open', g + 1, tonumber(ARGV[10]), f, wc, wf}
end
return {0, s, g, rem, f, wc, wf}
"""
)

BREAKER_PROBE = (
    _COMMON
    + """
-- Half-open probes. KEYS: hash, window, probes. ARGV: 'lease' or 'done', generation,
-- lease id, then for 'lease': max probes, lease ms; for 'done': outcome, max probes,
-- rate (0: consecutive policy), open ms, channel, name.
-- Returns granted-or-moved, state, generation, ms open, probe successes (a refused lease:
-- ms until the first lease expires), probe failures.
local now = now_ms()
local s, g, rem = record(KEYS[1], now)
if ARGV[1] == 'lease' then
  if s ~= 'half_open' or g ~= tonumber(ARGV[2]) then return {0, s, g, rem, 0, 0} end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) < tonumber(ARGV[4]) then
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[3])
    return {1, s, g, 0, 0, 0}
  end
  -- refused: say when the first lease expires (the caller refuses until then, or a change)
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return {0, s, g, 0, math.max(0, tonumber(first[2]) - now), 0}
end
redis.call('ZREM', KEYS[3], ARGV[3])
if s ~= 'half_open' or g ~= tonumber(ARGV[2]) or ARGV[4] == 'ignored' then
  return {0, s, g, rem, 0, 0}
end
local ps = tonumber(redis.call('HGET', KEYS[1], 'ps') or '0')
local pf = tonumber(redis.call('HGET', KEYS[1], 'pf') or '0')
if ARGV[4] == 'success' then
  ps = redis.call('HINCRBY', KEYS[1], 'ps', 1)
else
  pf = redis.call('HINCRBY', KEYS[1], 'pf', 1)
end
local probes, rate = tonumber(ARGV[5]), tonumber(ARGV[6])
local reopen, close
if rate == 0 then
  reopen, close = pf > 0, ps >= probes
else
  local pending = math.max(0, probes - ps - pf)
  reopen, close = pf >= rate * probes, pf + pending < rate * probes
end
if reopen then
  move(KEYS[1], KEYS[2], KEYS[3], 'open', g + 1, tonumber(ARGV[7]), now, ARGV[8], ARGV[9])
  return {1, 'open', g + 1, tonumber(ARGV[7]), ps, pf}
elseif close then
  move(KEYS[1], KEYS[2], KEYS[3], 'closed', g + 1, 0, now, ARGV[8], ARGV[9])
  return {1, 'closed', g + 1, 0, ps, pf}
end
return {0, s, g, rem, ps, pf}
"""
)

LIMIT_TAKE = (
    _COMMON
    + """
-- One limiter. KEYS[1]: its hash (fields r<window>, t<window>); KEYS[2]: its grants, a sorted
-- set of grant ids scored by the time they are returned unless claimed; KEYS[3]: a hash, grant
-- id -> 'window:requests:tokens' (or 'x': released before its take arrived).
-- ARGV for a take: window ms, requests, tokens, requests cap (0: none), tokens cap (0: none),
-- lease requests, lease tokens (a chunk to take instead, when it fits), grant id, claim ms.
-- Returns ms to wait (0: taken, -1: never, -2: released already), the window, ms into it,
-- requests and tokens taken.
-- Or: 'give', window, requests, tokens (counters never go below zero);
--     'claim', grant ids... (the taker got its answer: the grant stays taken);
--     'release', claim ms, grant ids... (the taker gave up: return the grant, or refuse it
--     when its take arrives later);
--     'reap' (return every grant whose claim time passed: its taker never answered).
local function give(w, r, t)
  for dim, n in pairs({r = r, t = t}) do
    if n ~= 0 and redis.call('HEXISTS', KEYS[1], dim .. w) == 1 then
      if redis.call('HINCRBY', KEYS[1], dim .. w, -n) < 0 then
        redis.call('HSET', KEYS[1], dim .. w, 0)
      end
    end
  end
end
local function give_grant(id)
  local v = redis.call('HGET', KEYS[3], id)
  if v and v ~= 'x' then
    local w, r, t = string.match(v, '^(-?%d+):(%d+):(%d+)$')
    give(tonumber(w), tonumber(r), tonumber(t))
  end
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[2], id)
  return v
end
if ARGV[1] == 'give' then
  give(tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
  return {0, tonumber(ARGV[2])}
end
if ARGV[1] == 'claim' then
  for i = 2, #ARGV do
    redis.call('HDEL', KEYS[3], ARGV[i]); redis.call('ZREM', KEYS[2], ARGV[i])
  end
  return {0}
end
local now = now_ms()
if ARGV[1] == 'release' then
  local ttl = tonumber(ARGV[2])
  for i = 3, #ARGV do
    if not give_grant(ARGV[i]) then  -- its take has not arrived (yet): refuse it then
      redis.call('HSET', KEYS[3], ARGV[i], 'x')
      redis.call('ZADD', KEYS[2], now + ttl, ARGV[i])
      redis.call('PEXPIRE', KEYS[3], ttl + 1000); redis.call('PEXPIRE', KEYS[2], ttl + 1000)
    end
  end
  return {0}
end
if ARGV[1] == 'reap' then
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, id in ipairs(due) do give_grant(id) end
  return {#due}
end
local W = tonumber(ARGV[1])
local idx = math.floor(now / W)
local elapsed = now - idx * W
local grant, claim_ms = ARGV[8] or '', tonumber(ARGV[9] or '0')
if grant ~= '' and redis.call('HEXISTS', KEYS[3], grant) == 1 then
  return {-2, idx, elapsed, 0, 0}
end
local function wait_for(dim, cost, cap)
  if cap <= 0 or cost <= 0 then return 0 end
  if cost > cap then return -1 end
  local prev = math.max(0, tonumber(redis.call('HGET', KEYS[1], dim .. (idx - 1)) or '0'))
  local cur = math.max(0, tonumber(redis.call('HGET', KEYS[1], dim .. idx) or '0'))
  local carried = prev * (W - elapsed) / W
  local need = carried + cur + cost - cap
  if need <= 0 then return 0 end
  if prev > 0 and need <= carried then return math.ceil(need * W / prev) end
  return math.ceil((W - elapsed) + math.max(0, W - (cap - cost) * W / cur))
end
local requests, tokens = tonumber(ARGV[2]), tonumber(ARGV[3])
local cap_r, cap_t = tonumber(ARGV[4]), tonumber(ARGV[5])
local lease_r, lease_t = tonumber(ARGV[6] or '0'), tonumber(ARGV[7] or '0')
if (lease_r > requests or lease_t > tokens)
   and wait_for('r', lease_r, cap_r) == 0 and wait_for('t', lease_t, cap_t) == 0 then
  requests, tokens = lease_r, lease_t
else
  local wr = wait_for('r', requests, cap_r)
  local wt = wait_for('t', tokens, cap_t)
  if wr < 0 or wt < 0 then return {-1, idx, elapsed, 0, 0} end
  local wait = math.max(wr, wt)
  if wait > 0 then return {wait, idx, elapsed, 0, 0} end
end
if requests > 0 then redis.call('HINCRBY', KEYS[1], 'r' .. idx, requests) end
if tokens > 0 then redis.call('HINCRBY', KEYS[1], 't' .. idx, tokens) end
redis.call('HDEL', KEYS[1], 'r' .. (idx - 2), 't' .. (idx - 2))
redis.call('PEXPIRE', KEYS[1], 2 * W + 1000)
if grant ~= '' then
  redis.call('HSET', KEYS[3], grant, idx .. ':' .. requests .. ':' .. tokens)
  redis.call('ZADD', KEYS[2], now + claim_ms, grant)
  redis.call('PEXPIRE', KEYS[3], 2 * W + 1000); redis.call('PEXPIRE', KEYS[2], 2 * W + 1000)
end
return {0, idx, elapsed, requests, tokens}
"""
)

# --- budgets -------------------------------------------------------------------------------
# A tenant's period is two keys: ``<prefix>:budget:<tenant>:<period>``, the totals (a hash:
# requests, tokens, cost_usd), and ``...:held``, what calls in flight hold, per process (fields
# ``<process id>:r``/``:t``/``:c``). A process that stopped beating (the members set) holds
# nothing: its fields are dropped by the next reservation, so a crash leaks nothing for long.

BUDGET_RESERVE = (
    _COMMON
    + """
-- KEYS: the members set, then per period: totals, held. ARGV: process id, requests, tokens,
-- cost to hold, then which kinds are checked ('1'/'0': requests, tokens, cost), then per
-- period: the three limits ('' = none) and the held key's expiry (unix s). A period whose
-- totals plus holds reach a checked limit refuses: returns {period index, kind, 1 if the
-- totals alone reach it else 0}; else all periods hold the amount: returns {0, '', 0}.
local now = now_ms()
local pid = ARGV[1]
local amount = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])}
local checked = {ARGV[5] == '1', ARGV[6] == '1', ARGV[7] == '1'}
local kinds = {'requests', 'tokens', 'cost_usd'}
local index = {r = 1, t = 2, c = 3}
local periods = (#KEYS - 1) / 2
for p = 1, periods do
  local totals, held = KEYS[2 * p], KEYS[2 * p + 1]
  local v = redis.call('HMGET', totals, 'requests', 'tokens', 'cost_usd')
  local used = {tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0')}
  local sum = {used[1], used[2], used[3]}
  local fields = redis.call('HGETALL', held)
  for i = 1, #fields, 2 do
    local owner = string.sub(fields[i], 1, -3)
    local alive = owner == pid
    if not alive then
      local seen = redis.call('ZSCORE', KEYS[1], owner)
      alive = seen and tonumber(seen) > now - 5000
    end
    if alive then
      local k = index[string.sub(fields[i], -1)]
      if k then sum[k] = sum[k] + tonumber(fields[i + 1]) end
    else
      redis.call('HDEL', held, fields[i])
    end
  end
  local base = 7 + (p - 1) * 4
  for k = 1, 3 do
    local limit = ARGV[base + k]
    if checked[k] and limit ~= '' and sum[k] >= tonumber(limit) then
      local spent = 0
      if used[k] >= tonumber(limit) then spent = 1 end
      return {p, kinds[k], spent}
    end
  end
end
for p = 1, periods do
  local held = KEYS[2 * p + 1]
  if amount[1] > 0 then redis.call('HINCRBY', held, pid .. ':r', amount[1]) end
  if amount[2] > 0 then redis.call('HINCRBY', held, pid .. ':t', amount[2]) end
  if amount[3] > 0 then redis.call('HINCRBYFLOAT', held, pid .. ':c', ARGV[4]) end
  redis.call('EXPIREAT', held, tonumber(ARGV[7 + (p - 1) * 4 + 4]))
end
return {0, '', 0}
"""
)

BUDGET_SETTLE = """
-- KEYS: the applied-batches hash, then per period: totals, held. ARGV: process id, batch
-- number, then per period: requests, tokens, cost to charge, requests, tokens, cost to
-- release (from this process's holds, never below zero), the totals' expiry (unix s).
-- A batch is applied once: a batch number at or below the process's last applied one is
-- only answered (a batch re-sent after a reply that never arrived). Returns the totals.
local pid, batch = ARGV[1], tonumber(ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[1], pid) or '0')
local fresh = batch > last
if fresh then
  redis.call('HSET', KEYS[1], pid, batch)
  redis.call('EXPIRE', KEYS[1], 172800)
end
local suffix = {'r', 't', 'c'}
local out = {}
for p = 1, (#KEYS - 1) / 2 do
  local totals, held = KEYS[2 * p], KEYS[2 * p + 1]
  local a = 2 + (p - 1) * 7
  if fresh then
    redis.call('HINCRBY', totals, 'requests', ARGV[a + 1])
    redis.call('HINCRBY', totals, 'tokens', ARGV[a + 2])
    redis.call('HINCRBYFLOAT', totals, 'cost_usd', ARGV[a + 3])
    redis.call('EXPIREAT', totals, tonumber(ARGV[a + 7]))
    for k = 1, 3 do
      local amount = tonumber(ARGV[a + 3 + k])
      if amount > 0 then
        local field = pid .. ':' .. suffix[k]
        local left = tonumber(redis.call('HGET', held, field) or '0') - amount
        if left > 1e-9 then
          if k == 3 then
            redis.call('HSET', held, field, string.format('%.17g', left))
          else
            redis.call('HSET', held, field, string.format('%d', left))
          end
        else
          redis.call('HDEL', held, field)
        end
      end
    end
  end
  local v = redis.call('HMGET', totals, 'requests', 'tokens', 'cost_usd')
  table.insert(out, v[1] or '0')
  table.insert(out, v[2] or '0')
  table.insert(out, v[3] or '0')
end
return out
"""
