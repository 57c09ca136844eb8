"""Entrypoint for `ray job submit --working-dir . -- python jobs/train.py jobs/configs/NAME.yaml`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir holds the raysae package

from raysae.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
