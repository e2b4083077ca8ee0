#!/usr/bin/env bash
# Sets up the environment (idempotent) and runs the whole test suite, Ray and cluster tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_browser.sh
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest "$@"
