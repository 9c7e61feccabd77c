"""Progress of long loops that fits where it goes.

On a terminal: a live tqdm bar. Anywhere else (a Prefect task's log, CI, a file, a pipe to a parent
process): one plain line at most every ~10% of the total or ~30 s, with the same figures as the bar
(``decode:  30% 3/10 [00:12<00:29,  4.17s/batch, loss=0.1]``), and a last line at the end. A bar's
carriage-return refreshes would otherwise become one stored line each (two per step through a pipe
read line by line).

Every long loop of the library (teacher bootstrap, training, evaluation decode, study jobs) reports
through :func:`progress`; ``OPDLM_PROGRESS=bar|lines|off`` overrides the choice. The bars of the
libraries underneath (transformers' ``Loading weights``, huggingface_hub's downloads) follow the same
policy through :func:`library_bars`: shown where a bar of ours would be, silent anywhere else.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")
EVERY_FRACTION = 0.1
EVERY_SECONDS = 30.0
MODES = ("bar", "lines", "off")


def progress(
    total: int | None,
    desc: str,
    unit: str = "it",
    *,
    enabled: bool = True,
    initial: int = 0,
    stream: TextIO | None = None,
    every_fraction: float = EVERY_FRACTION,
    every_seconds: float = EVERY_SECONDS,
):
    """A progress reporter for a loop of ``total`` units (``None``: unknown).

    Args:
        total: units the loop will do (steps, batches, jobs).
        desc: what the loop does, the start of every line.
        unit: the unit's name (shown in the rate).
        enabled: False reports nothing (``--quiet``, ``progress=False``).
        initial: units already done (a resumed loop).
        stream: where to write (default ``sys.stderr``); a terminal gets a live bar.
        every_fraction: plain lines: a line once this fraction of ``total`` is done since the last.
        every_seconds: plain lines: a line once this long has passed since the last.

    Returns:
        An object with ``update(n)``, ``set_postfix(**figures)``, ``write(line)`` and ``close()``; it is
        also a context manager.
    """
    stream = stream or sys.stderr
    mode = _mode(stream, enabled)
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=True)
    return LineProgress(
        total,
        desc,
        unit,
        initial=initial,
        stream=stream,
        silent=mode == "off",
        every_fraction=every_fraction,
        every_seconds=every_seconds,
    )


def track(items: Iterable[T], desc: str, unit: str = "it", *, total: int | None = None, **kwargs) -> Iterator[T]:
    """Iterate ``items`` while reporting through :func:`progress` (``total`` defaults to ``len(items)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(total, desc, unit, **kwargs) as bar:
        for item in items:
            yield item
            bar.update(1)


def bars_shown(stream: TextIO | None = None, enabled: bool = True) -> bool:
    """Whether a live bar is the policy for ``stream`` (default stderr): a terminal, or ``OPDLM_PROGRESS=bar``."""
    return _mode(stream or sys.stderr, enabled) == "bar"


@contextlib.contextmanager
def library_bars(stream: TextIO | None = None, enabled: bool = True):
    """Within the block, transformers' (and with it huggingface_hub's) progress bars follow the policy.

    A bar's carriage-return refreshes are noise in a log, a pipe or a Prefect task (``Loading weights``
    on every model load), so they are switched off unless :func:`bars_shown`; the switch is put back
    afterwards. Only a transformers already imported is touched: this module imports no third party.
    """
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is None or bars_shown(stream, enabled) or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _mode(stream: TextIO, enabled: bool) -> str:
    if not enabled:
        return "off"
    forced = os.environ.get("OPDLM_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


class LineProgress:
    """tqdm's figures as plain lines, at most every ``every_fraction`` of the total or ``every_seconds``."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        *,
        initial: int,
        stream: TextIO,
        silent: bool,
        every_fraction: float,
        every_seconds: float,
    ):
        self.total, self.desc, self.unit, self.n, self.stream, self.silent = total, desc, unit, initial, stream, silent
        self.every_n = max(1, round(total * every_fraction)) if total else None
        self.every_seconds = every_seconds
        self.postfix = ""
        self._start = self._last_time = time.monotonic()
        self._initial = self._last_n = initial
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        due_n = self.every_n is not None and self.n - self._last_n >= self.every_n
        if (due_n or now - self._last_time >= self.every_seconds) and self.n != self.total:
            self._emit(now)  # the last unit's line comes from close(), with the final figures

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **figures: Any) -> None:
        """Figures appended to the next line, as tqdm's ``set_postfix`` does (``loss=0.123``)."""
        figures = {**(ordered_dict or {}), **figures}
        self.postfix = ", ".join(f"{k}={_short(v)}" for k, v in figures.items())

    def write(self, line: str) -> None:
        """A line of its own (a finished job's result), always shown unless silent."""
        if not self.silent:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if not self._closed and self.n != self._last_n:
            self._emit(time.monotonic())
        self._closed = True

    def line(self, now: float | None = None) -> str:
        """The current figures, as one line without a bar."""
        elapsed = (now or time.monotonic()) - self._start
        from tqdm import tqdm

        rate = (self.n - self._initial) / elapsed if elapsed > 0 else None
        return tqdm.format_meter(
            self.n,
            self.total,
            elapsed,
            ncols=0,
            prefix=self.desc,
            unit=self.unit,
            postfix=self.postfix or None,
            rate=rate,
            initial=self._initial,
        )

    def _emit(self, now: float) -> None:
        self._last_n, self._last_time = self.n, now
        if not self.silent:
            print(self.line(now), file=self.stream, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
