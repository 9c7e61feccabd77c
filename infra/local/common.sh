# Shared settings and helpers of the local stack scripts (sourced by start.sh, stop.sh, status.sh).
#
# Every setting can be overridden from the environment:
#   OPDLM_STACK_DIR   state folder: pid files, logs, SQLite databases, stack.env  (infra/local/.state)
#   OPDLM_PYTHON      interpreter that has opdlm's [test] extra installed          (.venv/bin/python)
#   S3_PORT MLFLOW_PORT PREFECT_PORT WORKER_PORT                                    (9000 5000 4200 8585)
#   OPDLM_WORK_POOL   Prefect work pool the worker serves                           (opdlm-process)
#   OPDLM_ARTIFACT_BUCKET OPDLM_DATA_BUCKET  buckets created at start              (opdlm-artifacts opdlm-data)
#   OPDLM_RUNS_DIR    where flow runs write (passed to the worker)                 (<repo>/runs)
#   HEALTH_TIMEOUT    seconds each service may take to become healthy              (180)

LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$LOCAL_DIR/../.." && pwd)"
STATE="${OPDLM_STACK_DIR:-$LOCAL_DIR/.state}"
PYTHON="${OPDLM_PYTHON:-$REPO/.venv/bin/python}"
HOST=127.0.0.1
S3_PORT="${S3_PORT:-9000}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
WORKER_PORT="${WORKER_PORT:-8585}"
WORK_POOL="${OPDLM_WORK_POOL:-opdlm-process}"
ARTIFACT_BUCKET="${OPDLM_ARTIFACT_BUCKET:-opdlm-artifacts}"
DATA_BUCKET="${OPDLM_DATA_BUCKET:-opdlm-data}"
RUNS_DIR="${OPDLM_RUNS_DIR:-$REPO/runs}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-180}"

# Start order; stop.sh walks it backwards.
SERVICES=(s3 mlflow prefect worker)

health_url() {
  case "$1" in
    s3) echo "http://$HOST:$S3_PORT/" ;;  # moto answers ListBuckets without credentials
    mlflow) echo "http://$HOST:$MLFLOW_PORT/health" ;;
    prefect) echo "http://$HOST:$PREFECT_PORT/api/health" ;;
    worker) echo "http://$HOST:$WORKER_PORT/health" ;;
  esac
}

service_port() {
  case "$1" in
    s3) echo "$S3_PORT" ;; mlflow) echo "$MLFLOW_PORT" ;; prefect) echo "$PREFECT_PORT" ;; worker) echo "$WORKER_PORT" ;;
  esac
}

pid_file() { echo "$STATE/pids/$1.pid"; }
log_file() { echo "$STATE/logs/$1.log"; }

# Start time of a live process in clock ticks since boot (field 22 of /proc/PID/stat): a pid file records it
# so that a pid reused by an unrelated process after a reboot or crash is never signalled.
proc_start_time() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"  # drop "pid (comm) ", comm may contain spaces
  # shellcheck disable=SC2086
  set -- $stat
  [[ "$1" != Z ]] || return 1  # a zombie has exited; only its parent has not collected it yet
  echo "${20}"
}

# Prints the pid recorded for SERVICE when that very process is still alive; fails otherwise.
live_pid() {
  local file pid started now
  file="$(pid_file "$1")"
  [[ -f "$file" ]] || return 1
  read -r pid started <"$file" || return 1
  [[ -n "$pid" && -n "$started" ]] || return 1
  now="$(proc_start_time "$pid")" || return 1
  [[ "$now" == "$started" ]] || return 1
  echo "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# An HTTP 2xx from the service's health URL (Python's urllib: nothing to install beyond the venv).
is_healthy() {
  "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$(health_url "$1")" \
    >/dev/null 2>&1
}
