#!/usr/bin/env bash
# Start the local stack without Docker, every server on 127.0.0.1:
#   s3       moto_server (S3-compatible, in memory); buckets created at start
#   mlflow   MLflow tracking + registry on SQLite, artifacts in s3://$OPDLM_ARTIFACT_BUCKET/mlflow
#   prefect  Prefect server (API + UI) on SQLite
#   worker   Prefect process worker serving work pool $OPDLM_WORK_POOL
# Each process runs in its own session; its pid and start time go to $STATE/pids/<name>.pid and its
# output to $STATE/logs/<name>.log. Waits for each health check (HEALTH_TIMEOUT s) and fails clearly;
# on failure it stops what this invocation started. Re-running skips services already running.
# Clients source $STATE/stack.env. Settings: see common.sh. Installs nothing.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

die() { echo "error: $*" >&2; exit 1; }

[[ -x "$PYTHON" ]] || die "no Python at $PYTHON (run 'make setup' or set OPDLM_PYTHON)"
"$PYTHON" -c "import prefect, mlflow, moto, boto3" 2>/dev/null \
  || die "$PYTHON lacks prefect/mlflow/moto/boto3 (install opdlm with its [test] extra: 'make setup')"
command -v setsid >/dev/null || die "setsid (util-linux) is needed to track each server's process group"

mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/prefect" "$RUNS_DIR"
STATE="$(cd "$STATE" && pwd)"

# What every server and every client of the stack sees (the worker passes it on to flow runs).
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export DO_NOT_TRACK=true PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
export PREFECT_HOME="$STATE/prefect"
# prefect.yaml's pull step runs each flow from $OPDLM_REPO_DIR, resolved in the worker's environment.
export OPDLM_REPO_DIR="${OPDLM_REPO_DIR:-$REPO}"

cat >"$STATE/stack.env" <<EOF
# Written by infra/local/start.sh: 'source' it to talk to the local stack.
export PREFECT_API_URL=http://$HOST:$PREFECT_PORT/api
export MLFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT
export MLFLOW_S3_ENDPOINT_URL=http://$HOST:$S3_PORT
export AWS_ENDPOINT_URL_S3=http://$HOST:$S3_PORT
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION
export OPDLM_ARTIFACT_ROOT=s3://$ARTIFACT_BUCKET/mlflow
export OPDLM_DATA_BUCKET=$DATA_BUCKET
export OPDLM_RUNS_DIR=$RUNS_DIR
export OPDLM_STACK_DIR=$STATE
export OPDLM_REPO_DIR=$OPDLM_REPO_DIR
EOF
chmod 600 "$STATE/stack.env"
# shellcheck disable=SC1091
source "$STATE/stack.env"

STARTED=()

on_failure() {
  local name="$1" why="$2" log
  log="$(log_file "$name")"
  echo "error: $name $why; last lines of $log:" >&2
  tail -n 25 "$log" >&2 || true
  if ((${#STARTED[@]})); then
    echo "stopping what this start launched: ${STARTED[*]}" >&2
    OPDLM_STOP_ONLY="${STARTED[*]}" bash "$LOCAL_DIR/stop.sh" >&2 || true
  fi
  exit 1
}

# launch NAME COMMAND... : start in a new session and record pid + start time (no-op when running).
launch() {
  local name="$1" port pid
  shift
  if pid="$(live_pid "$name")"; then
    echo "$name: already running (pid $pid)"
    return 0
  fi
  rm -f "$(pid_file "$name")"
  port="$(service_port "$name")"
  if port_in_use "$port"; then
    on_failure "$name" "cannot start: port $port on $HOST is taken by another program (set ${name^^}_PORT)"
  fi
  # setsid: the server leads its own process group, so stop.sh can end it with all its children.
  (cd "$REPO" && exec setsid "$@" >"$(log_file "$name")" 2>&1 </dev/null) &
  pid=$!
  echo "$pid $(proc_start_time "$pid")" >"$(pid_file "$name")"
  STARTED+=("$name")
}

# wait_healthy NAME : poll its health URL until it answers, it dies, or HEALTH_TIMEOUT passes.
wait_healthy() {
  local name="$1" pid deadline=$((SECONDS + HEALTH_TIMEOUT))
  until is_healthy "$name"; do
    pid="$(live_pid "$name")" || on_failure "$name" "exited during start-up"
    ((SECONDS < deadline)) || on_failure "$name" "not healthy at $(health_url "$name") after ${HEALTH_TIMEOUT} s"
    sleep 1
  done
  echo "$name: healthy at $(health_url "$name") (pid $(live_pid "$name"))"
}

launch s3 "$PYTHON" -m moto.server -H "$HOST" -p "$S3_PORT"
wait_healthy s3
"$PYTHON" "$LOCAL_DIR/../scripts/create_buckets.py" "$ARTIFACT_BUCKET" "$DATA_BUCKET" \
  || on_failure s3 "refused to create the buckets"

# MLflow and the Prefect server do not depend on each other: start both, then wait for both.
# MLflow's job runner (GenAI jobs, 7 huey processes) is not used by the pipeline: off unless asked for.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
  launch mlflow "$PYTHON" -m mlflow server --host "$HOST" --port "$MLFLOW_PORT" --workers "${MLFLOW_WORKERS:-1}" \
  --backend-store-uri "sqlite:///$STATE/mlflow.db" --artifacts-destination "s3://$ARTIFACT_BUCKET/mlflow"
launch prefect "$PYTHON" -m prefect server start --host "$HOST" --port "$PREFECT_PORT"
wait_healthy mlflow
wait_healthy prefect

PREFECT_WORKER_WEBSERVER_HOST="$HOST" PREFECT_WORKER_WEBSERVER_PORT="$WORKER_PORT" \
  launch worker "$PYTHON" -m prefect worker start --pool "$WORK_POOL" --type process \
  --name "opdlm-local-$(hostname -s)" --with-healthcheck
wait_healthy worker

echo "local stack up; state in $STATE"
echo "  source $STATE/stack.env    # PREFECT_API_URL, MLFLOW_TRACKING_URI, S3 endpoint and buckets"
echo "  Prefect UI: http://$HOST:$PREFECT_PORT   MLflow UI: http://$HOST:$MLFLOW_PORT"
