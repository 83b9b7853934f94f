"""``maas serve``: the HTTP front door. The Open Inference Protocol (KServe v2 / Triton) REST API with Triton's
generate extension (``gateway.generate_ext``), the OpenAI-compatible API for generative models
(``gateway.openai_api``), Prometheus metrics and the fleet page, as one
ASGI app (Starlette) served by uvicorn.

Stateless: everything it knows comes from Redis and the database, so any number of gateway processes or hosts
can stand behind a load balancer. Each request is awaited asynchronously (:mod:`gateway.results`); no thread
waits for an answer.

Errors are ``{"error": "CODE: message"}`` with Triton's status mapping, and the code again in the
``X-Maas-Error-Code`` header:

=====================================================  ======
unknown model, version or alias; unknown route          404
wrong method on a known route (NOT_FOUND, with Allow)   405
bad input or name, malformed JSON or binary framing     400
body over ``MAAS_MAX_REQUEST_BYTES``                    413
QUEUE_FULL, no capacity (with ``Retry-After``)          503
DEADLINE_EXCEEDED, no answer within the wait            504
model error, anything unexpected                        500
missing or wrong API key                                401
=====================================================  ======
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import redis
import sqlalchemy.exc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app import errors, logs
from app.admission import InferOrder
from app.broker import clients
from app.celery_app import create_app
from app.client import Client, Resolved
from app.errors import MaasError
from app.settings import Settings
from gateway import generate_ext, metrics, oip, openai_api, ui
from gateway.fleet import Fleet, ref_for
from gateway.results import ResultWaiter

log = logging.getLogger("maas.gateway")

SERVER_NAME = "maas-fleet"
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "schedule_policy", "generate"]
#: After a request's deadline, how long a worker may still be about to take it before the gateway takes it back.
DEADLINE_GRACE_S = 0.05
#: Repository loads / unloads waited on at once; more queue behind them.
LIFECYCLE_WAITS = 4
#: Seconds a 503 asks the client to wait before trying again.
RETRY_AFTER_S = 1

_STATUS_BY_CODE = {
    "UNKNOWN_MODEL": 404,
    "UNKNOWN_VERSION": 404,
    "UNKNOWN_ALIAS": 404,
    "NOT_FOUND": 404,
    "QUEUE_FULL": 503,
    "INSUFFICIENT_MEMORY": 503,
    "UNKNOWN_WORKER": 503,
    "NOT_LOADED": 503,
    "BROKER_UNAVAILABLE": 503,
    "DATABASE_UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "TIMEOUT": 504,
    "REQUEST_TOO_LARGE": 413,
    "UNAUTHORIZED": 401,
}
_BY_CLASS_NAME = {cls.__name__: cls for cls in errors.BY_CODE.values()}


def status_of(error: MaasError) -> int:
    if error.code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[error.code]
    if isinstance(error, errors.RequestError | errors.InvalidModelName):
        return 400
    return 500


def error_response(error: MaasError) -> Response:
    status = status_of(error)
    headers = {"X-Maas-Error-Code": error.code}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return Response(orjson.dumps({"error": str(error)}), status, headers, media_type="application/json")


def json_response(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")


def error_from_result(meta: dict[str, Any]) -> MaasError:
    """A FAILURE result as Celery stored it -> the MaasError the worker raised."""
    result = meta.get("result") or {}
    cls = _BY_CLASS_NAME.get(str(result.get("exc_type")), MaasError)
    message = result.get("exc_message")
    if isinstance(message, list | tuple):
        message = message[0] if message else ""
    text = str(message)
    prefix = f"{cls.code}: "
    return cls(text[len(prefix) :] if text.startswith(prefix) else text)


class Gateway:
    """The state one gateway process keeps: clients, the result waiter and the fleet reads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = Client(settings, create_app(settings), requester="user via gateway")
        # Repository loads and unloads wait up to MAAS_LOAD_TIMEOUT_S on a thread each: a pool of their own, so a
        # few slow loads can never take the threads that admit inference requests.
        self.lifecycle_waits = ThreadPoolExecutor(LIFECYCLE_WAITS, thread_name_prefix="maas-lifecycle")
        self.fleet: Fleet
        self.waiter: ResultWaiter

    async def start(self) -> None:
        redis_client = clients.async_for_settings(self.settings)
        self.fleet = Fleet(self.client, redis_client)
        self.waiter = ResultWaiter(redis_client, self.settings.signing_key)
        await self.waiter.start()

    async def stop(self) -> None:
        await self.waiter.stop()
        self.lifecycle_waits.shutdown(wait=False, cancel_futures=True)

    # --- inference ------------------------------------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        model = request.path_params["model"]
        version = request.path_params.get("version")
        ref = ref_for(model, version)
        body = await read_body(request, self.settings.max_request_bytes)
        length_header = request.headers.get(oip.HEADER_LENGTH)
        resolved: list[Resolved] = []

        def prepare() -> tuple[oip.InferRequest, InferOrder]:
            # One thread hop for everything that may block or take CPU: the (cached) registry read, parsing the
            # body (large tensors off the event loop), the signature check and the scheduling decision.
            resolved.append(self.client.resolve(ref))
            parsed = oip.parse_infer(body, length_header)
            oip.check_outputs(parsed.outputs, resolved[0].outputs)
            order = self.client.prepare(
                ref,
                parsed.inputs,
                priority=parsed.level,
                request_class=parsed.request_class,
                deadline_s=parsed.deadline_s,
            )
            return parsed, order

        try:
            parsed, order = await asyncio.to_thread(prepare)
            future = await self.waiter.expect(order.task_id)
        except MaasError as exc:
            # Refused here, before any worker saw it: only the gateway can count it (failures a worker returns are
            # counted by the worker). Resolved first, so a name that is not registered never creates a series.
            if resolved:
                await self.fleet.count_refusal(resolved[0].model, str(resolved[0].version), exc.code)
            raise
        try:
            try:
                published = await self.fleet.publish(order)
            except MaasError as exc:
                await self.fleet.count_refusal(resolved[0].model, str(resolved[0].version), exc.code)
                raise
            meta = await self._await(request, future, published, parsed.deadline_s)
        finally:
            await self.waiter.forget(order.task_id)
        if meta.get("status") != "SUCCESS":
            raise error_from_result(meta)
        content, header_length = oip.build_response(parsed, meta["result"])
        if header_length is None:
            return Response(content, 200, media_type="application/json")
        return Response(
            content,
            200,
            {"Inference-Header-Content-Length": str(header_length)},
            media_type="application/octet-stream",
        )

    async def _await(
        self, request: Request, future: asyncio.Future[dict[str, Any]], published: Any, deadline_s: float | None
    ) -> dict[str, Any]:
        """The result, unless the client leaves, the request's deadline passes before a worker takes it, or the
        wait runs out: then the request is taken back if no worker has started it, so no work is left behind
        that nobody will read. A request a worker has started is awaited to the end of the wait."""
        gone: asyncio.Future[Any] = asyncio.ensure_future(_disconnected(request))
        wait_s = self.settings.infer_timeout_s
        try:
            if deadline_s is not None and deadline_s < wait_s:
                done, _ = await asyncio.wait(
                    {future, gone}, timeout=deadline_s + DEADLINE_GRACE_S, return_when=asyncio.FIRST_COMPLETED
                )
                if not done and await self.fleet.take_back(published, "deadline passed in the queue"):
                    raise errors.DeadlineExceeded(
                        f"the deadline of {deadline_s:g}s passed before any replica took the request; not executed"
                    )
                wait_s -= deadline_s + DEADLINE_GRACE_S
            done, _ = await asyncio.wait({future, gone}, timeout=max(0.0, wait_s), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if future in done:
            return future.result()
        why = "client disconnected" if gone in done else f"no answer within {self.settings.infer_timeout_s:g}s"
        taken_back = await self.fleet.take_back(published, why)
        state = "withdrawn before any worker took it" if taken_back else "already taken by a worker"
        raise errors.RequestTimeout(f"{why}; the request was {state}")

    # --- metadata, health, repository -----------------------------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("maas-fleet")
        except PackageNotFoundError:
            ours = "unknown"
        return json_response({"name": SERVER_NAME, "version": ours, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def server_ready(self, request: Request) -> Response:
        """Ready when Redis and the database answer (details go to the log, not to the caller)."""
        try:
            await self.fleet.redis.ping()
            await asyncio.to_thread(self.fleet.ping_database)
        except Exception as exc:
            logs.event(log, "not_ready", logging.WARNING, exc_info=exc)
            return json_response(
                {"ready": False, "reason": f"a backing service did not answer: {type(exc).__name__}"}, 503
            )
        return json_response({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        m = await self.fleet.metadata(request.path_params["model"], request.path_params.get("version"))
        return json_response(oip.model_metadata(m["name"], m["versions"], m["runtime"], m["inputs"], m["outputs"]))

    async def model_ready(self, request: Request) -> Response:
        model, version = request.path_params["model"], request.path_params.get("version")
        ready = await self.fleet.ready(model, version)
        return json_response({"name": model, "ready": ready}, 200 if ready else 400)

    async def repository_index(self, request: Request) -> Response:
        body = await read_body(request, self.settings.max_request_bytes)
        doc = _json_object(body) if body.strip() else {}
        return json_response(await self.fleet.index(ready_only=bool(doc.get("ready", False))))

    async def repository_load(self, request: Request) -> Response:
        model = request.path_params["model"]
        await self.fleet.check_model(model)

        def load() -> None:
            self.client.load(model).wait()

        await asyncio.get_running_loop().run_in_executor(self.lifecycle_waits, load)
        self.fleet.invalidate(model)
        return json_response({})

    async def repository_unload(self, request: Request) -> Response:
        model = request.path_params["model"]
        await self.fleet.check_model(model)

        def unload() -> None:
            for handle in self.client.stop(model):
                handle.wait()

        await asyncio.get_running_loop().run_in_executor(self.lifecycle_waits, unload)
        self.fleet.invalidate(model)
        return json_response({})

    async def statistics(self, request: Request) -> Response:
        model, version = request.path_params.get("model"), request.path_params.get("version")
        if model is not None:
            await self.fleet.check_model(model)
        return json_response(await metrics.statistics(self.fleet.redis, model, version))

    async def metrics(self, request: Request) -> Response:
        text = await metrics.render(self.fleet, self.waiter.in_flight)
        return Response(text, 200, media_type=metrics.CONTENT_TYPE)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body has been read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidInput(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise errors.InvalidInput("the request body must be a JSON object")
    return doc


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit_bytes`` (nothing larger is buffered)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise errors.RequestTooLarge(f"the body of {int(declared)} bytes is over the limit of {limit_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise errors.RequestTooLarge(f"the body is over the limit of {limit_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ApiKeyAuth:
    """Every route needs ``Authorization: Bearer KEY`` (or HTTP Basic with the key as password, for browsers)
    when API keys are set. Keys are compared in constant time."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(errors.Unauthorized("an API key is required: Authorization: Bearer KEY"))
        # One challenge per header line: browsers do not read a second scheme from a comma-separated list, and
        # Basic is what lets them ask for the key (any user name, the key as password).
        response.headers.append("WWW-Authenticate", 'Basic realm="maas", charset="UTF-8"')
        response.headers.append("WWW-Authenticate", "Bearer")
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        import base64

        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, value = header.partition(b" ")
        if scheme.lower() == b"bearer":
            offered = value.strip()
        elif scheme.lower() == b"basic" and scope["method"] == "GET" and scope["path"].startswith("/ui"):
            # Browsers resend cached Basic credentials on their own, even for a form another site posts: Basic
            # is good for reading the fleet page only, never for a request that changes or runs anything.
            try:
                offered = base64.b64decode(value.strip()).partition(b":")[2]
            except ValueError:
                return False
        else:
            return False
        return any(hmac.compare_digest(offered, key) for key in self.keys)


def _handler(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def wrapped(request: Request) -> Response:
        started = time.perf_counter()
        try:
            return await fn(request)
        except MaasError as exc:
            return error_response(exc)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logs.event(log, "broker_unavailable", logging.ERROR, exc_info=exc, path=request.url.path)
            return error_response(errors.BrokerUnavailable(f"Redis did not answer: {type(exc).__name__}"))
        except sqlalchemy.exc.DBAPIError as exc:
            logs.event(log, "database_unavailable", logging.ERROR, exc_info=exc, path=request.url.path)
            return error_response(errors.DatabaseUnavailable(f"the database did not answer: {type(exc).__name__}"))
        except Exception as exc:
            logs.event(log, "gateway_error", logging.ERROR, exc_info=exc, path=request.url.path)
            return error_response(MaasError(f"internal error: {type(exc).__name__}"))
        finally:
            metrics.observe_http(request.url.path, time.perf_counter() - started)

    return wrapped


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    why = "no such route" if status == 404 else "method not allowed"
    error = errors.NotFound(f"{request.method} {request.url.path}: {why}")
    headers = {"X-Maas-Error-Code": error.code}
    if isinstance(exc, HTTPException) and exc.headers:
        headers.update(exc.headers)  # a 405's Allow
    return Response(orjson.dumps({"error": str(error)}), status, headers, media_type="application/json")


def build_app(settings: Settings, listening: Callable[[], bool] | None = None) -> ASGIApp:
    """The ASGI app. ``listening`` says whether the server accepts connections yet: ``gateway_ready`` is logged
    only then (the app starts before the server binds its socket, and "ready" must mean a request gets in)."""
    gw = Gateway(settings)

    async def announce() -> None:
        while listening is not None and not listening():
            await asyncio.sleep(0.02)
        logs.event(log, "gateway_ready", host=settings.gateway_host, port=settings.gateway_port)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        announcing = asyncio.create_task(announce())
        yield
        announcing.cancel()
        await gw.stop()

    m, v = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    h = _handler
    routes = [
        Route("/v2/health/live", h(gw.live)),
        Route("/v2/health/ready", h(gw.server_ready)),
        Route("/v2", h(gw.server_metadata)),
        Route("/v2/models/stats", h(gw.statistics)),
        Route(m, h(gw.model_metadata)),
        Route(v, h(gw.model_metadata)),
        Route(f"{m}/ready", h(gw.model_ready)),
        Route(f"{v}/ready", h(gw.model_ready)),
        Route(f"{m}/infer", h(gw.infer), methods=["POST"]),
        Route(f"{v}/infer", h(gw.infer), methods=["POST"]),
        Route(f"{m}/stats", h(gw.statistics)),
        Route(f"{v}/stats", h(gw.statistics)),
        Route("/v2/repository/index", h(gw.repository_index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", h(gw.repository_load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", h(gw.repository_unload), methods=["POST"]),
        Route("/metrics", h(gw.metrics)),
        *generate_ext.routes(gw, h),
        *openai_api.routes(gw, h),
        *ui.routes(gw, h),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _not_found},
    )
    return ApiKeyAuth(app, settings.api_keys)


def run(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """Serve until stopped; refuses to listen beyond loopback without API keys."""
    import uvicorn

    logs.configure(settings.log_level, settings.log_format)
    host = host or settings.gateway_host
    port = port or settings.gateway_port
    loopback = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
    if not loopback and not settings.api_keys:
        raise errors.ConfigError(
            f"refusing to serve on {host} without API keys: set MAAS_API_KEYS, or bind 127.0.0.1 for local use"
        )
    settings = _with(settings, gateway_host=host, gateway_port=port)
    server: uvicorn.Server | None = None
    config = uvicorn.Config(
        build_app(settings, listening=lambda: server is not None and server.started),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
        loop="auto",
        http="auto",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


def _with(settings: Settings, **changes: Any) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, **changes)
