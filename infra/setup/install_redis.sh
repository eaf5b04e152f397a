#!/usr/bin/env bash
# Installs redis-server (the Redis online store's test and benchmark backend) where it is missing.
# Idempotent: does nothing when a redis-server binary is already on PATH. Called by the bootstrap.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    echo "redis-server present: $(redis-server --version)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "redis-server missing and not root (no sudo): install it with your package manager" >&2
        exit 1
    fi
fi
if command -v apt-get >/dev/null 2>&1; then
    # The Debian package starts no service in containers; tests start their own on 127.0.0.1.
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server
elif command -v brew >/dev/null 2>&1; then
    brew install redis
else
    echo "redis-server missing and no apt-get/brew here: install Redis >= 6 by hand" >&2
    exit 1
fi
redis-server --version
