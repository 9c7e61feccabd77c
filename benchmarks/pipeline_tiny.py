"""The README's main command, measured: the whole tiny pipeline from nothing, once.

Runs ``opdlm pipeline --recipe configs/tiny.yaml`` (builtin data -> bootstrapped tiny teacher ->
convert -> curriculum OPD -> eval -> register) in a fresh runs folder, with fresh Prefect and model
caches, so nothing is reused, and reports wall time, student and teacher accuracy on the synthetic
suite, retention, the student's tokens per step and how many log lines the Prefect flow run stored
(read back through the Prefect API). Targets (README): under 10 minutes on 2 CPU cores, retention
>= 0.90 at > 1.5 tokens per step, under 300 stored log lines.

    python benchmarks/pipeline_tiny.py [--keep DIR] [key=value overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Counts a flow run's stored logs (tasks included) on the same Prefect database, in a process of its own.
COUNT_LOGS = """
import sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
found, page = 0, 200
with get_client(sync_client=True) as client:
    while True:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[sys.argv[1]])), limit=page, offset=found)
        found += len(logs)
        if len(logs) < page:
            break
print(found)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="Use (and keep) this folder instead of a temporary one.")
    parser.add_argument("overrides", nargs="*", help="Recipe overrides (default: none, the shipped recipe).")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="opdlm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OPDLM_RUNS_DIR": str(work / "runs"),
        "OPDLM_CACHE": str(work / "cache"),
        "PREFECT_HOME": str(work / "prefect"),
        "HF_HUB_OFFLINE": "1",
        "DO_NOT_TRACK": "true",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    cmd = [
        sys.executable,
        "-m",
        "opdlm.cli.main",
        "pipeline",
        "--recipe",
        str(ROOT / "configs" / "tiny.yaml"),
        *args.overrides,
    ]
    print(f"$ {' '.join(cmd)}\n  (runs folder {work / 'runs'}, {os.cpu_count()} CPU cores)", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    minutes = (time.perf_counter() - start) / 60
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
        sys.exit(f"pipeline failed with exit code {proc.returncode}")
    summary = json.loads(max((work / "runs").glob("*/*/summary.json"), key=lambda p: p.stat().st_mtime).read_text())
    m = summary["metrics"]["synthetic"]
    print(proc.stdout.strip())
    print(
        f"student accuracy {m['student_accuracy']:.3f}, teacher accuracy {m['teacher_accuracy']:.3f} "
        f"on {m['n']} held-out synthetic rows"
    )
    retention = m["retention"]
    print(f"retention {retention if retention is None else round(retention, 3)} (target: >= 0.90)")
    print(f"student tokens per step {m['student_tokens_per_step']:.2f} (target: > 1.5)")
    print(
        f"training tokens {summary['training_tokens']}, rollout steps {summary['rollout_steps']}, "
        f"registered {summary['model_name']} v{summary['model_version']} {summary['aliases']}"
    )
    counted = subprocess.run(
        [sys.executable, "-c", COUNT_LOGS, summary["flow_run_id"]], env=env, capture_output=True, text=True
    )
    lines = (
        counted.stdout.strip().splitlines()[-1] if counted.returncode == 0 else f"not read ({counted.stderr[-300:]})"
    )
    print(
        f"prefect stored log lines {lines} (target: < 300); console lines "
        f"{len(proc.stdout.splitlines()) + len(proc.stderr.splitlines())}"
    )
    print(f"pipeline_tiny_minutes: {minutes:.2f} (target: < 10)")


if __name__ == "__main__":
    main()
