"""``python -m bench.chaos``: each fault of harness/chaos.py under steady traffic, one JSON line per fault.

A line: ``{"fault", "sent", "answered", "answered_twice", "lost", "typed_errors", "recovery_s", ...}`` and what the
fault adds (``reload_s`` after a worker killed mid-load, ``db_back_s`` after the database outage, ...). ``lost``
counts accepted requests never answered; ``recovery_s`` is the time from the fault until every request in flight
at it is answered and no later one waits longer than harness.chaos.SLOW_S. The same runs the chaos tests assert.
"""

from __future__ import annotations

import argparse
import json
import sys

from harness import chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fault", action="append", choices=chaos.FAULTS, help="run only this fault (repeatable; default: all)"
    )
    parser.add_argument(
        "--postgres-outage-s",
        type=float,
        default=chaos.POSTGRES_OUTAGE_S,
        help=f"how long the database stays stopped (default {chaos.POSTGRES_OUTAGE_S:g})",
    )
    args = parser.parse_args(argv)
    failed = 0
    for fault in args.fault or chaos.FAULTS:
        with chaos.rig() as r:
            try:
                if fault == "postgres_stop":
                    outcome = chaos.postgres_stop(r, outage_s=args.postgres_outage_s)
                else:
                    outcome = chaos.RUNNERS[fault](r)
            except Exception as exc:
                print(json.dumps({"fault": fault, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
                failed += 1
                continue
        print(json.dumps(outcome.line()), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
