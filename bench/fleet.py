"""A real single-host fleet for benchmarks: Redis, an embedded database, and worker processes."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.servers import Proc, Server, free_port, start_redis, wait_for


class BenchFleet:
    def __init__(self, **env: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="maas-bench-"))
        self.redis: Server = start_redis(self.workdir / "redis")
        self.env = {
            "REDIS_URL": self.redis.url,
            "MAAS_HOME": str(self.workdir / "home"),
            "MAAS_VIRTUAL_DEVICES": "2x4GiB",
            **env,
        }
        self.procs: list[Proc] = []
        from app.client import Client
        from app.db.migrate import ensure_current
        from app.settings import Settings

        self.settings = Settings.from_env(self.env)
        ensure_current(self.settings.sqlalchemy_url)
        self.client = Client(self.settings)

    def _start(self, name: str, args: list[str], ready_event: str, env: dict[str, str]) -> Proc:
        """Start ``maas ARGS`` and wait for its log to show ``ready_event``; raise with its log if it exits."""
        proc = Proc(name, [sys.executable, "-m", "app.cli", *args], {**os.environ, **self.env, **env}, self.workdir)
        self.procs.append(proc)
        wait_for(lambda: ready_event in proc.log() or not proc.alive(), 90, f"{name} to start")
        if not proc.alive():
            raise RuntimeError(proc.log()[-2000:])
        return proc

    def worker(self, device: int, name: str) -> Proc:
        return self._start(name, ["worker", "--device", str(device)], "worker_ready", {"MAAS_WORKER_NAME": name})

    def gateway(self, **env: str) -> str:
        """``maas serve`` on a free loopback port; returns its base URL."""
        port = free_port()
        argv = ["serve", "--host", "127.0.0.1", "--port", str(port)]
        self._start("gateway", argv, "gateway_ready", dict(env))
        return f"http://127.0.0.1:{port}"

    def controller(self) -> Proc:
        return self._start("controller", ["controller"], "controller_ready", {})

    def beat(self) -> Proc:
        argv = [sys.executable, "-m", "app.cli", "beat"]
        proc = Proc("beat", argv, {**os.environ, **self.env}, self.workdir)
        self.procs.append(proc)
        return proc

    def register(self, name: str, path: Path, **kw: Any) -> None:
        from app import registry
        from app.artifacts import LocalArtifactStore
        from app.db.session import session_scope

        store = LocalArtifactStore(self.settings.artifact_dir, self.settings.max_artifact_bytes)
        with session_scope(self.settings.sqlalchemy_url) as session:
            registry.register(session, store, name, path, **kw)

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.redis.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> BenchFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
