"""Entry point of the ``opdlm`` console script.

Subcommands register themselves from small modules; torch and transformers are imported inside the
command bodies, so ``opdlm --help`` stays fast. Exit codes (docs/cli-contract.md): 0 success; 2 bad
input, as one line on stderr (an :class:`~opdlm.errors.OpdlmError`, a usage error, a file the system
refuses), escaped and cut to a bounded length by :func:`~opdlm.errors.error_line`; 130 interrupted
(Ctrl-C or SIGTERM); 1 only for a bug (a traceback).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import sys
import threading

import typer

# typer >= 0.29 vendors its own click: its usage errors are these classes, not click.ClickException
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.exceptions import TyperException

app = typer.Typer(
    name="opdlm",
    help="Turn an autoregressive LM into a block-diffusion LM by on-policy distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def command_modules() -> list[str]:
    """Every ``opdlm/cli/*_cmd.py`` module, sorted; each defines ``register(app)``.

    Discovered rather than listed, so a new subcommand is one new file and nothing else.
    """
    import pkgutil
    from pathlib import Path

    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.endswith("_cmd"))


def _register() -> None:
    """Library commands from ``opdlm/cli``, then plugins from the ``opdlm.commands`` entry-point group.

    The pipeline command is such a plugin (``flows.cli``): it sits above the library, which must never
    import it. A plugin that fails to import is reported and skipped, so library commands still work.
    """
    import importlib
    from importlib.metadata import entry_points

    for name in command_modules():
        importlib.import_module(f"opdlm.cli.{name}").register(app)
    for ep in entry_points(group="opdlm.commands"):
        try:
            ep.load()(app)
        except ImportError as exc:
            print(f"warning: opdlm command plugin {ep.name!r} unavailable: {exc}", file=sys.stderr)


# A file the system refuses (permissions, a directory where a file belongs, a full or read-only disk):
# the user's environment, not a bug, so one line and exit 2 rather than a traceback.
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC, errno.EROFS, errno.EDQUOT}
)


def _usage_line(exc: Exception) -> str:
    """A click/typer usage error as one line: the message and where the command's help is."""
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    from opdlm.errors import error_line

    return f"error: {error_line(exc.format_message())}{hint}"


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler, ``kill``, ``timeout``) unwinds like Ctrl-C: temporaries cleaned, exit 130."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _deepspeed_logs_to_stderr() -> None:
    """DeepSpeed gives its logger a stdout handler on import; stdout carries a command's results, so
    its records go to stderr instead, and its "Setting accelerator to CPU" notice (every run on a
    machine without a GPU, which is expected there) is dropped. A filter set now outlives that import."""

    def to_stderr(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Setting accelerator to CPU"):
            print(f"[DeepSpeed {record.levelname}] {message}", file=sys.stderr)
        return False

    logger = logging.getLogger("DeepSpeed")
    if to_stderr.__qualname__ not in {getattr(f, "__qualname__", "") for f in logger.filters}:
        logger.addFilter(to_stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of raising it (handy in tests)."""
    from opdlm.errors import Interrupted, OpdlmError, error_line

    _register()
    _deepspeed_logs_to_stderr()
    try:
        with _sigterm_as_interrupt():
            # typer (standalone_mode=False) returns the exit code of typer.Exit, and turns a bare
            # KeyboardInterrupt into 130; a command's own return value is None
            code = app(args=argv, standalone_mode=False)
    except OpdlmError as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"interrupted: {error_line(exc)}", file=sys.stderr)
        return 130
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    except NoArgsIsHelpError as exc:  # `opdlm`, `opdlm stage`: the help is the answer
        exc.show()
        return exc.exit_code
    except TyperException as exc:  # typer's vendored click: usage errors (exit 2), file errors
        print(_usage_line(exc), file=sys.stderr)
        return exc.exit_code if isinstance(exc, UsageError) else 2
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {error_line(exc.strerror + where)}", file=sys.stderr)
        return 2
    if code == 130:
        print("interrupted", file=sys.stderr)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
