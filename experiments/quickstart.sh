#!/usr/bin/env bash
# The main job: set up, meta-train MAML on sinusoid regression (about a minute on 2 CPU cores),
# then evaluate adaptation on 600 held-out tasks, print the table and write the plots.
set -euo pipefail
cd "$(dirname "$0")/.."
bash experiments/setup.sh
run=runs/quickstart-$(date +%Y%m%d-%H%M%S)
.venv/bin/rlmaml train experiments/sinusoid_quick.yaml --run-dir "$run"
.venv/bin/rlmaml evaluate "$run"
