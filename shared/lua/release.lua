-- Release an attempt's lease when it ends; fenced: a stale attempt must not
-- drop the lease of the attempt that took the chat over.
-- KEYS: meta, running zset   ARGV: chat_id, attempt
if redis.call('HGET', KEYS[1], 'attempt') == ARGV[2] then
  return redis.call('ZREM', KEYS[2], ARGV[1])
end
return 0
