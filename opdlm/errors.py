"""User-facing errors: one clear line, caught by the CLI and turned into a non-zero exit."""


class OpdlmError(Exception):
    """An error caused by the user's input (a path, a value, a file), worded for a person."""


class ConfigError(OpdlmError):
    """A recipe, config file or override that does not validate."""


class SourceError(OpdlmError):
    """A model or data source that cannot be resolved or is not what it should be."""


class Interrupted(Exception):
    """The user stopped a command (Ctrl-C, SIGTERM); the message says where it stopped and how to resume.

    Not an :class:`OpdlmError` (nothing was wrong with the input) and not a ``KeyboardInterrupt``
    (typer would swallow the message): the CLI prints it as one line and exits 130.
    """


QUOTE_CHARS = 60  # a quoted value longer than this is shown as a prefix and its length
LINE_CHARS = 800  # an error line longer than this is cut: no message may flood a terminal or a log


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, or for a long value the repr of its first ``limit`` characters and how long it is.

    Error messages quote what the user gave through this, so a 10 MB paste is named by its start
    (``'{"prompt": "x...'... (10,351,459 characters)``), never echoed back.
    """
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(value)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def error_line(message: object, limit: int = LINE_CHARS) -> str:
    """``message`` as one bounded line: line breaks escaped, at most ``limit`` characters kept.

    The one rule behind every ``error:`` / ``interrupted:`` line the CLI prints, whatever raised it.
    """
    text = str(message).replace("\r", "\\r").replace("\n", "\\n")
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit:,} more characters cut)"
    return text
