-- Store a task's result unless a final one is already stored: the first answer a caller can see is the one that
-- stays. A request can run twice (a worker cut off from Redis finishes it after its copy was given back and
-- answered elsewhere); the second answer is counted, not written, and not published.
--
-- KEYS[1] the result key (celery-task-meta-<task id>)
-- KEYS[2] the fleet counters hash (field answered_twice)
-- ARGV[1] the result as Celery encodes it (JSON with a "status" field)
-- ARGV[2] seconds the result is kept; 0 = no expiry
-- Returns 1 when stored (and published), 0 when a final result was there already.
local old = redis.call('GET', KEYS[1])
if old then
  local ok, meta = pcall(cjson.decode, old)
  if ok and type(meta) == 'table' then
    local status = meta['status']
    if status == 'SUCCESS' or status == 'FAILURE' or status == 'REVOKED' then
      redis.call('HINCRBY', KEYS[2], 'answered_twice', 1)
      return 0
    end
  end
end
local ttl = tonumber(ARGV[2])
if ttl and ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
