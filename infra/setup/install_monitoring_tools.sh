#!/usr/bin/env bash
# Installs what local monitoring needs where it is missing: Debian's `prometheus` (the server and
# `promtool`, for jobs/monitor.py and the rules check) and `chromium` (headless, loads the
# throughput page in its test). Idempotent; called by the bootstrap, like install_redis.sh.
# The prometheus package starts no service in containers; jobs/monitor.py starts its own.
set -euo pipefail
missing=()
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
    echo "monitoring tools present: $(prometheus --version 2>&1 | head -1); $(chromium --version)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "monitoring: ${missing[*]} missing (needs root and apt-get): install with your package" \
         "manager; the monitoring tests will fail until then" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
prometheus --version 2>&1 | head -1
