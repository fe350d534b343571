#!/usr/bin/env bash
# Shared helpers for the launch scripts: wait until a vLLM server answers /health.
set -euo pipefail

wait_healthy() {  # wait_healthy PORT PID [TIMEOUT_S]
  local port="$1" pid="$2" timeout="${3:-900}" waited=0
  until curl -sf "http://127.0.0.1:${port}/health" >/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "vLLM on port ${port} (pid ${pid}) exited; see its log" >&2
      return 1
    fi
    if (( waited >= timeout )); then
      echo "vLLM on port ${port} not healthy after ${timeout}s" >&2
      return 1
    fi
    sleep 5
    waited=$((waited + 5))
  done
  echo "vLLM on port ${port} is up"
}
