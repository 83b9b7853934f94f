"""``python -m bench.idle_logs``: log bytes an idle fleet writes per minute, per process (beat, controller, worker).

An idle fleet should be quiet: beat sends a task every aging period and the controller runs it, and neither may
write a line for each. Starts a worker (no system tasks), a controller and beat with no traffic, lets them settle,
then counts the bytes each log grows by over ``--seconds``. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from bench.fleet import BenchFleet
from harness.servers import wait_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_logs", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to measure (default 60)")
    parser.add_argument("--settle-s", type=float, default=10.0, help="time given to start-up first (default 10)")
    args = parser.parse_args(argv)
    with BenchFleet(MAAS_WORKER_SYSTEM_TASKS="false", MAAS_LOG_FORMAT="json") as fleet:
        procs = [fleet.worker(0, "w0@idle"), fleet.controller(), fleet.beat()]
        started = time.monotonic()
        wait_for(lambda: time.monotonic() - started >= args.settle_s, args.settle_s + 5, "start-up to settle")
        before = {p.name: p.log_path.stat().st_size for p in procs}
        begun = time.monotonic()
        wait_for(lambda: time.monotonic() - begun >= args.seconds, args.seconds + 5, "the idle period", interval_s=0.5)
        grown = {p.name: p.log_path.stat().st_size - before[p.name] for p in procs}
    per_min = {name: round(n * 60 / args.seconds) for name, n in grown.items()}
    print(json.dumps({"bench": "idle_logs", "seconds": args.seconds, "log_bytes_per_min": per_min}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
