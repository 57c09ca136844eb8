#!/usr/bin/env bash
# The README's main job: set up (if needed), then train and evaluate a dictionary on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} WANDB_MODE=${WANDB_MODE:-offline}
exec .venv/bin/raysae quickstart "$@"
