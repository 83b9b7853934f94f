"""``python -m bench.failover``: what a lost host, a partition and a Redis failover cost, one JSON line each.

Each scenario is the multi-host test of the same name (``tests/multihost``), run on a fresh fleet of network
namespaces: the scenario is written once, and what it measures is checked (every request answered) each time it
runs. Each test prints one line ``{"scenario": ..., "sent", "answered", "twice", ...}`` and this collects them:

- ``host_lost``: every process of a host SIGKILLed mid-burst (``given_back``: requests it held, requeued at once);
- ``partition``: a host's link cut mid-burst, then restored after the fleet replaced it (``stale_after_return``:
  answers by the replaced replica after the link returned);
- ``host_lost`` also gives ``failed_s`` (the loss to the lost replica FAILED), ``replaced_s`` (to the model's
  replacement READY on the host left) and ``bound_s`` (heartbeat timeout + two allocation periods, as run);
- ``redis_failover``: the Redis primary (of a primary and two replicas) killed mid-burst and left dead, the
  Sentinels promote a replica (``promoted_s``; ``unreplicated_writes``: WAITs that timed out short of a replica).

``lost`` is sent minus answered; ``recovery_s`` runs from the fault to the last answer of the requests that were
waiting; ``serving_again_s`` (Redis failover) from the fault to the first answer of a request sent after it;
``bound_s`` (host loss) is the target computed from the settings the run used. With ``--repeat N`` (N > 1) a
``{"summary": ...}`` line per scenario follows: median, min and max of each figure over the runs. Needs root and
``ip netns`` (and redis-sentinel for the last), like the tests; where a test skips, its line says why.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

#: scenario -> the pytest runs that make it: (test file, -k selection, extra environment)
SCENARIOS: dict[str, list[tuple[str, str, dict[str, str]]]] = {
    "host_lost": [("tests/multihost/test_host_loss.py", "", {})],
    "partition": [("tests/multihost/test_partition.py", "", {})],
    # Without WAIT (what a failover may lose, measured) and with it (nothing lost), each in a fresh pytest.
    "redis_failover": [
        ("tests/multihost/test_failover.py", "no_wait", {"MAAS_FAILOVER_NO_WAIT": "1"}),
        ("tests/multihost/test_failover.py", "wait_1", {}),
    ],
}
ROOT = Path(__file__).resolve().parent.parent


def run_scenario(name: str, timeout_s: float) -> list[dict]:
    found: list[dict] = []
    for path, selection, extra_env in SCENARIOS[name]:
        found += _run_one(name, path, selection, extra_env, timeout_s)
    return found


def _run_one(name: str, path: str, selection: str, extra_env: dict[str, str], timeout_s: float) -> list[dict]:
    argv = [sys.executable, "-m", "pytest", path, "-q", "-s", "-rs", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*argv, *(["-k", selection] if selection else [])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **extra_env},
    )
    found = []
    for line in done.stdout.splitlines():
        if line.startswith('{"scenario"'):
            row = json.loads(line)
            row["lost"] = row["sent"] - row["answered"]
            found.append(row)
    if found:
        return found  # one line per run of the test (the Redis failover runs without and with WAIT)
    # pytest's own verdict lines ("E   ..." for the failing assertion or exception), not a traceback's source lines
    tail = [line for line in done.stdout.splitlines() if line.startswith(("E ", "SKIPPED", "FAILED"))]
    return [{"scenario": name, "error": tail[-1] if tail else f"pytest exited {done.returncode} without a result"}]


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
    rows: list[dict] = []
    for name in args.scenarios or list(SCENARIOS):
        for _ in range(args.repeat):
            for result in run_scenario(name, args.timeout):
                failed |= "error" in result
                rows.append(result)
                print(json.dumps(result), flush=True)
    if args.repeat > 1:
        for line in summarize(rows):
            print(json.dumps(line), flush=True)
    return 1 if failed else 0


#: the figures a summary line gives the median and spread of, where a scenario's rows have them
SUMMARIZED = (
    "recovery_s",
    "serving_again_s",
    "promoted_s",
    "failed_s",
    "replaced_s",
    "bound_s",
    "lost",
    "twice",
    "submit_p50_ms",
)


def summarize(rows: list[dict]) -> list[dict]:
    """One line per scenario over its runs: ``{"summary": name, "runs": n, "<figure>": {"median", "min", "max"}}``."""
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        if "error" not in row:
            by_name.setdefault(row["scenario"], []).append(row)
    found = []
    for name, runs in by_name.items():
        line: dict = {"summary": name, "runs": len(runs)}
        for key in SUMMARIZED:
            values = [run[key] for run in runs if key in run]
            if values:
                median = round(statistics.median(values), 2)
                line[key] = {"median": median, "min": min(values), "max": max(values)}
        found.append(line)
    return found


if __name__ == "__main__":
    sys.exit(main())
