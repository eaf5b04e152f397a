#!/usr/bin/env bash
# Installs what the multi-host test bed (infra/testbed) needs where it is missing: `ip` (iproute2)
# for namespaces, veths and the bridge; `unshare`/`nsenter` (util-linux) for private mounts and
# for entering a host. Idempotent; called by the bootstrap. Without root the bed tests skip anyway.
set -euo pipefail
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
{ command -v unshare >/dev/null 2>&1 && command -v nsenter >/dev/null 2>&1; } || missing+=(util-linux)
if [ ${#missing[@]} -eq 0 ]; then
    echo "test-bed tools present: $(ip -V)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "test bed: ${missing[*]} missing (needs root and apt-get); the multi-host tests will skip" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
