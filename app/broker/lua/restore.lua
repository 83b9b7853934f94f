-- Give a message held by a worker known to be dead back to its queue now, instead of after kombu's visibility
-- timeout. Atomic against kombu's own acknowledgement and restore: only the one that removes the unacked entry
-- requeues the message, so it is queued once.
--
-- KEYS[1] kombu's unacked hash (delivery tag -> [message, exchange, routing key])
-- KEYS[2] kombu's unacked index zset (delivery tag -> when it was taken)
-- KEYS[3] the priority list the message goes back onto
-- ARGV[1] the delivery tag
-- ARGV[2] the message, marked redelivered, as kombu stores it
-- Returns 1 when the message was requeued, 0 when it was no longer held (acknowledged or restored meanwhile).
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
-- The popping end (kombu BRPOPs from the right): a request that already waited once goes next.
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
