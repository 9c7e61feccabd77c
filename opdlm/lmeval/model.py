"""lm-eval's ``opdlm`` model type: a student (block-diffusion sampler) or a teacher (a plain causal LM).

Both go through :func:`opdlm.eval.runners.load_runner` and :func:`opdlm.eval.harness.decode_batches`,
the code ``opdlm eval`` decodes with, so the same rows under the same sampler settings give the same
completions. Every ``generate_until`` request's tokens per step, forward passes and batch seconds are
kept (and written to ``requests_jsonl`` when set); :meth:`OpdlmLM.get_model_info` puts the aggregate
into lm-eval's results under ``config.opdlm``.

Log-likelihoods: exact for a causal LM (one teacher-forced forward pass). A block-diffusion student
has no exact left-to-right likelihood, so its ``loglikelihood`` / ``loglikelihood_rolling`` refuse with
one line naming the task types that work, before any of those requests is scored.
"""

from __future__ import annotations

import json
import logging

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from opdlm.errors import ConfigError
from opdlm.fsutil import atomic_write_text
from opdlm.lmeval.args import base_sampler, parse_model_args, request_sampler
from opdlm.lmeval.speed import RequestSpeed, aggregate, cut_at_stop, kept_token_count

log = logging.getLogger(__name__)

MODEL_NAME = "opdlm"
STUDENT_LOGLIKELIHOOD_ERROR = (
    "opdlm students (block diffusion) answer generate_until tasks only (e.g. gsm8k, minerva_math); "
    "loglikelihood, multiple_choice and loglikelihood_rolling tasks need a causal LM (the teacher)"
)
_KNOWN_GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"}


