"""``opdlm lm-eval ARGS``: lm-eval's own command line with the ``opdlm`` model type registered.

lm-eval 0.4.x loads models only from its built-in table, so ``lm_eval --model opdlm`` cannot find
ours on its own; this is the same CLI (same flags, same output files), run in a process where the
model is registered. With ``--output_path``, the per-request speed JSONL goes beside lm-eval's results
file unless ``--model_args requests_jsonl=...`` names another place.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from opdlm.errors import ConfigError

MISSING_TASKS = "Tasks not found:"  # how lm-eval 0.4.x words an unknown --tasks name
INSTALL_HINT = "lm-eval is not installed; install the extra: pip install 'opdlm[lmeval]'"


def unknown_task_message(name: str, known: list[str], where: str) -> str:
    """One line for an lm-eval task name that is not registered, with the closest names (``gsm8K``: ``gsm8k``)."""
    import difflib

    lowered = {k.lower(): k for k in known}
    close = [lowered[name.lower()]] if name.lower() in lowered else []
    close = close or difflib.get_close_matches(name, known, n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else " (see `lm-eval ls tasks`)"
    return f"{where}: unknown lm-eval task {name[:80]!r}{hint}"


def requests_jsonl_for(output_path: str, pretrained: str, stamp: str) -> Path:
    """Where the request JSONL goes: beside ``results_<date>.json`` in lm-eval's per-model folder
    (``OUTPUT/<sanitised model>/``), or beside ``OUTPUT`` itself when that names a ``.json`` file."""
    from lm_eval.utils import sanitize_model_name

    path = Path(output_path)
    if path.suffix == ".json":
        return path.with_name(f"{path.stem}_opdlm_requests_{stamp}.jsonl")
    return path / sanitize_model_name(pretrained) / f"opdlm_requests_{stamp}.jsonl"


def run(argv: list[str]) -> None:
    """Parse ``argv`` with lm-eval's parser, point the request JSONL beside its output, run it.

    Raises:
        ConfigError: lm-eval is not installed, or a ``--tasks`` name is unknown (with the close matches).
    """
    try:
        from lm_eval._cli import HarnessCLI
        from lm_eval.utils import setup_logging
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    import opdlm.lmeval  # noqa: F401  (registers the model type)

    setup_logging()
    saved, sys.argv = sys.argv, ["lm-eval", *argv]
    try:
        parser = HarnessCLI()
        args = parser.parse_args()  # lm-eval reads sys.argv (it inserts ``run`` when no subcommand is given)
    finally:
        sys.argv = saved
    if getattr(args, "model", None) == opdlm.lmeval.MODEL_NAME:
        if getattr(args, "device", None) is None:
            args.device = "auto"  # lm-eval would fill in cuda:0; ours picks cuda when present, else the CPU
        model_args = dict(getattr(args, "model_args", None) or {})
        if getattr(args, "output_path", None) and "requests_jsonl" not in model_args and "pretrained" in model_args:
            stamp = datetime.now().isoformat().replace(":", "-")
            model_args["requests_jsonl"] = str(
                requests_jsonl_for(args.output_path, str(model_args["pretrained"]), stamp)
            )
        args.model_args = model_args
    try:
        parser.execute(args)
    except ValueError as exc:
        # lm-eval refuses a task name with a bare ValueError after it indexed its tasks: one line, with the
        # close matches, instead of a traceback
        text = str(exc)
        if not text.startswith(MISSING_TASKS):
            raise
        from lm_eval.tasks import TaskManager

        missing = text[len(MISSING_TASKS) :].split(", ")[0].strip()
        known = list(TaskManager(include_path=getattr(args, "include_path", None)).all_tasks)
        raise ConfigError(unknown_task_message(missing, known, "--tasks")) from None
