"""``maas flower``: Flower on the fleet's broker, with authentication unless run for local use only."""

from __future__ import annotations

import os
import sys

from app.errors import ConfigError
from app.settings import Settings


def flower_command(settings: Settings, *, local: bool, port: int | None, address: str) -> tuple[list[str], dict]:
    """The argv and environment to exec; pure, so the authentication rule is unit-tested."""
    env = dict(os.environ)
    env.pop("FLOWER_BASIC_AUTH", None)
    if local:
        address = "127.0.0.1"  # no authentication, so reachable from this machine only
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    elif settings.flower_basic_auth:
        # Through the environment, not argv: a password on the command line shows in `ps`.
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    else:
        raise ConfigError(
            "MAAS_FLOWER_BASIC_AUTH is not set: Flower has no authentication of its own (CVE-2022-30034). "
            "Set MAAS_FLOWER_BASIC_AUTH=user:password, or run `maas flower --local` to bind to 127.0.0.1 only"
        )
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "app.flower_app:app",
        "flower",
        f"--port={port or settings.flower_port}",
        f"--address={address}",
    ]
    return argv, env


def run(settings: Settings, *, local: bool, port: int | None, address: str) -> int:
    argv, env = flower_command(settings, local=local, port=port, address=address)
    os.execvpe(argv[0], argv, env)
    return 0  # not reached
