"""Everything the loop needs before its first step: output folder, models, data, optimiser, resume.

Re-running on the same output folder resumes from its newest checkpoint (verified against its
manifest). The folder remembers a fingerprint of the recipe's training-relevant parts, so resuming
with a different recipe fails with one line instead of silently mixing two runs (how far to run,
``until_stage``, is not part of it: stopping after a stage and continuing is the same run).
Launched as several processes (``torchrun`` / ``deepspeed``), rank 0 prepares the folder and the
other ranks wait for its answer (:mod:`opdlm.train.distributed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from opdlm.config.recipe import Recipe
from opdlm.config.train import TrainConfig
from opdlm.data.schema import Row
from opdlm.errors import OpdlmError, SourceError
from opdlm.fsutil import atomic_write_text
from opdlm.models.attention import resolve_teacher_backend
from opdlm.models.student import Student, load_causal_lm, load_student, resolve_device, resolve_dtype
from opdlm.train import distributed
from opdlm.train.checkpoint import read_train_state
from opdlm.train.data import load_training_rows, recipe_training_rows
from opdlm.train.folder import CONVERTED_DIR, TrainingFolder
from opdlm.train.schedule import SCHEDULER_FILE, schedule_state
from opdlm.train.targets import CausalTarget, teacher_target


@dataclass(frozen=True)
class Counters:
    """Trainer state that a checkpoint must carry besides weights and optimiser.

    Frozen: the loop makes the next value from each step's outcome in one place
    (:func:`opdlm.train.loop.advance`); a resumed run reads it back from the checkpoint.
    """

    rollout_step: int = 0  # completed rollout steps; also the data cursor in units of rollout batches
    optimizer_steps: int = 0
    rollout_tokens: int = 0
    train_tokens: int = 0
    flops: float = 0.0  # total; the flops_* parts below add up to it
    skipped_rollouts: int = 0
    skipped_prompts: int = 0
    # FLOPs by part (opdlm.train.flops); after the older fields, so that their order is unchanged
    flops_rollout: float = 0.0
    flops_teacher: float = 0.0
    flops_student: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class RunContext:
    """The resolved run: config, models, data and optimiser (what stays the same from step to step).

    Attributes:
        cfg: the recipe's train section.
        out: the output folder (absolute).
        student: the student being trained.
        target: the teacher target the loss distils from (``train.target``: causal or future-aware); None for
            ``mdm_sft``.
        rows: the training rows (the prompt stream's source).
        stepper: the optimiser side (:class:`~opdlm.train.stepper.TorchStepper` or DeepSpeed's).
        seed: the training seed.
        device: where the student runs.
        autocast_dtype: bf16 autocast when the run's precision asks for it (master weights stay fp32).
        fingerprint: hash of what determines the trained weights (:func:`run_fingerprint`).
        rank: this process's rank.
        world_size: ranks in the run.
    """

    cfg: TrainConfig
    out: Path
    student: Student
    target: CausalTarget | None
    rows: list[Row]
    stepper: Any
    seed: int
    device: torch.device
    autocast_dtype: torch.dtype | None
    fingerprint: str
    rank: int = 0
    world_size: int = 1

    @property
    def checkpoints(self) -> Path:
        return TrainingFolder(self.out).checkpoints

    @property
    def teacher(self) -> torch.nn.Module | None:
        """The frozen teacher model (None for ``mdm_sft``)."""
        return self.target.model if self.target is not None else None

    def autocast(self):
        """bf16 autocast when the run's precision asks for it (master weights stay fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


@dataclass(frozen=True)
class Resume:
    """Where a run starts: the counters to continue from and the checkpoint they came from (None: a new run)."""

    counters: Counters = field(default_factory=Counters)
    checkpoint: Path | None = None


def run_fingerprint(recipe: Recipe, teacher: str | None, student: str | None, data: str | None) -> str:
    """A hash of what determines the trained weights (paths by value as given)."""
    blob = {
        "train": recipe.train.model_dump(mode="json"),
        "seed": recipe.seed,
        "convert": recipe.convert.model_dump(),
        "data": recipe.data.model_dump(),
        "teacher": recipe.teacher.weights_settings(),
        "overrides": {"teacher": teacher, "student": student, "data": data},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _check_out(out: Path, fingerprint: str) -> None:
    run_file = TrainingFolder(out).run_file
    if run_file.is_file():
        previous = json.loads(run_file.read_text()).get("fingerprint")
        if previous != fingerprint:
            raise OpdlmError(
                f"{out} holds a run of a different recipe (fingerprint {previous} != {fingerprint}); "
                "use a new --out, or delete the folder to start over"
            )
    elif out.exists() and any(p.name != CONVERTED_DIR and not p.name.startswith(".") for p in out.iterdir()):
        # (dot-names are temporaries of an interrupted conversion; they never hold results)
        raise OpdlmError(f"output directory {out} is not empty and holds no opdlm training run; use a new --out")


def _student_dir(ctx_out: Path, recipe: Recipe, teacher_dir: Path | None, student: str | None) -> Path:
    """The student to start from: ``--student``, or the teacher converted into ``OUT/converted``.

    ``OUT/converted`` is derived from the teacher, so one whose weights do not read back (left by an
    older version that copied a corrupt teacher unread) is converted again rather than reused.
    """
    from opdlm.models.model_dir import check_weight_files

    if student:
        return Path(student)
    converted = TrainingFolder(ctx_out).converted
    if (converted / "config.json").is_file():
        try:
            check_weight_files(converted, "converted student")
            return converted
        except SourceError:
            pass
    if teacher_dir is None:
        raise OpdlmError("no --student given and no teacher to convert")
    from opdlm.sources.convert import convert_teacher

    return convert_teacher(
        teacher_dir,
        converted,
        block_size=recipe.convert.block_size,
        logit_shift=recipe.convert.logit_shift,
        sampler=recipe.sampler,
        prompt_attention=recipe.convert.prompt_attention,
        enable_thinking=recipe.convert.enable_thinking,
        overwrite=True,
    )


def _shown(value):
    """A config value as config.json spells it (booleans lower-case)."""
    return str(value).lower() if isinstance(value, bool) else value


def _check_prompt_format(meta, recipe: Recipe, student_dir: Path) -> None:
    """The student's stored prompt geometry and thinking mode must be the recipe's ``convert`` values."""
    for key, stored, wanted in (
        ("prompt_attention", meta.prompt_attention, recipe.convert.prompt_attention),
        ("enable_thinking", meta.enable_thinking, recipe.convert.enable_thinking),
    ):
        if stored != wanted:
            raise OpdlmError(
                f"{student_dir}: the student has {key}={_shown(stored)} (config.json; absent = the pre-key default) "
                f"but the recipe's convert.{key} is {_shown(wanted)}; convert the teacher again or change the recipe"
            )


def _check_stored_prompt_format(student: str | None, recipe: Recipe) -> None:
    """:func:`_check_prompt_format` on ``--student``'s config.json alone, before data or teacher are fetched.

    A student without a readable config.json is left to the checks that load it (they name what is wrong).
    """
    from types import SimpleNamespace

    from opdlm.models.geometry import LEGACY_PROMPT_ATTENTION

    if not student:
        return
    try:
        config = json.loads((Path(student) / "config.json").read_text())
    except (OSError, ValueError):
        return
    if isinstance(config, dict):
        missing = [k for k in ("block_size", "mask_token_id") if config.get(k) is None]
        if missing:  # e.g. the teacher itself: its prompt format would be the wrong thing to talk about
            raise OpdlmError(
                f"--student {student} is not a converted student (its config.json has no {' or '.join(missing)}; "
                f"a plain causal LM such as the teacher); convert it first (`opdlm convert --teacher {student} "
                "--out DIR`, then --student DIR), or leave --student out to convert the teacher into OUT/converted"
            )
        stored = SimpleNamespace(
            prompt_attention=config.get("prompt_attention") or LEGACY_PROMPT_ATTENTION,
            enable_thinking=config.get("enable_thinking", False),
        )
        _check_prompt_format(stored, recipe, Path(student))


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _prepare_out(
    out: Path, fingerprint: str, recipe: Recipe, teacher_dir: Path | None, student: str | None
) -> tuple[Path, Path | None]:
    """Check/create the output folder; returns ``(student_dir_to_start_from, newest_checkpoint)`` (rank 0's job)."""
    _check_out(out, fingerprint)
    ckpt = TrainingFolder(out).latest_checkpoint()
    start_dir = ckpt if ckpt is not None else _student_dir(out, recipe, teacher_dir, student)
    out.mkdir(parents=True, exist_ok=True)
    return start_dir, ckpt


def _write_run_file(out: Path, fingerprint: str, recipe: Recipe) -> None:
    """Mark ``out`` as this recipe's run, once its models have loaded (rank 0's job)."""
    run_file = TrainingFolder(out).run_file
    if not run_file.is_file():
        atomic_write_text(run_file, json.dumps({"fingerprint": fingerprint, "recipe": recipe.name}, indent=1))


def check_inputs(recipe: Recipe, rows: list[Row], teacher_dir: Path | None, student: str | None) -> None:
    """Fail before anything is written unless the student to start from loads and some row can be trained on.

    A row is skipped when its prompt exceeds ``train.max_prompt_tokens`` (or, for ``mdm_sft``, when it
    has no response); a run whose every row is skipped would take no optimizer step and still say it
    trained, so it is refused here with the numbers that explain it.
    """
    from transformers import AutoTokenizer

    from opdlm.models.model_dir import check_model_dir
    from opdlm.train.rollout import encode_rows

    cfg = recipe.train
    source = check_model_dir(Path(student), "student") if student else teacher_dir
    if source is None:
        raise OpdlmError("no --student given and no teacher to convert")
    if cfg.objective == "mdm_sft" and not any(r.response for r in rows):
        raise OpdlmError("train.objective mdm_sft needs rows with a response; none of the training rows has one")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise SourceError(f"could not load the tokenizer from {source}: {str(exc).splitlines()[0]}") from None
    # the student's thinking mode must equal the recipe's (checked once it loads), so the recipe's counts here
    thinking = recipe.convert.enable_thinking
    prompts, kept = encode_rows(tokenizer, rows, cfg.math_suffix, cfg.max_prompt_tokens, thinking)
    if not kept:
        shortest = min((len(p) for p in encode_rows(tokenizer, rows, cfg.math_suffix, 10**12, thinking)[0]), default=0)
        raise OpdlmError(
            f"no training prompt fits train.max_prompt_tokens ({cfg.max_prompt_tokens}): all {len(rows)} are longer "
            f"(the shortest has {shortest} tokens); raise train.max_prompt_tokens or pass other --data"
        )


def setup_run(
    recipe: Recipe, out: str | Path, teacher: str | None = None, student: str | None = None, data: str | None = None
) -> tuple[RunContext, Resume]:
    """Resolve paths, convert or load the student, load teacher and data, build the optimiser, resume.

    Returns:
        ``(ctx, resume)``: the run, and the counters to continue from (restored from the newest
        checkpoint, with optimiser state and RNG, when the folder holds one).
    """
    from opdlm.fsutil import check_output_location

    cfg, out = recipe.train, Path(out).absolute()
    inputs = {"--teacher": teacher or recipe.teacher.path, "--student": student, "--data": data or recipe.data.path}
    check_output_location(out, inputs, flag="--out", replaces=False)  # a run never writes into what it reads
    _check_stored_prompt_format(student, recipe)
    fingerprint = run_fingerprint(recipe, teacher, student, data)
    seed = cfg.seed if cfg.seed is not None else recipe.seed
    device = resolve_device(cfg.device)
    launched_rank, launched_size = distributed.launched_world()
    if device.type == "cuda" and launched_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if cfg.deepspeed or launched_size > 1:
        distributed.init_process_group(bool(cfg.deepspeed), device)
    rank, world_size = distributed.rank(), distributed.world_size()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    random.seed(seed)

    # every input is checked before OUT is touched: a bad one leaves OUT exactly as it was
    rows = load_training_rows(recipe.data.source, data or recipe.data.path, cfg.num_prompts, seed, recipe.data.skills)
    needs_teacher = cfg.objective == "opd"
    teacher_dir = None
    if needs_teacher or not student or recipe.data.responses == "teacher_greedy":
        from opdlm.sources.resolve import resolve_teacher  # builtin:tiny is built here, with the recipe's settings

        teacher_dir = distributed.on_main(lambda: resolve_teacher(recipe, teacher))
    if recipe.data.responses == "teacher_greedy":  # the teacher's completions of these prompts (cached by content)
        rows = distributed.on_main(lambda: recipe_training_rows(recipe, seed, data, teacher_dir))
    distributed.on_main(lambda: check_inputs(recipe, rows, teacher_dir, student))
    distributed.on_main(lambda: _check_out(out, fingerprint))

    created = not out.exists()
    try:
        start_dir, ckpt = distributed.on_main(lambda: _prepare_out(out, fingerprint, recipe, teacher_dir, student))
        student_obj = load_student(start_dir, device=str(device), dtype="fp32", backend=cfg.attn_backend)
        _check_prompt_format(student_obj.meta, recipe, start_dir)
        teacher_model, teacher_backend = None, None
        if needs_teacher:
            teacher_dtype = "bf16" if _autocast_dtype(cfg, device) is not None else "fp32"
            # an offloaded teacher is loaded on the CPU: ZeRO-3 moves each layer to the device when it runs
            teacher_device = "cpu" if cfg.teacher_offload else str(device)
            backend = resolve_teacher_backend(
                cfg.teacher_attn_backend, device, resolve_dtype(teacher_dtype), cfg.attn_backend
            )
            teacher_model, _ = load_causal_lm(teacher_dir, teacher_device, teacher_dtype, backend)
            teacher_model.requires_grad_(False)
            teacher_model.eval()
            teacher_backend = teacher_model.config._attn_implementation
        distributed.on_main(lambda: _write_run_file(out, fingerprint, recipe))
    except BaseException:
        if created and rank == 0:  # a folder this call made holds nothing of the user's
            shutil.rmtree(out, ignore_errors=True)
        raise
    if cfg.gradient_checkpointing:
        student_obj.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    if cfg.deepspeed:
        from opdlm.train.deepspeed_engine import make_deepspeed_stepper

        stepper, teacher_model = make_deepspeed_stepper(student_obj, teacher_model, cfg)
    else:
        from opdlm.train.stepper import TorchStepper

        stepper = TorchStepper(student_obj.model, cfg)
    ctx = RunContext(
        cfg,
        out,
        student_obj,
        teacher_target(teacher_model, teacher_backend, cfg) if teacher_model is not None else None,
        rows,
        stepper,
        seed,
        device,
        _autocast_dtype(cfg, device),
        fingerprint,
        rank=rank,
        world_size=world_size,
    )
    return ctx, (_restore(ctx, ckpt) if ckpt is not None else Resume())


def _check_scheduler(ckpt: Path, cfg: TrainConfig, rollout_step: int) -> None:
    """The schedule stored in the checkpoint must be the one this run continues."""
    stored = json.loads((ckpt / SCHEDULER_FILE).read_text()) if (ckpt / SCHEDULER_FILE).is_file() else None
    expected = schedule_state(cfg, rollout_step)
    if stored != expected:
        raise OpdlmError(f"checkpoint {ckpt}: its learning-rate schedule {stored} does not match this run's {expected}")


def _restore(ctx: RunContext, ckpt: Path) -> Resume:
    """Load optimiser state and RNG from ``ckpt`` (already verified); returns its counters."""
    state = read_train_state(ckpt)
    if state.get("fingerprint") != ctx.fingerprint:
        raise OpdlmError(f"checkpoint {ckpt} belongs to a different recipe; use a new --out")
    counters = Counters(**state["counters"])
    # plain PyTorch state is the same on every rank, so any world size may resume it; DeepSpeed's is per rank
    if ctx.cfg.deepspeed and state.get("world_size", 1) != ctx.world_size:
        raise OpdlmError(
            f"checkpoint {ckpt} was written by {state.get('world_size', 1)} DeepSpeed ranks; resume with the same "
            "number "
            f"(this run has {ctx.world_size})"
        )
    _check_scheduler(ckpt, ctx.cfg, counters.rollout_step)
    ctx.stepper.load(ckpt)
    rng_file = ckpt / f"rng_rank{ctx.rank}.pt"
    if not rng_file.is_file():
        raise OpdlmError(f"checkpoint {ckpt} has no {rng_file.name}: it was written by a run with fewer ranks")
    rng = torch.load(rng_file, weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if torch.cuda.is_available() and rng.get("cuda") is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])
    return Resume(counters, ckpt)