@register_model(MODEL_NAME)
class OpdlmLM(TemplateLM):
    """``lm_eval --model opdlm --model_args pretrained=DIR,...`` (see :class:`~opdlm.lmeval.args.LmEvalModelArgs`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        from opdlm.eval.runners import load_runner

        self.args = parse_model_args(kwargs)
        self.runner = load_runner(
            self.args.pretrained,
            device=self.args.device,
            dtype=self.args.dtype,
            backend=self.args.attn_backend,
            enable_thinking=self.args.enable_thinking,
        )
        self.tokenizer = self.runner.tokenizer
        self.base_sampler = base_sampler(self.runner.sampler_defaults, self.args)
        self.requests: list[RequestSpeed] = []
        self._contexts_templated = False  # set once lm-eval formats contexts through apply_chat_template
        self._batches = 0

    # ---- what lm-eval asks of every model -------------------------------------------------------

    @property
    def device(self):
        return next(self.runner.model.parameters()).device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def tokenizer_name(self) -> str:
        return str(self.runner.model_dir).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens)).input_ids

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's ``--apply_chat_template`` path: the model's template in the model's thinking mode."""
        self._contexts_templated = True
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
            enable_thinking=self.runner.enable_thinking,
        )

    def get_model_info(self) -> dict:
        """Added to lm-eval's ``results["config"]``: the model, its sampler settings and the speed."""
        return {
            "opdlm": {
                "model_kind": self.runner.kind,
                "sampler": self.base_sampler.model_dump() if self.runner.kind == "student" else None,
                "enable_thinking": self.runner.enable_thinking,
                "requests_jsonl": self.args.requests_jsonl,
                **aggregate(self.requests),
            }
        }

    # ---- generation -----------------------------------------------------------------------------

    def prompt_text(self, context: str) -> str:
        """The prompt the model sees for an lm-eval context (``opdlm eval``'s prompt formatting and thinking mode)."""
        if self._contexts_templated or not self.args.chat_template:
            return context
        return self.runner.format_prompt(context)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decode every request (grouped by sampler settings and stop strings, batched by length).

        Returns:
            One completion per request, cut before its first stop string.
        """
        from opdlm.data.prompting import encode_prompts
        from opdlm.eval.harness import decode_batches

        groups: dict[str, list[int]] = {}
        settings = []
        unknown: set[str] = set()
        for i, req in enumerate(requests):
            _, gen_kwargs = req.args
            unknown |= set(gen_kwargs or {}) - _KNOWN_GEN_KWARGS
            cfg, stops = request_sampler(self.base_sampler, gen_kwargs)
            settings.append((cfg, stops))
            groups.setdefault(json.dumps([cfg.model_dump(), stops]), []).append(i)
        if unknown:
            log.warning("opdlm: ignoring gen_kwargs %s (not sampler settings)", sorted(unknown))
        answers: list[str | None] = [None] * len(requests)
        for members in groups.values():
            cfg, stops = settings[members[0]]
            prompts = [self.prompt_text(requests[i].args[0]) for i in members]
            prompt_ids = encode_prompts(self.tokenizer, prompts)
            decoded = decode_batches(
                self.runner, prompt_ids, cfg, self.args.batch_size, self.args.seed, progress=not disable_tqdm
            )
            for batch, out, seconds in decoded:
                for k, j in enumerate(batch):
                    i = members[j]
                    answers[i] = self._record(requests[i], out, k, stops, seconds, len(batch))
                    self.cache_hook.add_partial("generate_until", requests[i].args, answers[i])
                self._batches += 1
        self._write_requests()
        speed = aggregate(self.requests)
        log.info(
            "opdlm %s: %d requests, %.2f tokens/step, %.1f forwards/request, %.1f tokens/s",
            self.runner.kind,
            speed["requests"],
            speed["tokens_per_step"],
            speed["mean_forwards"],
            speed["tokens_per_second"],
        )
        return answers

    def _record(self, request, out, k: int, stops: list[str], seconds: float, batch_size: int) -> str:
        """Cut completion ``k`` of ``out`` at its first stop string and keep the request's speed."""
        text, stopped = cut_at_stop(out.texts[k], stops)
        ids, step_map = out.response_ids[k], out.step_map[k]
        if stopped:
            kept = kept_token_count(lambda p: self.tokenizer.decode(p, skip_special_tokens=True), ids, text)
            ids, step_map = ids[:kept], step_map[:kept]
        steps = len(set(step_map))
        self.requests.append(
            RequestSpeed(
                task=getattr(request, "task_name", None),
                doc_id=getattr(request, "doc_id", None),
                idx=getattr(request, "idx", None),
                num_tokens=len(ids),
                num_steps=steps,
                tokens_per_step=round(len(ids) / steps, 4) if steps else 0.0,
                num_forwards=int(out.num_forwards[k]),
                batch_seconds=round(seconds, 6),
                batch=self._batches,
                batch_size=batch_size,
                stopped_by="stop" if stopped else ("eos" if out.finished[k] else "length"),
            )
        )
        return text

    def _write_requests(self) -> None:
        """Rewrite the JSONL with every request so far (atomically: a crash leaves the previous file)."""
        if self.args.requests_jsonl is None:
            return
        atomic_write_text(self.args.requests_jsonl, "".join(json.dumps(r.to_dict()) + "\n" for r in self.requests))

    # ---- log-likelihoods ------------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._require_causal_lm()
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _require_causal_lm(self) -> None:
        if self.runner.kind == "student":
            raise ConfigError(STUDENT_LOGLIKELIHOOD_ERROR)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Exact ``log p(continuation | context)`` and whether greedy decoding would produce it.

        Each request is one teacher-forced forward pass over ``(context + continuation)[:-1]``,
        right-padded in batches; the context is cut from the left to fit the model's window.
        """
        from opdlm.lmeval.loglik import continuation_logprobs

        pairs = [(ctx, cont) for _, ctx, cont in requests]
        results = continuation_logprobs(self.runner.model, pairs, self.args.batch_size, self._max_length())
        for (key, _, _), res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Exact log-likelihood of each whole string, in disjoint windows of the model's length."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        from opdlm.lmeval.loglik import continuation_logprobs

        self._require_causal_lm()
        out = []
        for req in requests:
            (string,) = req.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self._max_length(),
                    context_len=1,
                )
            ]
            total = sum(
                lp
                for lp, _ in continuation_logprobs(self.runner.model, windows, self.args.batch_size, self._max_length())
            )
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    def _max_length(self) -> int:
        config = self.runner.model.config
        return int(getattr(config, "max_position_embeddings", None) or 2048)
