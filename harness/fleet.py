"""Real fleet processes for integration tests: workers (and beat, Flower) as subprocesses with their own logs.

Waiting: never sleep for a fixed time and hope. ``wait_for`` polls the condition the test needs, with a deadline
generous enough for a busy 2-core machine (the suite must pass under ``scripts/test-busy.sh``) yet bounded, so a
real failure still ends the test; ``wait_past`` waits for the clock itself (a deadline that must have passed).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from harness.servers import Proc, free_port, wait_for

__all__ = ["Fleet", "Proc", "free_port", "wait_for", "wait_past"]


def wait_past(at: float, margin_s: float = 0.05) -> None:
    """Return once the wall clock (``time.time()``, as deadlines are stamped) is past ``at`` by ``margin_s``."""
    while (left := at + margin_s - time.time()) > 0:
        time.sleep(min(left, 0.1))


class Fleet:
    """Starts and tears down the processes of one test."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs: list[Proc] = []

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        env = {**os.environ, **self.env, **(extra_env or {})}
        proc = Proc(name, [sys.executable, "-m", "app.cli", *args], env, self.logdir)
        self.procs.append(proc)
        return proc

    def worker(self, device: int, name: str, wait: bool = True, **extra_env: str) -> Proc:
        proc = self._spawn(name, ["worker", "--device", str(device)], {"MAAS_WORKER_NAME": name, **extra_env})
        if wait:
            self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: Proc, timeout_s: float = 120) -> None:
        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.log()[-3000:]}")
            return f"{proc.name} ready." in proc.log()

        wait_for(ready, timeout_s, f"{proc.name} to be ready")

    def controller(self, name: str = "ctl@test") -> Proc:
        proc = self._spawn(name, ["controller"], {"MAAS_WORKER_NAME": name})
        self.wait_ready(proc)
        return proc

    def gateway(self, name: str = "gateway", port: int | None = None, **extra_env: str) -> tuple[Proc, str]:
        """``maas serve`` on a free loopback port; returns the process and its base URL once it answers."""
        port = port or free_port()
        proc = self._spawn(name, ["serve", "--host", "127.0.0.1", "--port", str(port)], extra_env)

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{name} exited early:\n{proc.log()[-3000:]}")
            return "gateway_ready" in proc.log()

        wait_for(ready, 60, f"{name} to be ready")
        return proc, f"http://127.0.0.1:{port}"

    def beat(self) -> Proc:
        return self._spawn("beat", ["beat"])

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log()[-4000:]}" for p in self.procs)
