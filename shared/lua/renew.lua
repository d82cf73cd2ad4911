-- Renew the leases of the chats a worker runs, arq's in-progress keys of
-- their jobs, and their jobs' scores in arq's queue (kept a lease ahead, so
-- that polls skip running jobs: see start_job.lua). Fenced on the attempt: a chat whose meta names another attempt
-- is not renewed but returned, so that the stale attempt stops at once.
-- Attempt 0: a job the worker picked up but has not claimed yet; only its
-- in-progress key is kept (a worker killed before its claim still loses the
-- job within a lease).
-- KEYS: running zset, arq queue zset, then per chat: its meta, its arq in-progress key
-- ARGV: lease_ms, then per chat: chat_id, attempt
-- Returns the chat ids another attempt owns now.
local t = redis.call('TIME')
local lease_ms = tonumber(ARGV[1])
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease_ms
local lost = {}
for i = 1, (#KEYS - 2) / 2 do
  local meta, in_progress = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local id, attempt = ARGV[2 * i], ARGV[2 * i + 1]
  if attempt == '0' then
    if redis.call('PEXPIRE', in_progress, lease_ms) == 1 then
      redis.call('ZADD', KEYS[2], 'XX', until_ms, id)
    end
  else
    local owner = redis.call('HGET', meta, 'attempt')
    if owner ~= attempt then
      table.insert(lost, id)
    elseif redis.call('ZSCORE', KEYS[1], id) then
      redis.call('ZADD', KEYS[1], 'XX', until_ms, id)
      redis.call('SET', in_progress, '1', 'PX', lease_ms)
      redis.call('ZADD', KEYS[2], 'XX', until_ms, id)
    end
  end
end
return lost
