#!/usr/bin/env bash
# Sets up the environment (idempotent) and runs the main job on the embedded digits data: the
# quickstart experiment on a local Ray instance (127.0.0.1 only), then its report. Rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/nas-service run examples/quickstart.yaml "$@"
