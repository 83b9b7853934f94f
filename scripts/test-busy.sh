#!/usr/bin/env bash
# Run the test suite N times while every core is kept busy, to catch waits that only pass on an idle machine.
#
#   bash scripts/test-busy.sh            # `make test` 3 times under scripts/cpu-hog.py
#   bash scripts/test-busy.sh 5          # 5 times
#   TEST_CMD="python -m pytest tests/integration/test_queues.py" bash scripts/test-busy.sh 2
#
# Environment: TEST_CMD (default `make test`), PYTHON (runs the hog; default python3), HOG_SECONDS (how long the
# hog may run at most; default 3600, its own cap). The hog is started once, stopped by its pid when the runs end
# (or on Ctrl-C / exit), and stops by itself after HOG_SECONDS anyway. Each run's wall time and exit status are
# printed; the script exits non-zero if any run failed.
set -uo pipefail

runs="${1:-3}"
if ! [[ "$runs" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [RUNS]  (a positive number; default 3)" >&2
  exit 2
fi
test_cmd="${TEST_CMD:-make test}"
python="${PYTHON:-python3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

"$python" "$here/cpu-hog.py" --seconds "${HOG_SECONDS:-3600}" &
hog=$!
stop_hog() {
  if kill -0 "$hog" 2>/dev/null; then
    kill "$hog" 2>/dev/null
    wait "$hog" 2>/dev/null
  fi
}
trap stop_hog EXIT
trap 'exit 130' INT TERM

failed=0
summary=()
for i in $(seq 1 "$runs"); do
  echo "=== test-busy: run $i of $runs: $test_cmd (cores busy: pid $hog)"
  start=$SECONDS
  bash -c "$test_cmd"
  status=$?
  took=$((SECONDS - start))
  summary+=("run $i: exit $status in ${took}s")
  [ "$status" -eq 0 ] || failed=1
  if ! kill -0 "$hog" 2>/dev/null; then
    echo "=== test-busy: the hog ended (HOG_SECONDS=${HOG_SECONDS:-3600} ran out?): later runs are not under load" >&2
  fi
done
stop_hog
printf '=== test-busy: %s\n' "${summary[@]}"
exit "$failed"
