#!/usr/bin/env bash
# Sets up the environment (idempotent) and runs the whole test suite, Ray and cluster tests included.
#
# Two test processes at a time (pytest-xdist, one test module per process at a time): most of the suite's
# time is Ray instances and clusters starting and trials waiting on them, so two modules side by side take
# about two thirds of the time one after the other on 2 cores. Tests marked `serial` (machine-wide memory
# thresholds, benchmarks that time themselves) then run alone. Arguments, if any, go to one plain pytest run
# instead (e.g. `bash scripts/test.sh tests/test_spec.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_browser.sh
export RAY_USAGE_STATS_ENABLED=0
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
status=0
.venv/bin/python -m pytest -n 2 --dist loadfile -m "not serial" || status=$?
.venv/bin/python -m pytest -m serial || status=$?
exit "$status"
