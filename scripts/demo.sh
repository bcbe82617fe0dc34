#!/usr/bin/env bash
# Install (scripts/setup.sh) and run the main job: the quick benchmark preset
# (a real table of several mixers on two tasks, a few minutes on 2 CPU cores).
# The results file, its Markdown/CSV tables and PNG plots land in runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/wersa bench --preset quick --out runs/quick.jsonl --report-dir runs/quick-report "$@"
echo "report: runs/quick-report/report.md (it opens with how to read it and any warnings)"
