-- Accept a chat, in one round trip: admission (queue depth), its metadata,
-- its arq job, and the workers' wake-up. What POST /chat did in six round
-- trips (queue depth, metadata, arq's WATCH / EXISTS / MULTI..EXEC, PUBLISH).
-- The job is written as arq's enqueue_job writes it (a job key holding the
-- serialised job, its id in the queue's sorted set), so arq runs it as its own.
-- KEYS: meta, arq job key, arq result key, arq queue (zset), running (zset)
-- ARGV: chat id, max_queued (0: no limit), meta ttl s, job bytes, job expiry ms,
--       score (enqueue time, ms), wake channel, then meta field, value pairs
-- Returns {'ok', 0}, {'queue_full', waiting} or {'exists', 0}.
local meta, job, result, queue, running = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local max_queued = tonumber(ARGV[2])
if max_queued > 0 then
  -- arq keeps running jobs in its queue too: waiting = entries - running.
  local waiting = redis.call('ZCARD', queue) - redis.call('ZCARD', running)
  if waiting >= max_queued then return {'queue_full', waiting} end
end
if redis.call('EXISTS', job, result) > 0 then return {'exists', 0} end
redis.call('HSET', meta, unpack(ARGV, 8))
redis.call('EXPIRE', meta, tonumber(ARGV[3]))
redis.call('PSETEX', job, tonumber(ARGV[5]), ARGV[4])
redis.call('ZADD', queue, tonumber(ARGV[6]), ARGV[1])
redis.call('PUBLISH', ARGV[7], 'wake')
return {'ok', 0}
