#!/usr/bin/env bash
# Sets up (or refreshes) the project's virtual environment in .venv with everything the project and its
# tests need. Idempotent: a second run with an unchanged pyproject.toml installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.nas-service-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch/torchvision first, pinned to the files on this disk so pip never fetches a multi-GB CUDA build.
    .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" \
        || .venv/bin/python -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
    .venv/bin/python -m pip install --quiet -e ".[test]"
    echo "$want" > "$stamp"
fi
