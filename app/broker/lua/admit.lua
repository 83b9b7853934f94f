-- Admit one request: refuse it if its model's queue is full, else record it for the no-loss sweep.
-- Atomic, so a refused request writes nothing and two producers cannot both take the last place.
--
-- KEYS[1..L]  the model queue's priority lists (L = ARGV[1])
-- KEYS[L+1]   ledger "since" zset         (task id -> accepted at)
-- KEYS[L+2]   ledger "body" hash          (task id -> what a resend needs)
-- KEYS[L+3]   arrivals hash               (model -> count)
-- KEYS[L+4]   the model's aging index zset (task id -> submitted at); written only when ARGV[7] is not ''
-- KEYS[L+5]   aging facts hash            (task id -> facts JSON)
-- ARGV[1] L, the number of priority lists
-- ARGV[2] the queue's limit: refuse when this many or more requests wait
-- ARGV[3] task id          ARGV[4] now (unix s)      ARGV[5] ledger body JSON
-- ARGV[6] model name       ARGV[7] aging facts JSON, or '' when the model is not under aging
-- Returns the number waiting before this request, or -1 - waiting when refused.
local levels = tonumber(ARGV[1])
local waiting = 0
for i = 1, levels do waiting = waiting + redis.call('LLEN', KEYS[i]) end
if waiting >= tonumber(ARGV[2]) then return -1 - waiting end
redis.call('ZADD', KEYS[levels + 1], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[levels + 2], ARGV[3], ARGV[5])
redis.call('HINCRBY', KEYS[levels + 3], ARGV[6], 1)
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[levels + 4], ARGV[4], ARGV[3])
  redis.call('HSET', KEYS[levels + 5], ARGV[3], ARGV[7])
end
return waiting
