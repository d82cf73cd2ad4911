-- arq's claim of one job at pickup (Worker.start_jobs: WATCH the in-progress
-- key, EXISTS, ZSCORE, then MULTI / PSETEX / EXEC: four round trips), in one.
-- A job starts at most once: only when nobody holds its in-progress key and
-- it is due (in the queue, score not in the future).
--
-- A running job stays in arq's queue, and every poll reads the first
-- queue_read_limit ids due: with more jobs running fleet-wide than that, a
-- poll saw only running jobs and a new chat waited for one of them to end.
-- So a started job's score moves a lease ahead (Redis clock), and every lease
-- renewal moves it again (renew.lua): polls only see waiting jobs, and a job
-- whose worker died becomes due again as its lease lapses, with no sweeper.
-- KEYS: arq in-progress key, arq queue (zset)   ARGV: job id, now ms, in-progress ms
-- Returns the job's score (its enqueue time, ms), or false when it must not start.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], 'XX', now_ms + tonumber(ARGV[3]), ARGV[1])
return score
