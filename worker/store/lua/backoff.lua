-- ARGV: offset_ms, key, token. Count one more failed attempt of the key (for its backoff),
-- fenced as the release is: returns the attempts so far, or -1 (nothing counted) when the
-- token is no longer the key's.
if redis.call('HGET', P .. 'wq:owner', ARGV[2]) ~= ARGV[3] then return -1 end
return redis.call('HINCRBY', P .. 'wq:attempts', ARGV[2], 1)
