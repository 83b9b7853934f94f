"""The Redis edge: the one package that knows how data is laid out in Redis.

- :mod:`~app.broker.layout`: kombu's layout (queue names, the ten priority lists of a queue, the unacked hash,
  Celery's result keys) and how to read a kombu message.
- :mod:`~app.broker.keys`: every ``maas:*`` key the fleet writes.
- :mod:`~app.broker.clients`: one connection pool per process and URL, synchronous and ``redis.asyncio``.
- :mod:`~app.broker.scripts`: the Lua scripts (``lua/*.lua``), registered once per client and called by name.
- :mod:`~app.broker.ledger`, :mod:`~app.broker.aging_index`, :mod:`~app.broker.demand`: the records built on
  those keys (the request ledger, the aging index, arrival counts and observed service times).

Nothing outside this package spells a Redis key or a kombu list name.
"""
