"""Progress that fits where it goes: a live bar on a terminal, a few plain lines anywhere else."""

from __future__ import annotations

import io
import subprocess
import sys

from opdlm.progress import LineProgress, progress, track


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_stream_gets_a_line_per_tenth_with_the_bars_figures(monkeypatch):
    monkeypatch.delenv("OPDLM_PROGRESS", raising=False)
    out = io.StringIO()
    with progress(1000, "bootstrap teacher", "step", stream=out) as bar:
        for _ in range(1000):
            bar.update(1)
            bar.set_postfix(loss=0.123456)
    lines = out.getvalue().splitlines()
    assert isinstance(bar, LineProgress) and "\r" not in out.getvalue()
    assert len(lines) == 10
    assert lines[0].startswith("bootstrap teacher:  10% 100/1000 [") and lines[0].endswith("step/s, loss=0.1235]")
    assert lines[-1].startswith("bootstrap teacher: 100% 1000/1000 [")


def test_plain_stream_also_reports_every_interval_and_resumes_from_initial(monkeypatch):
    monkeypatch.delenv("OPDLM_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress(1000, "train", "step", initial=500, stream=out, every_seconds=0.0)
    bar.update(1)
    bar.update(1)
    bar.close()
    bar.close()  # closing twice adds nothing
    assert [ln.split(" [")[0] for ln in out.getvalue().splitlines()] == ["train:  50% 501/1000", "train:  50% 502/1000"]


def test_terminal_gets_a_live_bar_and_disabled_prints_nothing(monkeypatch):
    from tqdm import tqdm

    monkeypatch.delenv("OPDLM_PROGRESS", raising=False)
    term = FakeTerminal()
    bar = progress(10, "decode", "batch", stream=term)
    assert isinstance(bar, tqdm)
    bar.close()
    quiet = io.StringIO()
    assert list(track(range(5), "decode", stream=quiet, enabled=False)) == [0, 1, 2, 3, 4]
    assert quiet.getvalue() == ""
    monkeypatch.setenv("OPDLM_PROGRESS", "lines")  # the override wins over the terminal
    assert isinstance(progress(10, "decode", stream=term), LineProgress)


def test_a_loop_piped_to_a_parent_writes_few_lines():
    """What a Prefect task reads from a training subprocess: one line per tenth, not per refresh."""
    code = "from opdlm.progress import track\nfor _ in track(range(500), 'loop', 'step'): pass\n"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "", "PYTHONPATH": ":".join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stderr.splitlines()) == 10 and "\r" not in proc.stderr
