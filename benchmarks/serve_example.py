"""The README's HTTP example, run as printed: serve the registered tiny model and post held-out suite rows.

Starts the exact line ``summary.md`` prints (:func:`opdlm.pipeline.serving.serve_command`: ``mlflow
models serve ... --env-manager local`` with the run's registry and this venv's ``bin`` on PATH) from a
shell whose PATH lacks the venv, posts the README's request (four held-out rows of the synthetic suite,
one per family), prints the ``curl`` line and the JSON the server returned (what the README shows),
scores each answer, and stops the server. Needs a registered model: run ``make run`` first.

    python benchmarks/serve_example.py [--runs runs] [--model opdlm-tiny] [--alias candidate] [--port 5001]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opdlm.data.synthetic import extract_answer, is_correct  # noqa: E402
from opdlm.pipeline.serving import CANDIDATE, DEFAULT_PORT, serve_command  # noqa: E402

# held-out rows of the suite (opdlm.data.synthetic.split_of puts each in the eval split), one per family
ROWS = {
    "Compute 3+4+5+6+9.": "27",
    "Sort the digits 5 7 6 9 0.": "05679",
    "Reverse the digits 4 9 0 1 8 6.": "681094",
    "Let n=8, l=n-1, x=l+8. Find x.": "15",
}
PARAMS = {"max_new_tokens": 64}
START_TIMEOUT_S = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="The runs folder holding mlruns.db.")
    parser.add_argument("--model", default="opdlm-tiny")
    parser.add_argument("--alias", default=CANDIDATE)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args()
    db = args.runs.resolve() / "mlruns.db"
    if not db.is_file():
        sys.exit(f"error: {db} not found: run `make run` first")
    venv_bin = str(Path(sys.executable).parent)
    line = serve_command(args.model, args.alias, port=args.port, tracking_uri=f"sqlite:///{db}", venv_bin=venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    print(f"$ {line}", flush=True)
    server = subprocess.Popen(
        ["bash", "-c", line], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("error: mlflow models serve did not come up (run the line above by hand to see why)")
                time.sleep(1)
        body = {"inputs": {"prompt": list(ROWS)}, "params": PARAMS}
        print(
            f"$ curl -s {base}/invocations -H 'Content-Type: application/json' \\\n  -d '{json.dumps(body)}'",
            flush=True,
        )
        request = urllib.request.Request(
            f"{base}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=600) as resp:
            reply = json.loads(resp.read())
        print(json.dumps(reply, ensure_ascii=False))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    rows = reply["predictions"]
    correct = 0
    for (prompt, answer), row in zip(ROWS.items(), rows):
        ok = is_correct(row["text"], answer)
        correct += ok
        print(
            f"{prompt!r}: answered {extract_answer(row['text'])!r}, expected {answer!r} ({'right' if ok else 'wrong'})"
        )
    mean_rate = sum(r["tokens_per_step"] for r in rows) / len(rows)
    print(f"serve_example: {correct}/{len(rows)} right, {mean_rate:.2f} tokens/step (target: {len(rows)}/{len(rows)})")


if __name__ == "__main__":
    main()
