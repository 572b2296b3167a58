#!/usr/bin/env bash
# Create .venv with rlmaml and its test tools. Needs only Python >= 3.11 on the machine.
# torch is pinned first to the CPU build: left unpinned, pip picks a multi-GB CUDA build.
# On a GPU machine, install the torch build for your CUDA version first; it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
