-- Start an attempt at a chat: bump the attempt (fencing out any earlier one),
-- mark it running (started_at: Redis clock, seconds) and take a lease on it,
-- with arq's in-progress key of its job (when there is one) expiring at the
-- same time as the lease (arq set it at pickup, maybe long before under load).
-- KEYS: meta, running zset, arq in-progress key   ARGV: chat_id, lease_ms
-- Returns {previous status, attempt, last_seq, request}; attempt 0 (and no
-- request) when nothing was claimed. The request comes along so that starting
-- an answer costs one round trip less.
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
local fields = redis.call('HMGET', meta, 'last_seq', 'request')
return {status, attempt, tonumber(fields[1]), fields[2]}
