"""Lua scripts: each does one step of a chat's life atomically, in one round
trip. Registered once per client and called by SHA (redis-py falls back to
EVAL after a Redis restart flushed the script cache)."""

# Append events to a chat (Centrifugo's history script is the model).
# KEYS: meta, log, live channel, cancel flag
# ARGV: attempt, ttl_s, maxlen, n, then n pairs (type, json), then meta field/value pairs
# Returns {last_seq, cancel_flag}; last_seq < 0 means refused:
#   -1 fenced (another attempt owns the chat), -2 no such chat, -3 already finished.
APPEND = """
local meta, log, live, cancel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local owner = redis.call('HGET', meta, 'attempt')
if not owner then return {-2, 0} end
if owner ~= ARGV[1] then return {-1, 0} end
local status = redis.call('HGET', meta, 'status')
if status == 'done' or status == 'error' then return {-3, 0} end
local ttl, maxlen, n = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local seq = 0
for i = 0, n - 1 do
  local etype, data = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  seq = redis.call('HINCRBY', meta, 'last_seq', 1)
  redis.call('XADD', log, 'MAXLEN', '~', maxlen, seq .. '-0', 't', etype, 'd', data)
  redis.call('PUBLISH', live, seq .. ' ' .. etype .. ' ' .. data)
end
local first_field = 5 + 2 * n
if #ARGV > first_field then
  redis.call('HSET', meta, unpack(ARGV, first_field))
end
redis.call('EXPIRE', meta, ttl)
if seq > 0 then redis.call('EXPIRE', log, ttl) end
return {seq, redis.call('EXISTS', cancel)}
"""

# Start an attempt at a chat: bump the attempt (fencing out any earlier one),
# mark it running (started_at: Redis clock, seconds) and take a lease on it.
# KEYS: meta, running zset   ARGV: chat_id, lease_ms
# Returns {previous status, attempt, last_seq}; attempt 0 when nothing was claimed.
CLAIM = """
local meta, running = KEYS[1], KEYS[2]
local status = redis.call('HGET', meta, 'status')
if not status then return {'missing', 0, 0} end
if status == 'done' or status == 'error' then
  return {status, 0, tonumber(redis.call('HGET', meta, 'last_seq'))}
end
local attempt = redis.call('HINCRBY', meta, 'attempt', 1)
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', meta, 'status', 'running', 'started_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
redis.call('ZADD', running, now_ms + tonumber(ARGV[2]), ARGV[1])
return {status, attempt, tonumber(redis.call('HGET', meta, 'last_seq'))}
"""

# Renew the leases of the chats a worker runs, and arq's in-progress keys of
# their jobs, which the worker sets to expire after one lease too: a worker
# killed before its claim took the lease still loses the job within a lease.
# XX: a lease the reaper already took away stays gone (that attempt is fenced
# out by the next claim).
# KEYS: running zset   ARGV: lease_ms, arq in-progress key prefix, chat ids...
RENEW = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i])
  redis.call('PEXPIRE', ARGV[2] .. ARGV[i], tonumber(ARGV[1]))
end
return #ARGV - 2
"""

# Hand on the jobs whose lease lapsed (their worker died): drop arq's
# in-progress key, so that the next worker poll starts the job again.
# KEYS: running zset   ARGV: arq in-progress key prefix, limit
REAP = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', ARGV[1] .. id)
end
return ids
"""
