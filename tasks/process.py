"""Running a long job (training, the teacher bootstrap) as a subprocess of a task.

A task timeout or cancellation cannot interrupt in-process training, and multi-GPU launchers need a
process of their own anyway. The job's output goes to the task's log; ``on_poll`` (the training
task's :class:`~opdlm.pipeline.training_metrics.MetricReplay`) runs every few seconds while it runs
and once when it has ended, so metrics reach the tracking service live.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from opdlm.errors import OpdlmError

POLL_SECONDS = 2.0


class ProcessCrashed(RuntimeError):
    """A job process died (signal, out of memory, a bug): worth a retry, which resumes."""


def run_streaming(
    cmd: list[str],
    env: dict,
    logger,
    *,
    name: str,
    on_poll: Callable[[], object] | None = None,
) -> None:
    """Run ``cmd`` with its output in the task's log, calling ``on_poll()`` every
    :data:`POLL_SECONDS` while it runs and once after it exits (whatever its exit code).

    Raises:
        OpdlmError: the process exited with code 2 (an ``opdlm`` user error: its ``error:`` line is quoted).
        ProcessCrashed: any other non-zero exit.
    """
    tail: collections.deque[str] = collections.deque(maxlen=30)
    # A pipe is no terminal: Hugging Face's bars (loading weights, writing shards) would store one line
    # per refresh; opdlm's own loops report through opdlm.progress, a line every ~10% or ~30 s.
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", **env}
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: cancelling the task stops torchrun's ranks too
    )

    def pump() -> None:
        for line in proc.stdout:
            if line.strip():  # a library's carriage-return refreshes arrive as blank lines: not worth storing
                tail.append(line.rstrip())
                logger.info(line.rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        while True:
            done = proc.poll() is not None
            if on_poll is not None:
                on_poll()  # after exit too: the lines the process wrote since the last poll
            if done:
                break
            time.sleep(POLL_SECONDS)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        reader.join(timeout=10)
    if proc.returncode == 2:
        errors = [ln for ln in tail if ln.startswith("error:")]
        raise OpdlmError(f"{name}: " + (errors[-1][len("error:") :].strip() if errors else "failed with exit code 2"))
    if proc.returncode != 0:
        shown = "\n".join(list(tail)[-10:])
        raise ProcessCrashed(f"{name} process exited with code {proc.returncode}; last output:\n{shown}")
