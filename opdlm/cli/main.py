"""Entry point of the ``opdlm`` console script.

Subcommands register themselves from small modules; torch and transformers are imported inside the
command bodies, so ``opdlm --help`` stays fast. Any :class:`~opdlm.errors.OpdlmError` becomes one
line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

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


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of raising it (handy in tests)."""
    from opdlm.errors import OpdlmError

    _register()
    try:
        app(args=argv, standalone_mode=False)
    except OpdlmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # click usage errors carry their own exit code and message
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
