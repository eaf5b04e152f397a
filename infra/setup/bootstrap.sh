#!/usr/bin/env bash
# Creates .venv/ at the repo root with the pinned platform dependencies.
# torch first, from its exact pin: pip then takes the local CPU wheel instead of a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
export DS_BUILD_OPS=0   # DeepSpeed: compile no op at install time
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# constraints.txt pins every transitive dependency to the set this project was tested with.
.venv/bin/python -m pip install --quiet -c infra/setup/constraints.txt -e '.[test]'
# The Redis online store's tests start a real redis-server on 127.0.0.1.
bash infra/setup/install_redis.sh
# The multi-host test bed's tools (iproute2, util-linux), where missing.
bash infra/setup/install_hostbed_tools.sh
# Local monitoring (jobs/monitor.py, promtool, the throughput page's headless check): Debian's
# prometheus and chromium, where missing.
bash infra/setup/install_monitoring_tools.sh
