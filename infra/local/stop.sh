#!/usr/bin/env bash
# Stop exactly what infra/local/start.sh started: for each pid file (worker first, S3 last) whose
# process is still the one recorded (same pid and start time), SIGTERM its process group, wait up to
# STOP_TIMEOUT s (20), then SIGKILL it. Stale pid files are removed; nothing else is signalled.
# State (SQLite databases, logs, runs) is kept; moto's in-memory S3 contents are lost.
# OPDLM_STOP_ONLY="mlflow s3" limits it to those services.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

only=" ${OPDLM_STOP_ONLY:-${SERVICES[*]}} "
timeout="${STOP_TIMEOUT:-20}"
status=0

for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
  name="${SERVICES[i]}"
  [[ "$only" == *" $name "* ]] || continue
  file="$(pid_file "$name")"
  [[ -f "$file" ]] || continue
  if ! pid="$(live_pid "$name")"; then
    echo "$name: not running (removing stale $file)"
    rm -f "$file"
    continue
  fi
  # The server leads its own process group (start.sh used setsid): end it with its children.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while live_pid "$name" >/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
  if live_pid "$name" >/dev/null; then
    echo "$name: still running after ${timeout} s; sending SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  # Children that outlived their leader still carry its process group id.
  if kill -0 -- "-$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  if live_pid "$name" >/dev/null; then
    echo "error: $name (pid $pid) did not stop" >&2
    status=1
  else
    echo "$name: stopped (pid $pid)"
    rm -f "$file"
  fi
done
exit "$status"
