"""``python -m bench.failover``: what a lost host, a partition and a Redis failover cost, one JSON line each.

Each scenario is the multi-host test of the same name (``tests/multihost``), run on a fresh fleet of network
namespaces: the scenario is written once, and what it measures is checked (every request answered) each time it
runs. Each test prints one line ``{"scenario": ..., "sent", "answered", "twice", ...}`` and this collects them:

- ``host_lost``: every process of a host SIGKILLed mid-burst (``given_back``: requests it held, requeued at once);
- ``partition``: a host's link cut mid-burst, then restored after the fleet replaced it (``stale_after_return``:
  answers by the replaced replica after the link returned);
- ``redis_failover``: the Redis primary killed mid-burst, the Sentinels promote the replica
  (``promoted_s``; ``unreplicated_writes``: WAITs that timed out while the new primary had no replica).

``lost`` is sent minus answered; ``recovery_s`` runs from the fault to the last answer. Needs root and
``ip netns`` (and redis-sentinel for the last), like the tests; where a test skips, its line says why.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SCENARIOS = {
    "host_lost": "tests/multihost/test_host_loss.py",
    "partition": "tests/multihost/test_partition.py",
    "redis_failover": "tests/multihost/test_failover.py",
}
ROOT = Path(__file__).resolve().parent.parent


def run_scenario(name: str, timeout_s: float) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", SCENARIOS[name], "-q", "-s", "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    for line in done.stdout.splitlines():
        if line.startswith('{"scenario"'):
            found = json.loads(line)
            found["lost"] = found["sent"] - found["answered"]
            return found
    tail = [line for line in done.stdout.splitlines() if "SKIPPED" in line or "FAILED" in line or "Error" in line]
    return {"scenario": name, "error": tail[-1] if tail else f"pytest exited {done.returncode} without a result"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)}; default: all three")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    failed = False
    for name in args.scenarios or list(SCENARIOS):
        for _ in range(args.repeat):
            result = run_scenario(name, args.timeout)
            failed |= "error" in result
            print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
