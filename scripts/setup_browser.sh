#!/usr/bin/env bash
# Installs Debian's Chromium when no Chromium is on the PATH: the report-page test drives it headless
# through Playwright (pip's playwright brings the driver, not a browser; its own browser download cannot
# reach the network here). Idempotent; needs root or password-less sudo for apt-get.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || [ -n "${CHROMIUM:-}" ]; then
    exit 0
fi
echo "setup_browser: installing Debian's chromium for tests/test_report_browser.py" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
