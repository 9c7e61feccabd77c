"""The registered student as an MLflow pyfunc: ``predict`` generates text with the block sampler.

Logged as code (MLflow's "models from code"): MLflow copies this file into the model and runs it when
the model is loaded; the model also carries the opdlm package (``code_paths``) and pinned
requirements, so ``mlflow.pyfunc.load_model("models:/NAME@champion").predict(...)`` and ``mlflow
models serve`` work in this environment or in one MLflow builds, with no pickled objects involved.

Input: a DataFrame whose column ``prompt`` holds strings (or ``{"prompt": [...]}``; the signature types
the column Any so that a null or a number reaches the request check instead of MLflow's cast to text).
Params (optional, defaults are the student's sampler settings): ``max_new_tokens``, ``threshold``,
``temperature``, ``top_k``, ``top_p``, ``seed``, ``raw_prompt`` (skip the chat template; otherwise it is
rendered in the student's stored ``enable_thinking`` mode). Output: a DataFrame with ``text``,
``tokens_per_step`` (2 decimals), ``num_tokens``, ``num_forwards`` and ``finished`` per prompt.

Every limit is checked before any work (:mod:`opdlm.config.request`: value ranges, seed range, prompt
type, count and length, prompt plus response against the model's ``max_position_embeddings``); a bad
request raises an ``INVALID_PARAMETER_VALUE`` :class:`~mlflow.exceptions.MlflowException` with one
line naming the field (``params: seed: ...``, ``inputs: prompt[0]: ...``), which ``mlflow models
serve`` answers as HTTP 400 (no stack trace). So no request can decode past the model's positions.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

STUDENT_ARTIFACT = "student"


def _prompts(model_input) -> list:
    """The prompts of a request as sent (strings, or whatever else came: the request check names it)."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        value = model_input.get("prompt")
        return [value] if isinstance(value, str) else list(value or [])
    values = model_input
    if isinstance(model_input, pd.DataFrame):
        values = model_input["prompt" if "prompt" in model_input.columns else model_input.columns[0]].tolist()
    prompts: list = []
    for value in values:  # schema enforcement turns {"prompt": [a, b]} into one row holding the array
        prompts.extend(value) if isinstance(value, list | tuple | np.ndarray) else prompts.append(value)
    # numpy's string scalars are strings; None, NaN and numbers stay what they are and are refused
    return [str(p) if isinstance(p, np.str_) else p for p in prompts]


def _field_name(field: str) -> str:
    """A request field as the caller wrote it: the prompts are the request's inputs, the rest its params."""
    return "inputs: prompt" if field == "prompt" else f"params: {field}"


def check_request(model_input, params: dict | None, defaults, limits):
    """The validated request and its sampler settings; anything wrong is one INVALID_PARAMETER_VALUE line.

    Runs before any tokenising or decoding (:func:`opdlm.config.request.validate_request`).
    """
    from opdlm.config.request import validate_request
    from opdlm.errors import ConfigError

    texts = _prompts(model_input)
    if not texts:
        raise MlflowException.invalid_parameter_value('no prompts: send {"inputs": {"prompt": ["..."]}}')
    # MLflow fills a param the request left out with the signature's default; None means the model's own
    data = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        return validate_request({**data, "prompt": texts}, defaults, limits, name=_field_name, source="params")
    except ConfigError as exc:
        raise MlflowException.invalid_parameter_value(str(exc)) from None


class StudentPyfunc(PythonModel):
    """Loads the converted student from the model's ``student`` artifact and decodes prompts."""

    def load_context(self, context) -> None:
        from opdlm.eval.runners import load_runner

        self.runner = load_runner(context.artifacts[STUDENT_ARTIFACT], device="auto")
        self.limits = self.runner.limits  # positions and longest token, from the model's own files

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from opdlm.config.request import check_prompt_tokens
        from opdlm.data.prompting import encode_prompts
        from opdlm.errors import ConfigError
        from opdlm.numbers import rounded_rate

        request, cfg = check_request(model_input, params, self.runner.sampler_defaults, self.limits)
        texts = request.prompt if request.raw_prompt else [self.runner.format_prompt(t) for t in request.prompt]
        prompt_ids = encode_prompts(self.runner.tokenizer, texts)
        try:
            check_prompt_tokens(prompt_ids, cfg, self.limits, name=_field_name)
        except ConfigError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        out = self.runner.generate(prompt_ids, cfg, seed=request.seed)
        return pd.DataFrame(
            {
                "text": out.texts,
                "tokens_per_step": [rounded_rate(out.tokens_per_step(i)) for i in range(len(out))],
                "num_tokens": [len(r) for r in out.response_ids],
                "num_forwards": out.num_forwards,
                "finished": out.finished,
            }
        )


mlflow.models.set_model(StudentPyfunc())
