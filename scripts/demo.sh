#!/usr/bin/env bash
# Install (scripts/setup.sh) and run the main job: the quick benchmark preset
# (a real table of several mixers on two tasks, a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/wersa bench --preset quick --out runs/quick "$@"
.venv/bin/wersa report runs/quick
