"""The registered student as an MLflow pyfunc: ``predict`` generates text with the block sampler.

Logged as code (MLflow's "models from code"): MLflow copies this file into the model and runs it when
the model is loaded; the model also carries the opdlm package (``code_paths``) and pinned
requirements, so ``mlflow.pyfunc.load_model("models:/NAME@champion").predict(...)`` and ``mlflow
models serve`` work in this environment or in one MLflow builds, with no pickled objects involved.

Input: a DataFrame with a string column ``prompt`` (or ``{"prompt": [...]}``). Params (optional, defaults are
the student's sampler settings): ``max_new_tokens``, ``threshold``, ``temperature``, ``seed``,
``raw_prompt`` (skip the chat template; otherwise it is rendered in the student's stored
``enable_thinking`` mode). Output: a DataFrame with ``text``, ``tokens_per_step``,
``num_tokens``, ``num_forwards`` and ``finished`` per prompt. A bad param or an empty request raises
an ``INVALID_PARAMETER_VALUE`` :class:`~mlflow.exceptions.MlflowException` with one line naming the
value, which ``mlflow models serve`` answers as HTTP 400 (no stack trace).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

STUDENT_ARTIFACT = "student"


def _prompts(model_input) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        value = model_input.get("prompt")
        return [value] if isinstance(value, str) else list(value)
    values = model_input
    if isinstance(model_input, pd.DataFrame):
        values = model_input["prompt" if "prompt" in model_input.columns else model_input.columns[0]].tolist()
    prompts: list[str] = []
    for value in values:  # schema enforcement turns {"prompt": [a, b]} into one row holding the array
        prompts.extend(str(v) for v in value) if isinstance(value, list | tuple | np.ndarray) else prompts.append(
            str(value)
        )
    return prompts


def _sampler_settings(defaults, params: dict):
    """The sampler config and seed a request asks for; a bad value is one INVALID_PARAMETER_VALUE line."""
    from pydantic import ValidationError

    from opdlm.config.base import format_validation_error

    seed = int(params.get("seed", 0))
    if seed < 0:
        raise MlflowException.invalid_parameter_value(f"params: seed: must be >= 0 (got {seed})")
    try:
        cfg = defaults.with_overrides(
            max_new_tokens=params.get("max_new_tokens"),
            threshold=params.get("threshold"),
            temperature=params.get("temperature"),
        )
    except ValidationError as exc:
        raise MlflowException.invalid_parameter_value(format_validation_error(exc, type(defaults), "params")) from None
    return cfg, seed


class StudentPyfunc(PythonModel):
    """Loads the converted student from the model's ``student`` artifact and decodes prompts."""

    def load_context(self, context) -> None:
        from opdlm.eval.runners import load_runner

        self.runner = load_runner(context.artifacts[STUDENT_ARTIFACT], device="auto")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from opdlm.data.prompting import encode_prompts

        params = dict(params or {})
        texts = _prompts(model_input)
        if not texts:
            raise MlflowException.invalid_parameter_value('no prompts: send {"inputs": {"prompt": ["..."]}}')
        cfg, seed = _sampler_settings(self.runner.sampler_defaults, params)
        if not params.get("raw_prompt", False):
            texts = [self.runner.format_prompt(t) for t in texts]
        out = self.runner.generate(encode_prompts(self.runner.tokenizer, texts), cfg, seed=seed)
        return pd.DataFrame(
            {
                "text": out.texts,
                "tokens_per_step": [out.tokens_per_step(i) for i in range(len(out))],
                "num_tokens": [len(r) for r in out.response_ids],
                "num_forwards": out.num_forwards,
                "finished": out.finished,
            }
        )


mlflow.models.set_model(StudentPyfunc())
