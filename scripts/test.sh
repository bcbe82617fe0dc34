#!/usr/bin/env bash
# Install (scripts/setup.sh) and run the test suite plus the independent contract check.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow` for the long checks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# pytest exits 5 when it collects no tests: that is a failure here too (set -e).
.venv/bin/python -m pytest -q "$@"
if [ -f ../shared/checks/contract_check.py ]; then
    .venv/bin/python ../shared/checks/contract_check.py | tail -n 1
fi
