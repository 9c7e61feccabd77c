"""User-facing errors: one clear line, caught by the CLI and turned into a non-zero exit."""


class OpdlmError(Exception):
    """An error caused by the user's input (a path, a value, a file), worded for a person."""


class ConfigError(OpdlmError):
    """A recipe, config file or override that does not validate."""


class SourceError(OpdlmError):
    """A model or data source that cannot be resolved or is not what it should be."""
