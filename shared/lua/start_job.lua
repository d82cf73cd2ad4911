-- arq's claim of one job at pickup (Worker.start_jobs: WATCH the in-progress
-- key, EXISTS, ZSCORE, then MULTI / PSETEX / EXEC: four round trips), in one.
-- A job starts at most once: only when nobody holds its in-progress key and
-- it is due (in the queue, score not in the future).
-- KEYS: arq in-progress key, arq queue (zset)   ARGV: job id, now ms, in-progress ms
-- Returns the job's score (its enqueue time, ms), or false when it must not start.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
return score
