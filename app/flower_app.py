"""Module-level Celery app for ``celery -A app.flower_app flower`` (Flower needs an importable app).

Built from the same settings as workers and producers, so Flower reads the same priority lists. Importing it also
puts Flower's ``/metrics`` and ``/healthcheck`` behind the same basic authentication as its other pages (Flower
serves those two to anyone): a request without valid credentials gets 401.
"""

from collections.abc import Awaitable, Callable
from typing import Any

import tornado.web
from flower.views.monitor import Healthcheck, Metrics

from app.celery_app import create_app

app = create_app()


def _require_user(get: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    async def guarded(self: tornado.web.RequestHandler, *args: Any, **kwargs: Any) -> None:
        # Flower's get_current_user raises 401 for missing or wrong basic-auth credentials; without any
        # authentication configured (`maas flower --local`, loopback only) it lets the request through.
        if not self.current_user:
            raise tornado.web.HTTPError(401)
        await get(self, *args, **kwargs)

    return guarded


for _handler in (Metrics, Healthcheck):
    _handler.get = _require_user(_handler.get)  # type: ignore[method-assign]
