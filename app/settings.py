"""Typed settings, read once from the environment.

Every option is an environment variable (listed in ``FIELDS``); an invalid value fails at start with a
:class:`~app.errors.ConfigError` naming the variable. Nothing else in the project reads ``os.environ`` for
configuration, so this module is the whole list of knobs (docker-compose.yml is checked against it).
:func:`describe` is what ``maas config`` prints: each variable's default beside the value it has here.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app.errors import ConfigError
from app.policies import Policy, PolicyParams, parse_policy

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_size_bytes(text: str) -> int:
    """Parse ``"8GiB"``, ``"512MiB"``, ``"2G"`` or ``"1048576"`` into bytes (binary units for ``Ki``/``Mi``...)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 8GiB, 512MiB or a number of bytes)")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    binary = "I" in unit
    letter = unit[:1] if unit not in ("", "B") else unit
    scale = 1024 ** "BKMGT".index(letter) if binary else _UNITS[letter]
    return int(number * scale)


def format_size_bytes(n_bytes: int) -> str:
    """The shortest exact spelling of ``n_bytes`` that :func:`parse_size_bytes` reads back (``4GiB``, ``1500``)."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n_bytes and n_bytes % scale == 0:
            return f"{n_bytes // scale}{unit}"
    return str(n_bytes)


def parse_virtual_devices(text: str) -> tuple[int, ...]:
    """Parse a virtual device declaration into one memory budget per device.

    ``"2x8GiB"`` is two devices of 8 GiB; ``"8GiB,16GiB"`` is one of each; ``""`` declares none.
    """
    budgets: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        count, _, size = part.rpartition("x") if "x" in part.lower() else ("1", "", part)
        if not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"bad device count in {part!r} (use e.g. 2x8GiB)")
        budgets.extend([parse_size_bytes(size)] * int(count))
    return tuple(budgets)


def format_virtual_devices(budgets: Iterable[int]) -> str:
    """The inverse of :func:`parse_virtual_devices`: runs of equal budgets written ``NxSIZE``."""
    parts = []
    for size, run in itertools.groupby(budgets):
        count = len(list(run))
        parts.append(f"{count}x{format_size_bytes(size)}" if count > 1 else format_size_bytes(size))
    return ",".join(parts)


def _device_label(text: str) -> str:
    if text and not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,30}", text):
        raise ValueError("use 1-31 lowercase letters, digits, '.', '_' or '-'")
    return text


def _slowdown(text: str) -> float:
    value = float(text)
    if not 1.0 <= value <= 1000.0:
        raise ValueError("must be between 1 and 1000")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be an integer >= 1")
    return value


def _priority(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 9:
        raise ValueError("must be an integer from 0 (highest) to 9 (lowest)")
    return value


def _entrypoint_allow(text: str) -> tuple[str, ...]:
    prefixes = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in prefixes if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", p)]
    if bad:
        # No wildcards: "*" would let any installed module (os, subprocess) be named by a registered artifact.
        raise ValueError(f"{bad} are not dotted module names (no wildcards)")
    return prefixes


def _api_keys(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    short = [k[:4] + "..." for k in keys if len(k) < 16]
    if short:
        raise ValueError(f"keys {short} are shorter than 16 characters")
    return keys


def _signing_key(text: str) -> str:
    if len(text) < 32:
        raise ValueError("must be at least 32 characters (e.g. the output of `openssl rand -hex 32`)")
    return text


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return parse


def _basic_auth(text: str) -> str:
    for pair in filter(None, text.split(",")):
        user, sep, password = pair.partition(":")
        if not (user and sep and password):
            raise ValueError("must be user:password (comma-separated for several users)")
    return text


def _show(value: Any) -> str:
    """A parsed value written back the way the variable would be set."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    return str(value)


def _plain(text: str) -> str:
    return text


def mask_url(text: str) -> str:
    """The URL with its password replaced by ``***``: ``maas config`` output ends up in tickets and chat."""
    parts = urlsplit(text)
    if parts.password is None:
        return text
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _mask_secret(text: str) -> str:
    return "***" if text else ""


