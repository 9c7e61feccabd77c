"""The code-execution sandbox: hostile programs fail safely within their limits and the run carries on.

Needs bubblewrap (``apt-get install bubblewrap``; CI installs it). Without it these tests are skipped
and one test checks that code execution is refused rather than run unconfined.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from opdlm.eval.sandbox import SandboxLimits, SandboxUnavailableError, check_sandbox, run_program, run_programs


def _sandbox_works() -> bool:
    try:
        return check_sandbox(False)
    except SandboxUnavailableError:
        return False


needs_bwrap = pytest.mark.skipif(not _sandbox_works(), reason="bubblewrap sandbox not available here")

LIMITS = SandboxLimits(timeout_s=3.0, memory_bytes=512 * 1024**2, max_processes=16, file_size_bytes=1024**2)
# A unique argument lets us find (and prove the absence of) processes the program tried to leave behind.
MARKER = "987123"


def _processes_with(arg: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if arg in line and "ps -eo" not in line]


@needs_bwrap
def test_a_plain_program_passes_and_its_output_is_kept():
    result = run_program("print(6 * 7)\n", LIMITS)
    assert result.passed and result.status == "passed" and result.sandboxed
    assert result.stdout_tail.strip() == "42"
    failing = run_program("raise SystemExit(3)\n", LIMITS)
    assert not failing.passed and failing.status == "failed" and failing.returncode == 3


@needs_bwrap
def test_infinite_loop_is_killed_at_the_wall_clock_limit():
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", LIMITS)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < LIMITS.timeout_s + 5


@needs_bwrap
def test_fork_bomb_is_bounded_and_leaves_nothing_behind():
    bomb = f"import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n# {MARKER}\n"
    start = time.monotonic()
    result = run_program(bomb, LIMITS)
    assert not result.passed and time.monotonic() - start < LIMITS.timeout_s + 10
    # The host can still start processes, and nothing of the bomb survives.
    assert subprocess.run(["true"]).returncode == 0
    assert run_program("print('alive')\n", LIMITS).passed


@needs_bwrap
def test_huge_allocation_fails_with_memory_error():
    result = run_program("x = bytearray(64 * 1024**3)\n", LIMITS)
    assert result.status == "failed" and "MemoryError" in result.stderr_tail


@needs_bwrap
def test_writes_outside_the_work_dir_fail_and_private_tmp_vanishes(tmp_path):
    target = tmp_path / "pwned.txt"
    host_tmp = f"/tmp/opdlm-sandbox-escape-{os.getpid()}"
    result = run_program(f"open({str(target)!r}, 'w').write('x')\n", LIMITS)
    assert not result.passed and not target.exists()
    inside = run_program(f"open({host_tmp!r}, 'w').write('x')\nopen('local.txt', 'w').write('ok')\n", LIMITS)
    assert inside.passed  # its own /tmp and work dir are writable ...
    assert not os.path.exists(host_tmp)  # ... but private: nothing reaches the host


@needs_bwrap
def test_file_size_limit():
    result = run_program("open('big', 'wb').write(b'x' * (8 * 1024**2))\n", LIMITS)
    assert result.status == "failed" and ("File too large" in result.stderr_tail or result.returncode < 0)


@needs_bwrap
def test_no_network_not_even_to_the_host_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        assert not run_program(program, LIMITS).passed
        outside = "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n"
        assert not run_program(outside, LIMITS).passed
    finally:
        server.close()


@needs_bwrap
def test_killing_the_parent_does_not_reach_the_evaluator():
    program = (
        "import os, signal\n"
        "for target in (os.getppid(), 1, -1, os.getpgid(0)):\n"
        "    try:\n        os.kill(target, signal.SIGKILL)\n    except OSError:\n        pass\n"
        "os.killpg(0, signal.SIGKILL)\n"
    )
    result = run_program(program, LIMITS)
    assert not result.passed
    assert run_program("print('still here')\n", LIMITS).passed  # and so are we


@needs_bwrap
def test_background_processes_do_not_outlive_the_program():
    daemon = f"import os\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', ['sleep', '{MARKER}'])\n"
    run_program(daemon, LIMITS)
    time.sleep(0.5)
    assert _processes_with(f"sleep {MARKER}") == []


@needs_bwrap
def test_clean_environment(monkeypatch):
    monkeypatch.setenv("OPDLM_TEST_SECRET", "s3cret")
    result = run_program("import os, json\nprint(json.dumps(sorted(os.environ)))\n", LIMITS)
    assert result.passed and "OPDLM_TEST_SECRET" not in result.stdout_tail
    assert "s3cret" not in result.stdout_tail


@needs_bwrap
def test_a_hostile_batch_carries_on_in_order():
    programs = ["print(1)\n", "while True: pass\n", "import os\nos.killpg(0, 9)\n", "x = ' ' * (2**40)\n", "print(2)\n"]
    results = run_programs(programs, LIMITS, workers=3)
    assert [r.passed for r in results] == [True, False, False, False, True]
    assert results[1].status == "timeout"


def test_without_bwrap_code_execution_is_refused(monkeypatch):
    import opdlm.eval.sandbox as sandbox

    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    with pytest.raises(SandboxUnavailableError, match="bubblewrap"):
        run_program("print(1)\n")
    with pytest.raises(SandboxUnavailableError):
        run_programs(["print(1)\n"])
    # Explicitly allowed: limits still apply, and the result says it was not sandboxed.
    result = run_program("print(1)\n", LIMITS, allow_unsandboxed=True)
    assert result.passed and not result.sandboxed
    timed = run_program("while True: pass\n", SandboxLimits(timeout_s=1.0), allow_unsandboxed=True)
    assert timed.status == "timeout"
