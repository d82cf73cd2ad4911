-- arq's end of one run of a chat's job (arq's Worker.finish_job), fenced on the
-- attempt. Several runs of one job id can be alive at once (a stalled worker's
-- and the one that took over when its lease lapsed), and they share the job's
-- keys: a run must only touch them while its attempt owns the chat. And a job
-- must not end while its chat has not: it is handed back instead (deleting
-- the job would leave the chat running with nobody to finish it).
-- KEYS: meta, arq in-progress key, arq job key, arq retry key, queue zset, arq abort zset
-- ARGV: job_id, attempt (0: this run claimed nothing), incr_score
-- Returns 0: left alone (another attempt owns the job), 1: finished (the chat
-- has ended, whatever arq thought), 2: handed back (requeued).
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
-- Due again now (plus arq's retry delay): its score was a lease ahead while
-- it ran (start_job.lua).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[5], 'XX', now_ms + tonumber(ARGV[3]), ARGV[1])
return 2
