#!/usr/bin/env bash
# Show each local-stack service: pid, health, URL. Exit 0 only when every service is running and healthy.
set -uo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

status=0
for name in "${SERVICES[@]}"; do
  if pid="$(live_pid "$name")"; then
    if is_healthy "$name"; then
      state="healthy"
    else
      state="UNHEALTHY"
      status=1
    fi
    printf '%-8s pid %-8s %-10s %s\n' "$name" "$pid" "$state" "$(health_url "$name")"
  else
    printf '%-8s %-12s %-10s %s\n' "$name" "-" "stopped" "$(health_url "$name")"
    status=1
  fi
done
echo "state: $STATE"
exit "$status"
