-- ARGV: offset_ms, worker name, ttl_ms. A worker says it is alive for the next ttl_ms (on
-- Redis's clock); the workers whose time is up are forgotten.
redis.call('ZADD', P .. 'workers', now + tonumber(ARGV[3]), ARGV[2])
redis.call('ZREMRANGEBYSCORE', P .. 'workers', '-inf', now)
return 0
