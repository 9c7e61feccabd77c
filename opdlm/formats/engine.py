"""Export a student for a serving engine that speaks the SDAR block-diffusion format.

An :class:`Engine` (:mod:`opdlm.formats.sglang`, :mod:`opdlm.formats.lmdeploy`) says which
``config.json`` fields the engine reads (a table taken from its source), the mask id it hard-codes,
and how our sampler settings become its own. :func:`export_student` writes a directory the engine
serves: ``config.json`` (Qwen3 numbers under the SDAR class name), the weights unchanged, the
tokenizer, the engine's settings file, ``export.json`` and a README with the launch command and the
mapping. A student the engine would silently serve differently is refused with one line
(:class:`Refusal`); where only the block alignment differs, the export says so.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from opdlm.errors import OpdlmError
from opdlm.formats.serving import Engine, Refusal

ENGINE_ARCHITECTURE = "SDARForCausalLM"
EXPORT_SUMMARY = "export.json"


def engines() -> dict[str, Engine]:
    from opdlm.formats import lmdeploy, sglang

    return {e.name: e for e in (sglang.ENGINE, lmdeploy.ENGINE)}


def get_engine(name: str) -> Engine:
    table = engines()
    if name not in table:
        raise OpdlmError(f"--format {name!r} is not an export format (choose from {', '.join(table)})")
    return table[name]


def engine_config(student_config: dict, engine: Engine) -> dict:
    """The student's ``config.json`` as the engine reads it (same numbers, the engine's names).

    RoPE is written both ways: ``rope_parameters`` (transformers 5) and top-level ``rope_theta`` /
    ``rope_scaling`` (what the engines' SDAR classes ``getattr`` with a 10000 default).
    """
    out = {k: v for k, v in student_config.items() if k not in ("auto_map", "transformers_version")}
    out["model_type"] = engine.model_type
    out["architectures"] = [ENGINE_ARCHITECTURE]
    rope = dict(out.get("rope_parameters") or {})
    if "rope_theta" not in out:
        out["rope_theta"] = rope.get("rope_theta", 10000.0)
    if "rope_scaling" not in out:
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        out["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    out["use_sliding_window"] = bool(out.get("use_sliding_window", False))
    out.setdefault("attention_bias", False)
    out.setdefault("head_dim", out["hidden_size"] // out["num_attention_heads"])
    for key in ("bos_token_id", "pad_token_id", "sliding_window"):
        out.setdefault(key, None)
    return out


def field_problems(config: dict, engine: Engine) -> list[str]:
    """Every field of ``engine.config_fields`` that is absent or has the wrong value."""
    problems = []
    for name, (want, where) in engine.config_fields.items():
        if name not in config:
            problems.append(f"{name} is missing (read by {where})")
        elif want is not None and config[name] != want:
            problems.append(f"{name} is {config[name]!r}, {engine.name} needs {want!r} ({where})")
    return problems


def _student_sampler(config: dict, overrides: dict):
    from opdlm.config.sampler import SamplerConfig

    defaults = config.get("sampler_defaults") or {}
    sampler = SamplerConfig.model_validate({**defaults, "block_size": int(config["block_size"])})
    return sampler.with_overrides(**{k: v for k, v in overrides.items() if k != "block_size"})


def check_student(config: dict, engine: Engine, where: str) -> None:
    """Refuse what the engine would mis-serve: another mask id, a logit shift, a non-Qwen3 network."""
    if config.get("block_size") is None or config.get("mask_token_id") is None:
        raise OpdlmError(f"{where} is not a converted student (config.json lacks block_size or mask_token_id)")
    if config.get("model_type") != "qwen3":
        raise Refusal(
            f"model_type: {engine.name} serves SDAR models, which are Qwen3 networks; the student is "
            f"{config.get('model_type')!r}"
        )
    if int(config["mask_token_id"]) != engine.mask_id:
        raise Refusal(
            f"mask_token_id: the student's is {config['mask_token_id']}; {engine.name} hard-codes {engine.mask_id}"
        )
    if config.get("logit_shift"):
        raise Refusal(f"logit_shift: the student predicts token j at position j-1; {engine.name} reads position j")
    if int(config["vocab_size"]) <= engine.mask_id:
        raise Refusal(
            f"vocab_size: {config['vocab_size']} rows leave no embedding for {engine.name}'s mask id {engine.mask_id}"
        )


def geometry_notes(config: dict, block_size: int, engine: Engine) -> list[str]:
    """What differs between the student's block geometry and the engine's (said, not refused)."""
    notes = [
        f"alignment: {engine.name} aligns blocks to absolute position 0 (the prompt's last block is finished by the "
        f"first response tokens); opdlm counts blocks back from the response start. They agree exactly when the "
        f"prompt length is a multiple of {block_size}; otherwise the engine's blocks are shifted "
        "(benchmarks/serve_parity.py measures the cost)"
    ]
    if config.get("prompt_attention", "causal") != "block":
        notes.append(f"prompt_attention: the student reads its prompt causally; {engine.name} prefills it block-wise")
    return notes


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the weights are written once by rename, so a hard link shares them safely
    except OSError:
        shutil.copy2(src, dst)


def export_student(
    student: str | Path,
    out: str | Path,
    engine_name: str,
    overrides: dict | None = None,
    overwrite: bool = False,
    source: str | None = None,
) -> tuple[Path, list[str]]:
    """Write ``student`` as a directory ``engine_name`` serves.

    Args:
        student: a converted student's local directory (``opdlm export`` resolves ``hf://`` and
            ``s3://`` names first, :func:`opdlm.sources.resolve.resolve_model_source`).
        out: output directory (atomic).
        engine_name: ``sglang`` or ``lmdeploy``.
        overrides: sampler fields to serve with instead of the student's defaults (None = keep).
        source: how the student was named, recorded in ``export.json`` and the README (default ``student``).

    Returns:
        ``(path, notes)``.

    Raises:
        Refusal: the engine would serve the student differently (one line naming the field).
    """
    from opdlm.formats.common import TOKENIZER_FILES, read_json, weight_files
    from opdlm.fsutil import atomic_dir, check_output_location, published_path
    from opdlm.models.model_dir import check_model_dir
    from opdlm.models.student import verify_student_dir

    check_output_location(out, {"--model": student}, flag="--out")
    engine = get_engine(engine_name)
    src = check_model_dir(Path(student).expanduser(), what="student")
    verify_student_dir(src)  # an engine would fail on it later, or serve garbage
    config = read_json(src / "config.json")
    check_student(config, engine, str(src))
    sampler = _student_sampler(config, overrides or {})
    settings, notes = engine.settings(sampler)
    notes = notes + geometry_notes(config, sampler.block_size, engine)
    exported = engine_config(config, engine)
    exported["opdlm_export"] = {"engine": engine.name, "sampler": sampler.model_dump(), engine.settings_file: settings}
    problems = field_problems(exported, engine)
    if problems:
        raise Refusal(f"{src}/config.json: {problems[0]}")

    files = weight_files(src)
    with atomic_dir(out, overwrite=overwrite, inputs={"--model": src}, flag="--out") as tmp:
        for path in files:
            _link_or_copy(path, tmp / path.name)
        for name in (*TOKENIZER_FILES, "generation_config.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        (tmp / "config.json").write_text(json.dumps(exported, indent=2) + "\n")
        final = Path(published_path(Path(out).absolute()))  # where it is served from, once published
        settings_path = final / engine.settings_file
        if engine.settings_file.endswith(".yaml"):
            import yaml

            (tmp / engine.settings_file).write_text(yaml.safe_dump(settings, sort_keys=False))
        else:
            (tmp / engine.settings_file).write_text(json.dumps(settings, indent=2) + "\n")
        command = engine.launch(str(final), str(settings_path), settings)
        summary = {
            "engine": engine.name,
            "student": str(student if source is None else source),
            "launch": command,
            "sampler": sampler.model_dump(),
            "settings": settings,
            "notes": notes,
        }
        (tmp / EXPORT_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / "README.md").write_text(render_readme(engine, summary))
    return Path(out).absolute(), notes


def render_readme(engine: Engine, summary: dict) -> str:
    """The export's README: launch command, a request, the sampler mapping, what differs."""
    s = summary["sampler"]
    request = (
        '{"input_ids": [...], "sampling_params": {"max_new_tokens": 256, "temperature": 0}}'
        if engine.name == "sglang"
        else '{"input_ids": [...], "max_tokens": 256, "temperature": 0}'
    )
    port = 30000 if engine.name == "sglang" else 23333
    per_request = (
        "`max_new_tokens` -> `sampling_params.max_new_tokens`; `temperature`, `top_k`, `top_p`: LowConfidence "
        "ignores them (argmax), so only greedy serving matches"
        if engine.name == "sglang"
        else "`max_new_tokens` -> `max_tokens`; `temperature` -> `temperature` (0 = greedy); `top_k` -> `top_k`; "
        "`top_p` -> `top_p`"
    )
    mapping = "\n".join(f"| `{k}` | `{v}` |" for k, v in summary["settings"].items())
    notes = "\n".join(f"- {n}" for n in summary["notes"])
    return f"""# {engine.name} export of an opdlm student

Exported from `{summary["student"]}` by `opdlm export --format {engine.name}`. The weights are the
student's, unchanged; `config.json` carries the same Qwen3 numbers under `architectures:
["{ENGINE_ARCHITECTURE}"]` (`model_type: {engine.model_type}`), which {engine.name} serves as a
block-diffusion model with mask id {engine.mask_id}.

## Launch

```bash
{summary["launch"]}
```

Request (prompt token ids rendered with this directory's tokenizer and chat template, non-thinking
mode as opdlm renders them):

```bash
curl -s http://127.0.0.1:{port}/generate -H 'Content-Type: application/json' -d '{request}'
```

## Our sampler -> {engine.name}

The student's sampler: block_size {s["block_size"]}, {s["denoise_steps_per_block"]} denoising steps per
block, {s["remasking"]} remasking, threshold {s["threshold"]}, temperature {s["temperature"]}.

| {engine.name} setting | value |
| --- | --- |
{mapping}

Per request: {per_request}. Stop at EOS: both engines stop at the tokenizer's EOS as opdlm does.

## What differs

{notes}

`benchmarks/serve_parity.py --format {engine.name}` compares this server's greedy tokens with
opdlm's sampler on 50 prompts.
"""
