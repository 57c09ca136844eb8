#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite. This is the README's test command.
# The feature-browser tests drive a real headless Chromium (Debian package `chromium`); as root on a
# Debian machine without it, this script installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
    >/dev/null 2>&1 || echo "warning: could not install chromium; the browser tests will be skipped" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@"
