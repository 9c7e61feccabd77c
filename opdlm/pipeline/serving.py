"""The command that serves a registered student, built once: ``summary.md``, the Prefect summary
artifact and the model card print it, and ``tests/test_serving.py`` runs exactly what it returns.

Two aliases exist (:mod:`tasks.register`): every registered version gets ``candidate`` (it moves to
the newest version), and ``champion`` moves to a version only when the recipe's gate passed
(:func:`opdlm.pipeline.gate.champion_gate`). So a fresh run's own model is ``@candidate``; it is
``@champion`` too only when it was promoted, and a name may have no champion at all.
"""

from __future__ import annotations

import shlex

CANDIDATE, CHAMPION = "candidate", "champion"
DEFAULT_PORT = 5001


def serving_alias(promoted: bool) -> str:
    """The alias that names this version: ``champion`` when the gate promoted it, else ``candidate``."""
    return CHAMPION if promoted else CANDIDATE


def alias_note(promoted: bool) -> str:
    """Which aliases the version holds, and why (one sentence)."""
    if promoted:
        return (
            f"This version holds @{CHAMPION} (the gate passed) and @{CANDIDATE} (every registered version; "
            "it moves to the newest)."
        )
    return (
        f"This version holds @{CANDIDATE} only (every registered version; it moves to the newest): the gate did "
        f"not promote it, so @{CHAMPION} is another version or does not exist."
    )


def serve_command(
    model_name: str,
    alias: str,
    *,
    port: int = DEFAULT_PORT,
    tracking_uri: str | None = None,
    venv_bin: str | None = None,
) -> str:
    """``mlflow models serve`` for ``models:/<model_name>@<alias>``, as a shell line that works as printed.

    ``--env-manager local`` serves from the environment the command runs in; without it MLflow first
    builds the model's own environment with pyenv, which downloads Python from python.org (on a
    machine that cannot reach it, a 57-line traceback). The local manager starts ``uvicorn`` from
    PATH, so the venv's ``bin`` must come first on PATH: an activated venv, or ``venv_bin`` here.

    Args:
        tracking_uri: prefix ``MLFLOW_TRACKING_URI=...`` (a run's own registry); None: the caller's.
        venv_bin: prefix ``PATH=<venv_bin>:$PATH`` (this venv, not activated); None: from the activated venv.
    """
    env = []
    if venv_bin is not None:
        env.append(f'PATH={shlex.quote(venv_bin)}:"$PATH"')
    if tracking_uri is not None:
        env.append(f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)}")
    args = ["mlflow", "models", "serve", "-m", f"models:/{model_name}@{alias}", "--env-manager", "local"]
    return " ".join([*env, *args, "-p", str(port)])
