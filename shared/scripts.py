"""Lua scripts: each does one step of a chat's life atomically, in one round
trip. Registered once per client and called by SHA (redis-py falls back to
EVAL after a Redis restart flushed the script cache).

Leases: the attempt that owns a running chat holds a lease (``tf:running``,
score = expiry in ms, Redis clock) and keeps arq's in-progress key of the
chat's job alive for as long. The reaper hands a chat on when its lease lapses.
Only the owning attempt (``meta.attempt``) renews them: a fenced-out worker
never keeps the new attempt's lease alive. A lease that was released or
reaped is never brought back by a renewal: the next claim fences the attempt
that held it."""

# Append events to a chat (Centrifugo's history script is the model).
# KEYS: meta, log, live channel, cancel flag, running zset, arq in-progress key
# ARGV: attempt, ttl_s, maxlen, lease_ms, chat_id, n, then n pairs (type, json), then meta field/value pairs
# Returns {last_seq, cancel_flag}; last_seq < 0 means refused:
#   -1 fenced (another attempt owns the chat), -2 no such chat, -3 already finished.
# lease_ms > 0: the append also renews the attempt's lease and in-progress key,
# at no extra round trip: a streaming chat's lease is as fresh as its last batch.
APPEND = """
local meta, log, live, cancel, running, in_progress = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local owner = redis.call('HGET', meta, 'attempt')
if not owner then return {-2, 0} end
if owner ~= ARGV[1] then return {-1, 0} end
local status = redis.call('HGET', meta, 'status')
if status == 'done' or status == 'error' then return {-3, 0} end
local ttl, maxlen, lease_ms, n = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[6])
local seq = 0
for i = 0, n - 1 do
  local etype, data = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  seq = redis.call('HINCRBY', meta, 'last_seq', 1)
  redis.call('XADD', log, 'MAXLEN', '~', maxlen, seq .. '-0', 't', etype, 'd', data)
  redis.call('PUBLISH', live, seq .. ' ' .. etype .. ' ' .. data)
end
local first_field = 7 + 2 * n
if #ARGV > first_field then
  redis.call('HSET', meta, unpack(ARGV, first_field))
end
redis.call('EXPIRE', meta, ttl)
if seq > 0 then redis.call('EXPIRE', log, ttl) end
if lease_ms > 0 and redis.call('ZSCORE', running, ARGV[5]) then
  local t = redis.call('TIME')
  redis.call('ZADD', running, 'XX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease_ms, ARGV[5])
  redis.call('SET', in_progress, '1', 'PX', lease_ms)
end
return {seq, redis.call('EXISTS', cancel)}
"""

# Start an attempt at a chat: bump the attempt (fencing out any earlier one),
# mark it running (started_at: Redis clock, seconds) and take a lease on it,
# with arq's in-progress key of its job (when there is one) expiring at the
# same time as the lease (arq set it at pickup, maybe long before under load).
# KEYS: meta, running zset, arq in-progress key   ARGV: chat_id, lease_ms
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
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[2]))
return {status, attempt, tonumber(redis.call('HGET', meta, 'last_seq'))}
"""

# Renew the leases of the chats a worker runs, and arq's in-progress keys of
# their jobs. Fenced on the attempt: a chat whose meta names another attempt
# is not renewed but returned, so that the stale attempt stops at once.
# Attempt 0: a job the worker picked up but has not claimed yet; only its
# in-progress key is kept (a worker killed before its claim still loses the
# job within a lease).
# KEYS: running zset, then one meta key per chat
# ARGV: lease_ms, arq in-progress key prefix, then (chat_id, attempt) per chat
# Returns the chat ids another attempt owns now.
RENEW = """
local t = redis.call('TIME')
local lease_ms = tonumber(ARGV[1])
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease_ms
local lost = {}
for i = 2, #KEYS do
  local id, attempt = ARGV[2 * i - 1], ARGV[2 * i]
  local in_progress = ARGV[2] .. id
  if attempt == '0' then
    redis.call('PEXPIRE', in_progress, lease_ms)
  else
    local owner = redis.call('HGET', KEYS[i], 'attempt')
    if owner ~= attempt then
      table.insert(lost, id)
    elseif redis.call('ZSCORE', KEYS[1], id) then
      redis.call('ZADD', KEYS[1], 'XX', until_ms, id)
      redis.call('SET', in_progress, '1', 'PX', lease_ms)
    end
  end
end
return lost
"""

# Release an attempt's lease when it ends; fenced: a stale attempt must not
# drop the lease of the attempt that took the chat over.
# KEYS: meta, running zset   ARGV: chat_id, attempt
RELEASE = """
if redis.call('HGET', KEYS[1], 'attempt') == ARGV[2] then
  return redis.call('ZREM', KEYS[2], ARGV[1])
end
return 0
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

# arq's end of one run of a chat's job (arq's Worker.finish_job), fenced on the
# attempt. Several runs of one job id can be alive at once (a stalled worker's
# and the one that took over when its lease lapsed), and they share the job's
# keys: a run must only touch them while its attempt owns the chat. And a job
# must not end while its chat has not: it is handed back instead (deleting
# the job would leave the chat running with nobody to finish it).
# KEYS: meta, arq in-progress key, arq job key, arq retry key, queue zset, arq abort zset
# ARGV: job_id, attempt (0: this run claimed nothing), incr_score
# Returns 0: left alone (another attempt owns the job), 1: finished (the chat
# has ended, whatever arq thought), 2: handed back (requeued).
FINISH_JOB = """
local meta = redis.call('HMGET', KEYS[1], 'attempt', 'status')
local ended = (not meta[2]) or meta[2] == 'done' or meta[2] == 'error'
if not ended and ARGV[2] ~= '0' and meta[1] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[2])
if ended then
  redis.call('DEL', KEYS[3], KEYS[4])
  redis.call('ZREM', KEYS[6], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
  return 1
end
local incr = tonumber(ARGV[3])
if incr > 0 then redis.call('ZINCRBY', KEYS[5], incr, ARGV[1]) end
return 2
"""
