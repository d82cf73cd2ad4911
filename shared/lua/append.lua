-- Append events to a chat (Centrifugo's history script is the model).
-- KEYS: meta, log, live channel, cancel flag, running zset, arq in-progress key
-- ARGV: attempt, ttl_s, maxlen, lease_ms, chat_id, n, then n pairs (type, json), then meta field/value pairs
-- Returns {last_seq, cancel_flag}; last_seq < 0 means refused:
--   -1 fenced (another attempt owns the chat), -2 no such chat, -3 already finished.
-- lease_ms > 0: the append also renews the attempt's lease and in-progress key,
-- at no extra round trip: a streaming chat's lease is as fresh as its last batch.
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
