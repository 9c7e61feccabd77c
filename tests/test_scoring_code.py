"""Code benchmarks end to end through the sandbox: HumanEval's canonical solutions, MBPP, hostile completions."""

from __future__ import annotations

from pathlib import Path

import pytest

from opdlm.eval.benchmarks import get_benchmark, load_benchmark
from opdlm.eval.code_scoring import code_candidates, extract_code
from opdlm.eval.sandbox import SandboxLimits, SandboxUnavailableError, check_sandbox
from opdlm.eval.scoring import score_completions

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"


def _sandbox_works() -> bool:
    try:
        return check_sandbox(False)
    except SandboxUnavailableError:
        return False


needs_bwrap = pytest.mark.skipif(not _sandbox_works(), reason="bubblewrap sandbox not available here")
LIMITS = SandboxLimits(timeout_s=10.0, memory_bytes=1024**3)


@pytest.fixture(scope="module")
def humaneval():
    return get_benchmark("humaneval"), load_benchmark("humaneval", FIXTURES)


@needs_bwrap
@pytest.mark.slow
def test_humaneval_canonical_solutions_all_pass_and_empty_completions_all_fail(humaneval):
    bench, rows = humaneval
    assert len(rows) == 164
    canonical = score_completions(bench, rows, [r.response for r in rows], code_limits=LIMITS, code_workers=4)
    failed = [(r.id, s.detail) for r, s in zip(rows, canonical) if not s.correct]
    assert failed == [] and sum(s.correct for s in canonical) == 164
    empty = score_completions(bench, rows, [""] * len(rows), code_limits=LIMITS, code_workers=4)
    assert sum(s.correct for s in empty) == 0


@needs_bwrap
def test_humaneval_chat_style_answers(humaneval):
    bench, rows = humaneval
    row = rows[0]  # has_close_elements
    body = row.response
    chat = f"Here is the function:\n```python\n{row.question}{body}```\nIt compares every pair."
    wrong = f"```python\n{row.question}    return False\n```"
    scores = score_completions(bench, [row, row, row], [chat, body, wrong], code_limits=LIMITS)
    assert [s.correct for s in scores] == [True, True, False]
    assert scores[2].status == "failed" and "AssertionError" in scores[2].detail


@needs_bwrap
def test_mbpp_reference_code_passes_and_wrong_code_fails():
    bench, rows = get_benchmark("mbpp"), load_benchmark("mbpp", FIXTURES)
    completions = [f"```python\n{r.response}\n```" for r in rows] + ["def count_vowels(s):\n    return 0\n"]
    scores = score_completions(bench, [*rows, rows[0]], completions, code_limits=LIMITS)
    assert [s.correct for s in scores] == [True, True, False]


HOSTILE = {
    "fork bomb": (
        "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            "
        "pass\n"
    ),
    "infinite loop": "    while True:\n        pass\n",
    "huge allocation": "    x = bytearray(64 * 1024**3)\n",
    "write elsewhere": "    open('/etc/opdlm-pwned', 'w').write('x')\n",
    "network": "    import socket\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\n",
    "kill parent": "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n",
    "exit early with success": "    import os\n    os._exit(0)\n",
    "sys exit 0 at import": "import sys\nsys.exit(0)\n",
}


@needs_bwrap
def test_hostile_completions_score_as_failures_and_the_run_carries_on(humaneval):
    bench, rows = humaneval
    row = rows[0]
    # Each hostile body runs when the tests call the function (or at import); the last row is honest.
    completions = [*HOSTILE.values(), row.response]
    limits = SandboxLimits(timeout_s=3.0, memory_bytes=512 * 1024**2)
    scores = score_completions(bench, [row] * len(completions), completions, code_limits=limits, code_workers=4)
    verdicts = dict(zip([*HOSTILE, "honest"], [s.correct for s in scores]))
    assert verdicts == {**{k: False for k in HOSTILE}, "honest": True}
    assert not Path("/etc/opdlm-pwned").exists()


def test_code_candidates_and_extraction():
    fenced = "text\n```python\ndef f():\n    return 1\n```\nmore\n```\nprint(2)\n```"
    assert code_candidates(fenced)[0] == "def f():\n    return 1\n"
    assert extract_code("    return x\n", prefix="def g(x):\n") == "    return x\n"
    # A continuation that closes the prompt's open fence: the code before the fence.
    assert extract_code("    return x\n```\nDone.", prefix="def g(x):\n") == "    return x\n"
    assert extract_code("not ( code") == "not ( code"  # nothing compiles: the most specific reading, which then fails
