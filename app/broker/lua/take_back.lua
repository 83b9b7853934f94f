-- Take back a request that is still waiting in its queue and that nobody will read (its caller left, its deadline
-- passed in the queue, or its client cancelled it): the message and everything admit.lua recorded for it go in
-- one step, so no reader ever sees the queue empty while the ledger still holds the request (the ledger's resend
-- would otherwise queue it again), and a crash between the two cannot leave half of it behind.
--
-- KEYS[1] the priority list the message waits in
-- KEYS[2] the ledger's since-index zset          KEYS[3] the ledger's body hash
-- KEYS[4] the model's aging index zset           KEYS[5] the aging facts hash
-- KEYS[6] the per-model arrival counters hash
-- ARGV[1] the message exactly as queued  ARGV[2] the task id  ARGV[3] the model
-- Returns 1 when the message was still queued and is now gone with its records, 0 when a worker already has it
-- (then nothing is touched: the request runs to the end and the ledger keeps watching it).
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[2])
redis.call('HINCRBY', KEYS[6], ARGV[3], -1)
return 1
