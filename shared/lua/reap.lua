-- Take the chats whose lease lapsed (their worker died) off the running set,
-- and return them: the caller then drops arq's in-progress key of each job,
-- so that the next worker poll starts it again. (The in-progress keys are not
-- touched here: their names are only known once the ids are, and a script
-- declares every key it touches in KEYS. Should the caller die in between,
-- an in-progress key expires with its lease anyway.)
-- KEYS: running zset   ARGV: limit
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
end
return ids
