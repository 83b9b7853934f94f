"""Keep every core busy for a bounded time, to check that the test suite passes on a loaded machine.

    python scripts/cpu-hog.py --seconds 600 &      # one busy process per core (os.cpu_count())
    python scripts/cpu-hog.py --seconds 60 --cores 1

Each busy process spins at normal priority and stops by itself after ``--seconds`` (a deadline checked on every
pass of the loop, so it cannot overrun by more than a fraction of a second); the parent waits for them and exits.
Stopping the parent early (SIGTERM or SIGINT, e.g. ``kill <pid>``) stops its busy processes too. Nothing else is
touched: no files, no network. scripts/test-busy.sh runs the suite under it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sys
import time

#: The longest a hog may be asked to run: a forgotten one still ends within the hour.
MAX_SECONDS = 3600.0


def spin(deadline: float) -> None:
    """Busy-loop until ``deadline`` (time.monotonic()), doing arithmetic that the interpreter cannot skip."""
    # Forked after the parent set its handlers: a signal here simply ends this process.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    x = 0
    while time.monotonic() < deadline:
        for i in range(10_000):
            x = (x * 31 + i) % 1_000_003


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, required=True, help=f"how long to stay busy (at most {MAX_SECONDS:g})")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="busy processes (default: every core)")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS:g}], got {args.seconds:g}")
    if args.cores < 1:
        parser.error(f"--cores must be at least 1, got {args.cores}")

    deadline = time.monotonic() + args.seconds  # CLOCK_MONOTONIC is system-wide: the children share it
    procs = [mp.Process(target=spin, args=(deadline,), daemon=True) for _ in range(args.cores)]

    def stop(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(5)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.start()
    print(f"cpu-hog: pid {os.getpid()}, {args.cores} busy process(es) for {args.seconds:g}s", file=sys.stderr)
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()) + 5)
        if proc.is_alive():  # cannot happen unless the loop hung: never outlive the deadline by much
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
