#!/usr/bin/env bash
# A single-node Ray cluster on loopback for `ray job submit` (docs/training.md).
#
#   infra/ray/local_cluster.sh start [PORT]   # head on 127.0.0.1:PORT (default 6390), dashboard PORT+1
#   infra/ray/local_cluster.sh stop  [PORT]
#
# It keeps its own temp folder (/tmp/ray-clef-PORT), so it never becomes the cluster a bare
# `ray.init()` of someone else on a shared machine joins, and it is stopped by the PID of its
# `ray start --block` process (which tears down what it started) instead of `ray stop`, which
# would stop every Ray instance of the user on the machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT="${2:-6390}"
DASH=$((PORT + 1))
TMP="/tmp/ray-clef-${PORT}"
PIDFILE="${TMP}.pid"
RAY=".venv/bin/ray"
# Ray 2.60 heads use token authentication (~/.ray/auth_token); clients send the token only in
# token mode, so `ray job submit` needs RAY_AUTH_MODE=token too.
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 PATH="$PWD/.venv/bin:$PATH"

case "${1:-}" in
start)
  if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "already running (pid $(cat "$PIDFILE")): RAY_ADDRESS=http://127.0.0.1:${DASH}"; exit 0
  fi
  setsid "$RAY" start --head --block --port "$PORT" --node-ip-address 127.0.0.1 \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASH" --temp-dir "$TMP" \
    --ray-client-server-port $((PORT + 2)) --dashboard-agent-listen-port $((PORT + 3)) \
    --metrics-export-port $((PORT + 4)) --runtime-env-agent-port $((PORT + 5)) \
    --disable-usage-stats > "${TMP}.log" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 120); do
    if curl -s -o /dev/null "http://127.0.0.1:${DASH}/api/version"; then
      echo "Ray head up (pid $(cat "$PIDFILE")). Submit with:"
      echo "  RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:${DASH} --working-dir . -- python jobs/pretrain.py ..."
      exit 0
    fi
    sleep 1
  done
  echo "Ray head did not come up; see ${TMP}.log" >&2; exit 1 ;;
stop)
  [[ -f "$PIDFILE" ]] || { echo "not running"; exit 0; }
  PID="$(cat "$PIDFILE")"
  kill -TERM "$PID" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$PID" 2>/dev/null || break; sleep 1; done
  rm -f "$PIDFILE"; echo "stopped" ;;
*) echo "usage: $0 start|stop [PORT]" >&2; exit 2 ;;
esac
