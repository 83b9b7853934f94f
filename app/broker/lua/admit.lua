-- Admit one request: refuse it if its model's queue is full, else record it for the no-loss sweep and, when a
-- message is given, push it onto its priority list, all in one atomic call: a refused request writes nothing,
-- an admitted one is never recorded without being queued, and two producers cannot both take the last place.
--
-- KEYS[1..L]  the model queue's priority lists, highest level first (L = ARGV[1])
-- KEYS[L+1]   ledger "since" zset         (task id -> accepted at)
-- KEYS[L+2]   ledger "body" hash          (task id -> what a resend needs)
-- KEYS[L+3]   arrivals hash               (model -> count)
-- KEYS[L+4]   the model's aging index zset (task id -> submitted at); written only when ARGV[7] is not ''
-- KEYS[L+5]   aging facts hash            (task id -> facts JSON)
-- ARGV[1] L, the number of priority lists
-- ARGV[2] the queue's limit: refuse when this many or more requests wait
-- ARGV[3] task id          ARGV[4] now (unix s)      ARGV[5] ledger body JSON
-- ARGV[6] model name       ARGV[7] aging facts JSON, or '' when the model is not under aging
-- ARGV[8] the Celery message to LPUSH (as kombu stores it), or '' when the caller publishes it itself
-- ARGV[9] its priority level, 0-based: the message goes onto KEYS[ARGV[9] + 1]
-- Returns the number waiting before this request, or -1 - waiting when refused.
local levels = tonumber(ARGV[1])
local waiting = 0
for i = 1, levels do waiting = waiting + redis.call('LLEN', KEYS[i]) end
-- A producer that lost its connection retries the call: a task id already in the ledger was admitted by the first
-- try, so nothing is written or queued twice.
if redis.call('HEXISTS', KEYS[levels + 2], ARGV[3]) == 1 then return waiting end
if waiting >= tonumber(ARGV[2]) then return -1 - waiting end
redis.call('ZADD', KEYS[levels + 1], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[levels + 2], ARGV[3], ARGV[5])
redis.call('HINCRBY', KEYS[levels + 3], ARGV[6], 1)
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[levels + 4], ARGV[4], ARGV[3])
  redis.call('HSET', KEYS[levels + 5], ARGV[3], ARGV[7])
end
if ARGV[8] ~= '' then
  local level = tonumber(ARGV[9])
  if level < 0 or level >= levels then return redis.error_reply('priority level out of range') end
  redis.call('LPUSH', KEYS[level + 1], ARGV[8])
end
return waiting
