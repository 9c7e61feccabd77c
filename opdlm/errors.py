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
