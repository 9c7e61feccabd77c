"""Bootstrap the tiny teacher: train a Qwen3 causal LM from scratch on the suite, score it, save it.

Reads top to bottom: build tokenizer and model -> supervised training on the train split (response
tokens only, warm-up + cosine schedule that also completes by the wall-clock budget) -> greedy
autoregressive accuracy on held-out rows -> one atomic write of an ordinary Hugging Face directory
with ``bootstrap_metrics.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from opdlm.config.teacher import TEACHER_POSITIONS, BootstrapConfig
from opdlm.data.schema import Row
from opdlm.fsutil import atomic_dir
from opdlm.models.model_dir import check_weights_match_config
from opdlm.teacher.sft_data import batch_indices, collate, encode_example

METRICS_FILE = "bootstrap_metrics.json"
PACE_CHECK_FROM_STEP = 10


def padded_vocab_rows(tokenizer_size: int, multiple: int) -> int:
    """Embedding rows: the next multiple of ``multiple`` strictly above ``tokenizer_size``.

    Strictly above, so at least one row is unused and ``opdlm convert`` can give it to the mask
    token without resizing (as Qwen3 does: 151,669 tokenizer ids in 151,936 rows).
    """
    return (tokenizer_size // multiple + 1) * multiple


def build_model(config: BootstrapConfig, tokenizer):
    """A freshly initialised ``Qwen3ForCausalLM`` sized by ``config`` for ``tokenizer``."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    model_config = Qwen3Config(
        vocab_size=padded_vocab_rows(len(tokenizer), config.vocab_multiple),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads or config.num_heads,
        head_dim=config.hidden_size // config.num_heads,
        max_position_embeddings=TEACHER_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(config.seed)
    model = Qwen3ForCausalLM(model_config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    return model


def lr_at(step: int, config: BootstrapConfig, time_fraction: float = 0.0) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio``.

    The decay runs over whichever is further along: the steps (``step / config.steps``) or, only
    when an explicit ``max_seconds`` budget is set, the time (``time_fraction`` = elapsed /
    ``max_seconds``), so a slow machine still anneals fully by that deadline. Without a budget (the
    default) the schedule depends on the step alone: deterministic for a seed on any machine.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    step_progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    progress = min(max(step_progress, time_fraction), 1.0)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def train(model, tokenizer, rows: list[Row], config: BootstrapConfig, enable_thinking: bool = False) -> dict:
    """Supervised training on prompt + response + EOS with loss on the response only.

    Returns:
        ``{"steps_done", "train_seconds", "train_cpu_seconds", "stopped_by_time", "schedule_by_time",
        "final_loss"}``: ``schedule_by_time`` says the machine was too slow for the steps, so the
        learning rate decayed over the time budget instead.
    """
    from opdlm.progress import progress

    examples = [encode_example(tokenizer, row, enable_thinking) for row in rows]
    schedule = batch_indices(len(examples), config.batch_size, config.steps, config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    model.train()
    start, cpu_start, ema_loss, steps_done = time.perf_counter(), time.process_time(), None, 0
    bar = progress(config.steps, "bootstrap teacher", "step", enabled=config.progress)
    ever_behind = False
    budget = config.max_seconds  # None (the default): a fixed schedule, the same teacher on any machine
    for step, indices in enumerate(schedule):
        elapsed = time.perf_counter() - start
        if budget is not None and elapsed >= budget:
            break
        # Behind (only under an explicit budget): at this pace the steps will not all fit it (judged
        # from step 10 on, once the first steps' one-time costs are diluted). A run that keeps pace uses
        # the plain step schedule, so it stays bit-for-bit reproducible.
        behind = budget is not None and step >= PACE_CHECK_FROM_STEP and elapsed / step * config.steps > budget
        ever_behind |= behind
        input_ids_BT, labels_BT = collate([examples[i] for i in indices], tokenizer.pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config, elapsed / budget if behind else 0.0)
        # Right padding under a causal mask never reaches real tokens, and padded labels are ignored,
        # so no attention mask is passed (which keeps SDPA on its fast causal path).
        loss = model(input_ids=input_ids_BT, labels=labels_BT).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        steps_done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.4f}")
    bar.close()
    model.eval()
    return {
        "steps_done": steps_done,
        "train_seconds": round(time.perf_counter() - start, 2),
        # CPU time of all threads: on a busy machine it shows the work done, independent of waiting.
        "train_cpu_seconds": round(time.process_time() - cpu_start, 2),
        "stopped_by_time": steps_done < config.steps,
        "schedule_by_time": ever_behind,
        "final_loss": round(ema_loss, 5) if ema_loss is not None else None,
    }


def evaluate_heldout(model, tokenizer, rows: list[Row], config: BootstrapConfig, enable_thinking: bool = False) -> dict:
    """Greedy autoregressive accuracy on ``rows`` (overall and per family).

    Returns:
        ``{"heldout_accuracy", "heldout_accuracy_by_family", "n_eval", "eval_seconds"}``.
    """
    from opdlm.data.prompting import encode_prompts, format_prompt
    from opdlm.data.synthetic import family_of, is_correct
    from opdlm.progress import track
    from opdlm.sampling.autoregressive import generate_autoregressive

    start = time.perf_counter()
    correct: dict[str, list[bool]] = {}
    starts = range(0, len(rows), config.eval_batch_size)
    for lo in track(starts, "score teacher", "batch", enabled=config.progress):
        batch = rows[lo : lo + config.eval_batch_size]
        texts = [format_prompt(tokenizer, r.question, r.domain, enable_thinking=enable_thinking) for r in batch]
        prompts = encode_prompts(tokenizer, texts)
        texts = generate_autoregressive(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens).texts
        for row, text in zip(batch, texts):
            correct.setdefault(family_of(row), []).append(is_correct(text, row.answer))
    flat = [c for cs in correct.values() for c in cs]
    return {
        "heldout_accuracy": round(sum(flat) / len(flat), 4) if flat else None,
        "heldout_accuracy_by_family": {f: round(sum(cs) / len(cs), 4) for f, cs in correct.items()},
        "n_eval": len(flat),
        "eval_seconds": round(time.perf_counter() - start, 2),
    }


def bootstrap_teacher(
    out_dir: str | Path, config: BootstrapConfig | None = None, overwrite: bool = False, enable_thinking: bool = False
) -> dict:
    """Train, score and save the tiny teacher.

    Args:
        out_dir: output directory; must be absent or empty unless ``overwrite``. It appears only when
            everything succeeded (written to a temporary sibling, then renamed).
        config: bootstrap settings (default :class:`BootstrapConfig`).
        enable_thinking: the chat template's thinking mode (the recipe's ``convert.enable_thinking``);
            the suite tokenizer's template has no such variable, so it changes nothing there.

    Returns:
        The metrics also written to ``out_dir/bootstrap_metrics.json``: training steps and seconds,
        final loss, held-out accuracy (overall and per family), parameter counts, vocabulary sizes.
    """
    from opdlm.data.synthetic import load_split
    from opdlm.data.tokenizer import build_tokenizer

    config = config or BootstrapConfig()
    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            tokenizer = build_tokenizer()
            model = build_model(config, tokenizer)
            metrics: dict = {
                "parameters": sum(p.numel() for p in model.parameters()),
                "non_embedding_parameters": sum(p.numel() for n, p in model.named_parameters() if "embed" not in n),
                "tokenizer_size": len(tokenizer),
                "embedding_rows": model.config.vocab_size,
            }
            metrics |= train(
                model, tokenizer, load_split("train", config.n_train, config.seed), config, enable_thinking
            )
            if config.n_eval:
                heldout = load_split("eval", config.n_eval, config.seed)
                metrics |= evaluate_heldout(model, tokenizer, heldout, config, enable_thinking)
            metrics["config"] = config.model_dump()
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
            check_weights_match_config(tmp, "bootstrapped teacher", where=str(out_dir))  # published only if it loads
    finally:
        torch.set_num_threads(previous_threads)
    return metrics
