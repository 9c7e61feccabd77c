"""Running untrusted Python programs (model-written code plus its tests) as a security boundary.

Every program runs in its own temporary directory and its own process group, under bubblewrap
(``bwrap``): the whole file system is mounted read-only except that directory, ``/tmp`` is a
private size-capped tmpfs, the network, PID, IPC and UTS namespaces are fresh (no network at all,
loopback included), the environment is cleared, and the process tree dies with the launcher. Inside,
a small trusted prelude sets resource limits (address space, processes, file size, CPU time, no
core dumps) before ``exec``-ing the program, and the launcher kills the whole process group when
the wall-clock limit passes. When the caller runs as root, bubblewrap itself runs as ``nobody`` so
that the process limit is enforced and root-owned files stay out of reach.

Without ``bwrap`` the module refuses to run anything (:class:`SandboxUnavailableError`) unless the
caller explicitly allows unsandboxed execution, which keeps only the limits, the process group and
the temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from opdlm.errors import OpdlmError

# Where the program's directory appears inside the sandbox.
SANDBOX_WORKDIR = "/tmp/sbx"
# uid/gid of ``nobody`` on Debian and most Linux distributions.
NOBODY_ID = 65534
# Bytes of stdout/stderr kept per program for diagnostics.
OUTPUT_TAIL_BYTES = 2000

INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)"


class SandboxUnavailableError(OpdlmError):
    """Code execution was requested but no sandbox is available and unsandboxed runs were not allowed."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits.

    Attributes:
        timeout_s: wall-clock seconds before the whole process tree is killed.
        memory_bytes: address-space limit (RLIMIT_AS) per process.
        max_processes: processes and threads the program may add on top of those its user already
            runs (RLIMIT_NPROC counts per user, so the limit is set to current + this headroom).
        file_size_bytes: largest file the program may write (RLIMIT_FSIZE); also caps its output.
        tmpfs_bytes: size of the private ``/tmp`` inside the sandbox.
        open_files: RLIMIT_NOFILE.
    """

    timeout_s: float = 10.0
    memory_bytes: int = 2 * 1024**3
    max_processes: int = 32
    file_size_bytes: int = 16 * 1024**2
    tmpfs_bytes: int = 64 * 1024**2
    open_files: int = 256


@dataclass
class ProgramResult:
    """Outcome of one program.

    Attributes:
        passed: exited with status 0 within the limits.
        status: ``passed``, ``failed`` (non-zero exit or killed by a signal), or ``timeout``.
        returncode: the exit status (negative for a signal), None after a timeout kill.
        wall_s: seconds from launch to exit or kill.
        stdout_tail, stderr_tail: the last bytes of each stream, decoded leniently.
        sandboxed: whether bubblewrap confined the program.
    """

    passed: bool
    status: str
    returncode: int | None
    wall_s: float
    stdout_tail: str
    stderr_tail: str
    sandboxed: bool

    def to_dict(self) -> dict:
        return asdict(self)


# The trusted prelude: runs first inside the sandbox, sets the limits, then replaces itself with the
# program. Limits are set here rather than in a preexec_fn because preexec_fn is unsafe in threads.
_PRELUDE = """
import os, resource, sys
as_bytes, nproc, fsize, cpu_s, nofile = (int(v) for v in sys.argv[1:6])
for lim, val in ((resource.RLIMIT_AS, as_bytes), (resource.RLIMIT_NPROC, nproc),
                 (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CPU, cpu_s),
                 (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(lim, (val, val))
os.execv(sys.executable, [sys.executable, "-I", "-B", sys.argv[6]])
"""


def bwrap_path() -> str | None:
    """The ``bwrap`` executable on PATH, or None."""
    return shutil.which("bwrap")


def check_sandbox(allow_unsandboxed: bool = False) -> bool:
    """Whether programs will be sandboxed; raises when they cannot be and that was not allowed.

    Raises:
        SandboxUnavailableError: ``bwrap`` is missing (or cannot create namespaces here) and
            ``allow_unsandboxed`` is false.
    """
    if bwrap_path() is None:
        if allow_unsandboxed:
            return False
        raise SandboxUnavailableError(
            f"code benchmarks execute model-written programs and need a sandbox: {INSTALL_HINT}, "
            "or pass --allow-unsandboxed to run them unconfined at your own risk"
        )
    if _launch_plan() is None:
        if allow_unsandboxed:
            return False
        who = " as user nobody" if os.geteuid() == 0 else ""
        raise SandboxUnavailableError(
            f"bwrap is installed but could not run a sandboxed python3{who} here (unprivileged user namespaces "
            "disabled, or no interpreter readable by that user?); pass --allow-unsandboxed to run code unconfined "
            "at your own risk"
        )
    return True


@dataclass(frozen=True)
class _LaunchPlan:
    """How programs start here: who runs bwrap and which interpreter the program can reach."""

    mode: str  # "nobody" (a root caller drops to nobody) or "self" (a non-root caller runs it as itself)
    python: str


_PLAN_CACHE: dict[str, _LaunchPlan | None] = {}


def _interpreters() -> list[str]:
    """Our own interpreter first; a system one for when ours is unreadable to ``nobody`` (e.g. under /root)."""
    found = [sys.executable, shutil.which("python3") or "", "/usr/bin/python3"]
    return list(dict.fromkeys(p for p in found if p and os.path.exists(p)))


def _launch_plan() -> _LaunchPlan | None:
    """The first (mode, interpreter) that runs a trivial sandboxed program; None when none does.

    Probed once per process.
    """
    if "plan" in _PLAN_CACHE:
        return _PLAN_CACHE["plan"]
    # Never as root: the kernel exempts uid 0 from RLIMIT_NPROC, so a fork bomb would be unbounded.
    modes = ["nobody"] if os.geteuid() == 0 else ["self"]
    plan = None
    for mode in modes:
        for python in _interpreters():
            with tempfile.TemporaryDirectory(prefix="opdlm-sbx-probe-") as tmp:
                _prepare_workdir(Path(tmp), mode)
                cmd = _bwrap_argv(Path(tmp), mode, SandboxLimits()) + [python, "-I", "-c", "pass"]
                try:
                    ok = subprocess.run(cmd, capture_output=True, timeout=30, **_user_kwargs(mode)).returncode == 0
                except (OSError, subprocess.TimeoutExpired):
                    ok = False
            if ok:
                plan = _LaunchPlan(mode, python)
                break
        if plan:
            break
    _PLAN_CACHE["plan"] = plan
    return plan


def _user_kwargs(mode: str) -> dict:
    if mode == "nobody":
        return {"user": NOBODY_ID, "group": NOBODY_ID, "extra_groups": []}
    return {}


def _prepare_workdir(workdir: Path, mode: str | None) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    if mode == "nobody":
        os.chown(workdir, NOBODY_ID, NOBODY_ID)


def _bwrap_argv(workdir: Path, mode: str, limits: SandboxLimits) -> list[str]:
    argv = [
        bwrap_path() or "bwrap",
        "--ro-bind",
        "/",
        "/",
        "--size",
        str(limits.tmpfs_bytes),
        "--tmpfs",
        "/tmp",
        "--bind",
        str(workdir),
        SANDBOX_WORKDIR,
        "--chdir",
        SANDBOX_WORKDIR,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--unshare-all",  # net (no network, not even loopback), pid, ipc, uts, cgroup, user where possible
        "--die-with-parent",
        "--new-session",  # the program cannot reach our terminal (TIOCSTI)
    ]
    return argv


def _tasks_of_uid(uid: int) -> int:
    """Processes plus threads owned by ``uid`` right now (what RLIMIT_NPROC counts)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry.path).st_uid != uid:
                continue
            total += len(os.listdir(f"{entry.path}/task"))
        except OSError:
            continue  # the process exited while we looked
    return total


def _program_uid(mode: str | None) -> int:
    return NOBODY_ID if mode == "nobody" else os.getuid()


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - OUTPUT_TAIL_BYTES))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_program(source: str, limits: SandboxLimits | None = None, allow_unsandboxed: bool = False) -> ProgramResult:
    """Run the Python program ``source`` under the sandbox and limits; never raises for what it does.

    Args:
        source: a complete Python program (for benchmarks: solution plus tests).
        limits: per-program limits (defaults: :class:`SandboxLimits`).
        allow_unsandboxed: run without bubblewrap when it is unavailable (limits still apply).

    Returns:
        A :class:`ProgramResult`; ``passed`` is True only for exit status 0 within the limits.

    Raises:
        SandboxUnavailableError: no sandbox and ``allow_unsandboxed`` is false.
    """
    limits = limits or SandboxLimits()
    sandboxed = check_sandbox(allow_unsandboxed)
    plan = _launch_plan() if sandboxed else None
    mode = plan.mode if plan else None
    root = Path(tempfile.mkdtemp(prefix="opdlm-sbx-"))
    try:
        workdir = root / "work"
        _prepare_workdir(workdir, mode)
        program = root / "program.py"
        program.write_text(source)
        prelude = root / "prelude.py"
        prelude.write_text(_PRELUDE)
        for path in (root, program, prelude):
            path.chmod(0o755 if path.is_dir() else 0o644)  # readable by nobody; writable by us only
        nproc = _tasks_of_uid(_program_uid(mode)) + limits.max_processes
        cpu_s = max(1, int(limits.timeout_s) + 1)
        limit_args = [
            str(limits.memory_bytes),
            str(nproc),
            str(limits.file_size_bytes),
            str(cpu_s),
            str(limits.open_files),
        ]
        if sandboxed:
            # The program and prelude are bound read-only next to the writable work dir.
            cmd = _bwrap_argv(workdir, mode, limits) + [
                "--ro-bind",
                str(prelude),
                "/tmp/prelude.py",
                "--ro-bind",
                str(program),
                "/tmp/program.py",
                plan.python,
                "-I",
                "-B",
                "/tmp/prelude.py",
                *limit_args,
                "/tmp/program.py",
            ]
        else:
            cmd = [sys.executable, "-I", "-B", str(prelude), *limit_args, str(program)]
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": SANDBOX_WORKDIR if sandboxed else str(workdir),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
        }
        return _launch(cmd, env, workdir if not sandboxed else root, root, limits, sandboxed, mode)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _launch(cmd, env, cwd, root: Path, limits: SandboxLimits, sandboxed: bool, mode: str | None) -> ProgramResult:
    out_path, err_path = root / "stdout", root / "stderr"
    start = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        # Output goes to files, not pipes: RLIMIT_FSIZE then caps it, and nothing buffers in our memory.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
            **(_user_kwargs(mode) if mode else {}),
        )
        try:
            returncode = proc.wait(timeout=limits.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out, returncode = True, None
        # Always kill the group: unsandboxed children may linger after a clean exit of the parent.
        _kill_group(proc)
        if timed_out:
            proc.wait()
    wall = time.monotonic() - start
    passed = not timed_out and returncode == 0
    status = "timeout" if timed_out else ("passed" if passed else "failed")
    return ProgramResult(passed, status, returncode, round(wall, 3), _tail(out_path), _tail(err_path), sandboxed)


def run_programs(
    sources: list[str],
    limits: SandboxLimits | None = None,
    workers: int | None = None,
    allow_unsandboxed: bool = False,
) -> list[ProgramResult]:
    """Run many programs, ``workers`` at a time, each in its own sandbox; results in input order.

    Raises:
        SandboxUnavailableError: no sandbox and ``allow_unsandboxed`` is false (checked before any run).
    """
    check_sandbox(allow_unsandboxed)
    if not sources:
        return []
    # Threads only wait on child processes, so more workers than cores keeps the cores busy.
    workers = workers or min(len(sources), 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_program(s, limits, allow_unsandboxed), sources))
