#!/usr/bin/env bash
# The main job: a complete local federation on the bundled digits data. A private
# Mosquitto (auth + ACL), the coordinator and 8 agents (2 of them 5x slower) run as separate
# processes; progress is live, and results/local/ receives results.json and accuracy.png.
# Options go to `fedmq-coordinator local` (e.g. --strategy fedavg --codec int4 --agents 4).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec "${FEDMQ_VENV:-.venv}/bin/python" -m coordinator local "$@"
