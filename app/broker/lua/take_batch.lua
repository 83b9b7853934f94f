-- Take up to ARGV[1] waiting infer requests of one model, to join the batch a worker is running.
-- The popping end of each list is its tail (kombu LPUSHes and BRPOPs), so the oldest message comes first.
--
-- KEYS[1..L]  the model queue's priority lists, highest level first
-- ARGV[1]     how many messages to take at most
-- ARGV[2]     the task name to take ('maas.infer', or 'maas.generate' for continuous batching)
-- Returns the raw messages taken, highest level first.
--
-- A list is left at the first message that is not a Celery protocol 2 'maas.infer' message (a job chunk, a
-- message of another protocol, something unreadable): that message keeps its place and its own path, the
-- consumer, where it is judged on its own; later levels are still looked at.
local out, want, task = {}, tonumber(ARGV[1]), ARGV[2] or 'maas.infer'
for _, key in ipairs(KEYS) do
  while #out < want do
    local raw = redis.call('LINDEX', key, -1)
    if not raw then break end
    local ok, msg = pcall(cjson.decode, raw)
    if not ok or type(msg) ~= 'table' or type(msg['headers']) ~= 'table'
        or msg['headers']['task'] ~= task then
      break
    end
    redis.call('RPOP', key)
    out[#out + 1] = raw
  end
  if #out >= want then break end
end
return out