def _mask_sentinel_urls(text: str) -> str:
    """:func:`mask_url` on each URL of a ``;``-separated Sentinel list."""
    return ";".join(mask_url(part) for part in text.split(";"))


def _mask_basic_auth(text: str) -> str:
    return ",".join(f"{pair.partition(':')[0]}:***" for pair in filter(None, text.split(",")))


def _env(
    var: str,
    parse: Callable[[str], Any],
    default: Any,
    help: str,
    *,
    show: Callable[[Any], str] = _show,
    mask: Callable[[str], str] = _plain,
) -> Any:
    """A setting read from ``var``; ``show`` writes a value back as text, ``mask`` hides secrets in that text."""
    return field(default=default, metadata={"env": var, "parse": parse, "help": help, "show": show, "mask": mask})


def _default_home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "maas"


def _is_set(name: str, raw: str | None) -> bool:
    # An empty value means "use the default", except for the virtual devices, where "" declares none.
    return raw is not None and (raw != "" or name == "virtual_devices")


@dataclass(frozen=True)
class Settings:
    """The whole configuration of a fleet component; build it with :meth:`from_env`."""

    redis_url: str = _env(
        "REDIS_URL",
        str,
        "redis://localhost:6379/0",
        "Broker, result backend and the fleet's own records; with Sentinel: sentinel://h1:26379;sentinel://h2:26379/0",
        mask=_mask_sentinel_urls,
    )
    redis_sentinel_master: str = _env(
        "MAAS_REDIS_SENTINEL_MASTER", str, "maas", "Name the Sentinels monitor the primary under (sentinel:// only)"
    )
    redis_wait_replicas: int = _env(
        "MAAS_REDIS_WAIT_REPLICAS",
        int,
        0,
        "Durability: after accepting a request or storing a result, WAIT until this many Redis replicas have it "
        "(0: do not wait; a failover may then lose the last writes)",
    )
    redis_wait_timeout_ms: int = _env(
        "MAAS_REDIS_WAIT_TIMEOUT_MS",
        int,
        200,
        "Longest WAIT for the replicas; past it the write is counted (unreplicated_writes), not failed",
    )
    database_url: str = _env(
        "DATABASE_URL", str, "", "SQLAlchemy URL; empty means SQLite under MAAS_HOME", mask=mask_url
    )
    home: Path = _env(
        "MAAS_HOME",
        Path,
        None,
        "State directory: artifact store, beat schedule, SQLite file; default $XDG_STATE_HOME/maas",
    )
    device_mode: str = _env(
        "MAAS_DEVICE_MODE",
        _choice("auto", "nvml", "virtual"),
        "auto",
        "auto: NVML if a driver answers, else virtual devices",
    )
    virtual_devices: tuple[int, ...] = _env(
        "MAAS_VIRTUAL_DEVICES",
        parse_virtual_devices,
        (8 * 1024**3,) * 2,
        "Virtual devices when there is no GPU, e.g. 2x8GiB or 8GiB,16GiB",
        show=format_virtual_devices,
    )
    virtual_device_class: str = _env(
        "MAAS_VIRTUAL_DEVICE_CLASS",
        _device_label,
        "",
        "Label this host's virtual devices as a class of their own (e.g. slow): service times are learned and "
        "placed per class 'virtual-<label>'; empty = the one class 'virtual'",
    )
    virtual_slowdown: float = _env(
        "MAAS_VIRTUAL_SLOWDOWN",
        _slowdown,
        1.0,
        "A virtual device emulates a card this many times slower (each execution is stretched by sleeping), so "
        "per-class placement can be tried on one machine; 1 = as fast as the CPU. Ignored on real GPUs",
    )
    default_priority: int = _env("MAAS_DEFAULT_PRIORITY", _priority, 5, "Priority of a request that names none")
    visibility_timeout_s: float = _env(
        "MAAS_VISIBILITY_TIMEOUT_S",
        _positive_float,
        1800.0,
        "Redis redelivers an unacknowledged message after this long; must exceed the longest load or request",
    )
    load_timeout_s: float = _env("MAAS_LOAD_TIMEOUT_S", _positive_float, 600.0, "Longest a model load may take")
    infer_timeout_s: float = _env("MAAS_INFER_TIMEOUT_S", _positive_float, 60.0, "Client wait for an answer")
    result_expires_s: float = _env("MAAS_RESULT_EXPIRES_S", _positive_float, 3600.0, "Results kept in Redis")
    heartbeat_s: float = _env("MAAS_HEARTBEAT_S", _positive_float, 5.0, "Worker heartbeat period")
    heartbeat_timeout_s: float = _env(
        "MAAS_HEARTBEAT_TIMEOUT_S", _positive_float, 30.0, "A worker silent this long is marked lost"
    )
    reap_period_s: float = _env("MAAS_REAP_PERIOD_S", _positive_float, 10.0, "Beat: how often lost workers are reaped")
    beat_lease_s: float = _env(
        "MAAS_BEAT_LEASE_S",
        _positive_float,
        15.0,
        "Beat leadership: the leader's lock lives this long unless renewed (every third of it); another beat takes "
        "over at most this plus a third of it after the leader dies",
    )
    max_artifact_bytes: int = _env(
        "MAAS_MAX_ARTIFACT_BYTES",
        parse_size_bytes,
        4 * 1024**3,
        "Largest artifact accepted, e.g. 4GiB",
        show=format_size_bytes,
    )
    worker_name: str = _env("MAAS_WORKER_NAME", str, "", "Worker node name; default gpu<N>@<host>")
    host_name: str = _env(
        "MAAS_HOST",
        str,
        "",
        "Name of the machine this worker runs on: devices are grouped and spread by it; default the hostname",
    )
    worker_system_tasks: bool = _env(
        "MAAS_WORKER_SYSTEM_TASKS",
        _bool,
        True,
        "Serving workers also run beat's tasks (set false when a `maas controller` runs them)",
    )
    policy: Policy = _env(
        "MAAS_POLICY",
        parse_policy,
        Policy.FIFO,
        "Fleet scheduling policy (a model may override it)",
    )
    typical_service_s: float = _env(
        "MAAS_TYPICAL_SERVICE_S", _positive_float, 0.3, "Typical request time; scales SJF bands and the aging clock"
    )
    generation_max_sequences: int = _env(
        "MAAS_GEN_MAX_SEQUENCES",
        _positive_int,
        8,
        "Continuous batching: most sequences a worker generates at once, per model",
    )
    generation_kv_bytes: int = _env(
        "MAAS_GEN_KV_CACHE_BYTES",
        parse_size_bytes,
        256 * 1024**2,
        "Continuous batching: KV-cache bytes the running sequences of one model may grow to, e.g. 2GiB",
        show=format_size_bytes,
    )
    generation_keepalive_s: float = _env(
        "MAAS_GEN_KEEPALIVE_S",
        _positive_float,
        2.0,
        "Continuous batching: how often a waiting or preempted sequence's stream gets a keep-alive entry; well under"
        " MAAS_INFER_TIMEOUT_S, after which a reader that saw nothing gives up",
    )
    max_queue: int = _env("MAAS_MAX_QUEUE", int, 10000, "Backlog of a model queue past which requests are refused")
    aging_period_s: float = _env("MAAS_AGING_PERIOD_S", _positive_float, 1.0, "Beat: how often waiting work ages")
    aging_backlog_factor: float = _env(
        "MAAS_AGING_BACKLOG_FACTOR",
        _positive_float,
        2.0,
        "Aging starts once a request waited this many times its FIFO wait (lower: tighter worst wait, higher mean)",
    )
    allocation_period_s: float = _env(
        "MAAS_ALLOCATION_PERIOD_S", _positive_float, 30.0, "Beat: how often the placement is re-solved"
    )
    solver_time_limit_s: float = _env("MAAS_SOLVER_TIME_LIMIT_S", _positive_float, 5.0, "Wall budget of one solve")
    rate_half_life_s: float = _env(
        "MAAS_RATE_HALF_LIFE_S", _positive_float, 60.0, "Half-life of the per-model arrival-rate average"
    )
    idle_unload_s: float = _env(
        "MAAS_IDLE_UNLOAD_S", _positive_float, 300.0, "A model idle this long may be unloaded when memory is needed"
    )
    entrypoint_allow: tuple[str, ...] = _env(
        "MAAS_ENTRYPOINT_ALLOW",
        lambda text: _entrypoint_allow(text),
        (),
        "Module prefixes entry-point models may be imported from (comma-separated); empty disables entry points",
    )
    allocation_enabled: bool = _env(
        "MAAS_ALLOCATION", _bool, True, "Beat re-solves placement (off: loads are manual only)"
    )
    log_level: str = _env("MAAS_LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "Log level")
    log_format: str = _env("MAAS_LOG_FORMAT", _choice("json", "text"), "json", "json lines or plain text")
    flower_basic_auth: str = _env(
        "MAAS_FLOWER_BASIC_AUTH",
        _basic_auth,
        "",
        "user:password for Flower; required unless --local",
        mask=_mask_basic_auth,
    )
    flower_port: int = _env("MAAS_FLOWER_PORT", int, 5555, "Flower's port")
    gateway_host: str = _env(
        "MAAS_GATEWAY_HOST", str, "127.0.0.1", "Address `maas serve` binds; anything but loopback needs API keys"
    )
    gateway_port: int = _env("MAAS_GATEWAY_PORT", int, 8000, "Port of `maas serve` (HTTP: OIP, metrics, fleet page)")
    api_keys: tuple[str, ...] = _env(
        "MAAS_API_KEYS", _api_keys, (), "Comma-separated keys the gateway accepts (Authorization: Bearer KEY)"
    )
    retry_attempts: int = _env(
        "MAAS_RETRY_ATTEMPTS",
        _positive_int,
        6,
        "Client, CLI and gateway: tries of a call that met a Redis or database outage before a typed error",
    )
    retry_max_s: float = _env(
        "MAAS_RETRY_MAX_S",
        _positive_float,
        10.0,
        "Client, CLI, gateway, and a worker serving a request: longest a call retries an outage (backoff from "
        "0.1 s, doubling to 2 s) before failing",
    )
    worker_db_retry_s: float = _env(
        "MAAS_WORKER_DB_RETRY_S",
        _positive_float,
        180.0,
        "Workers: how long a lifecycle record is retried while the database is away before it is given up",
    )
    max_request_bytes: int = _env(
        "MAAS_MAX_REQUEST_BYTES",
        parse_size_bytes,
        64 * 1024**2,
        "Largest request accepted (client, gateway body: 413, worker: REQUEST_TOO_LARGE)",
        show=format_size_bytes,
    )
    max_result_bytes: int = _env(
        "MAAS_MAX_RESULT_BYTES",
        parse_size_bytes,
        64 * 1024**2,
        "Largest result a worker stores; a larger one is replaced by RESULT_TOO_LARGE",
        show=format_size_bytes,
    )
    signing_key: str = _env(
        "MAAS_SIGNING_KEY",
        _signing_key,
        "",
        "HMAC key that signs control messages and results (32+ characters); empty: unsigned, with a warning",
        mask=_mask_secret,
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every variable in ``FIELDS``; raise ConfigError naming the first invalid one."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            var, parse = f.metadata["env"], f.metadata["parse"]
            raw = env.get(var)
            if not _is_set(f.name, raw):
                continue
            try:
                values[f.name] = parse(raw)
            except (ValueError, TypeError) as exc:
                shown = f.metadata["mask"](raw)  # a secret is not repeated in the error, even a wrong one
                raise ConfigError(f"{var}={shown!r} is invalid: {exc}") from exc
        settings = cls(**values)
        if settings.max_queue < 1:
            raise ConfigError(f"MAAS_MAX_QUEUE={settings.max_queue} is invalid: must be at least 1")
        if settings.home is None:
            object.__setattr__(settings, "home", _default_home(env))
        settings.validate()
        return settings

    def validate(self) -> None:
        """Cross-field checks that no single variable can make."""
        if self.visibility_timeout_s <= self.load_timeout_s:
            raise ConfigError(
                f"MAAS_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s:g} must exceed "
                f"MAAS_LOAD_TIMEOUT_S={self.load_timeout_s:g}: Redis would redeliver a load still running"
            )
        if self.heartbeat_timeout_s <= self.heartbeat_s:
            raise ConfigError(
                f"MAAS_HEARTBEAT_TIMEOUT_S={self.heartbeat_timeout_s:g} must exceed "
                f"MAAS_HEARTBEAT_S={self.heartbeat_s:g}"
            )
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://", "redis+socket://", "sentinel://")):
            raise ConfigError(
                f"REDIS_URL={mask_url(self.redis_url)!r} is invalid: use redis://, rediss://, redis+socket:// or sentinel://"
            )
        if self.redis_url.startswith("sentinel://") and any(
            not part.startswith("sentinel://") for part in self.redis_url.split(";")
        ):
            raise ConfigError(
                f"REDIS_URL={_mask_sentinel_urls(self.redis_url)!r} is invalid: every ';'-separated part must be "
                "sentinel://"
            )
        if self.redis_wait_replicas < 0 or self.redis_wait_timeout_ms < 0:
            raise ConfigError("MAAS_REDIS_WAIT_REPLICAS and MAAS_REDIS_WAIT_TIMEOUT_MS must be >= 0")
        if self.redis_wait_replicas > 0 and not 1 <= self.redis_wait_timeout_ms < 30_000:
            # Redis reads WAIT 0 as "block for ever", and a wait past the 30 s socket timeout is a lost connection.
            raise ConfigError(
                "MAAS_REDIS_WAIT_TIMEOUT_MS must be between 1 and 29999 when MAAS_REDIS_WAIT_REPLICAS > 0"
            )

    @property
    def uses_sentinel(self) -> bool:
        return self.redis_url.startswith("sentinel://")

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL, or the embedded SQLite file under MAAS_HOME."""
        return self.database_url or f"sqlite:///{self.home / 'maas.db'}"

    @property
    def host(self) -> str:
        """MAAS_HOST, else this machine's hostname."""
        return self.host_name or socket.gethostname()

    @property
    def artifact_dir(self) -> Path:
        return self.home / "artifacts"

    def policy_params(self) -> PolicyParams:
        """The scheduling policies' bands and aging clock for this fleet (producer, jobs and beat agree)."""
        return PolicyParams.around(self.typical_service_s, aging_backlog_factor=self.aging_backlog_factor)


#: (variable, help) for every setting, for ``maas config`` and the compose check.
FIELDS: tuple[tuple[str, str], ...] = tuple((f.metadata["env"], f.metadata["help"]) for f in fields(Settings))


@dataclass(frozen=True)
class Variable:
    """One environment variable as ``maas config`` shows it; secrets in URLs and passwords read ``***``."""

    name: str
    default: str  # what the fleet uses when the variable is unset, written as the variable would be
    current: str  # what this environment makes it: the parsed value written back, or the raw text if invalid
    is_set: bool  # set here (an empty value counts as unset, except for MAAS_VIRTUAL_DEVICES)
    help: str
    error: str = ""  # why the value set here is refused; the fleet will not start with it

    @property
    def differs(self) -> bool:
        """Whether this environment changes the default (or breaks it)."""
        return bool(self.error) or self.current != self.default


def describe(environ: Mapping[str, str] | None = None) -> list[Variable]:
    """Every variable in ``FIELDS`` with its default and its value in ``environ``; never raises for a bad value.

    Checks that involve several variables are :meth:`Settings.validate`'s; call :meth:`Settings.from_env` for them.
    """
    env = os.environ if environ is None else environ
    found = []
    for f in fields(Settings):
        var, parse, show, mask = (f.metadata[k] for k in ("env", "parse", "show", "mask"))
        default = mask(show(_default_home(env) if f.name == "home" else f.default))
        raw = env.get(var)
        current, error = default, ""
        if _is_set(f.name, raw):
            try:
                current = mask(show(parse(raw)))
            except (ValueError, TypeError) as exc:
                current, error = mask(raw), str(exc)
        found.append(Variable(var, default, current, _is_set(f.name, raw), f.metadata["help"], error))
    return found
