"""Writes that must never destroy what a command did not create, and successes reported only once the
output is checked (issue 26: items 1, 3, 9, 10, 11 and their classes).

Every case runs the real CLI (:func:`opdlm.cli.main.main`, the console script's body; a subprocess
where a signal is sent) and asserts the exit code, the one ``error:`` line and what is on disk after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opdlm.cli.main import main
from opdlm.errors import OpdlmError
from opdlm.fsutil import atomic_dir, check_output_location, published_path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
RUN = [
    "train.prompts_per_rollout=4",
    "train.optimizer_steps_per_rollout=1",
    "train.micro_batch_size=2",
    "train.num_prompts=16",
    "train.checkpoint_every=1",
    "train.stages=[{name: short, rollout_steps: 1, length: {start: 8, end: 8}}]",
]


def error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its size: equal snapshots mean nothing was deleted or replaced."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the shared guard ---------------------------------------------------------------------------------------


def test_an_output_is_never_an_input_holds_one_or_lies_inside_one(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    inputs = {"--train-dir": run}
    for out, said in [
        (run, "is the --train-dir itself"),
        (tmp_path / "runs", "holds the --train-dir"),
        (tmp_path, "holds the --train-dir"),
        (run / "student", "is inside the --train-dir"),
    ]:
        with pytest.raises(OpdlmError, match=said):
            check_output_location(out, inputs)
    check_output_location(tmp_path / "elsewhere", inputs)
    check_output_location(tmp_path / "runs", inputs, replaces=False)  # a file written beside the run is fine
    check_output_location(tmp_path / "x", {"--teacher": "hf://Qwen/Qwen3-4B", "--data": None})  # not local paths
    monkeypatch.chdir(run)
    with pytest.raises(OpdlmError, match="holds the current directory"):
        check_output_location(tmp_path / "runs", {})


def test_atomic_dir_refuses_a_folder_it_did_not_create_and_records_final_paths(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OpdlmError, match="already exists and is not empty \\(pass --overwrite"), atomic_dir(out):
        pass
    assert (out / "notes.txt").read_text() == "mine"
    with atomic_dir(tmp_path / "outer") as outer, atomic_dir(outer / "inner") as inner:
        assert published_path(inner / "a.json") == (tmp_path / "outer" / "inner" / "a.json").absolute()
        assert published_path(str(outer / "b")) == str((tmp_path / "outer" / "b").absolute())
        assert published_path("elsewhere/c") == "elsewhere/c"
    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "killed") as tmp:
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "outer"]  # nothing partial, no temporaries


# --- item 1: `opdlm stage export` ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tiny_teacher_dir, tmp_path_factory) -> Path:
    """A real one-step `opdlm train` folder inside ``runs/`` (its parent is what item 1 deleted)."""
    run = tmp_path_factory.mktemp("export") / "runs" / "run"
    args = ["train", "--config", TINY, "--out", run, "--teacher", tiny_teacher_dir, "--quiet", *RUN]
    assert main([str(a) for a in args]) == 0
    return run


@pytest.mark.parametrize(
    "out, plots, overwrite, said",
    [
        ("runs", "plots", True, "--out runs holds the --train-dir"),  # deleted the whole run before
        ("runs", "plots", False, "--out runs holds the --train-dir"),
        ("runs/run", "plots", True, "--out runs/run is the --train-dir itself"),
        ("runs/run/student", "plots", True, "--out runs/run/student is inside the --train-dir"),
        ("student", "runs/run", False, "--plots runs/run is the --train-dir itself"),
        ("precious", "plots", False, "--out precious already exists and is not empty (pass --overwrite"),
    ],
    ids=["parent-overwrite", "parent", "itself", "inside", "plots-itself", "not-empty"],
)
def test_stage_export_never_replaces_its_run_or_a_folder_it_did_not_create(
    finished_run, out, plots, overwrite, said, capsys, monkeypatch
):
    root = finished_run.parents[1]
    monkeypatch.chdir(root)
    (root / "precious").mkdir(exist_ok=True)
    (root / "precious" / "notes.txt").write_text("keep me")
    before, listing = snapshot(finished_run), sorted(p.name for p in root.iterdir())
    args = ["stage", "export", "--train-dir", "runs/run", "--out", out, "--plots", plots]
    assert main(args + (["--overwrite"] if overwrite else [])) == 2
    line = error_line(capsys)
    assert said in line, line
    assert snapshot(finished_run) == before
    assert sorted(p.name for p in root.iterdir()) == listing
    assert (root / "precious" / "notes.txt").read_text() == "keep me"


def test_stage_export_replaces_its_own_output_only_when_asked(finished_run, tmp_path, capsys):
    args = ["stage", "export", "--train-dir", str(finished_run), "--out", str(tmp_path / "s"), "--plots"]
    assert main([*args, str(tmp_path / "p")]) == 0
    assert (tmp_path / "s" / "config.json").is_file() and (tmp_path / "p" / "train_curves.png").is_file()
    capsys.readouterr()
    assert main([*args, str(tmp_path / "p")]) == 2
    assert "already exists and is not empty" in error_line(capsys)
    assert main([*args, str(tmp_path / "p"), "--overwrite"]) == 0


# --- the class: every command that writes a folder or a file ---------------------------------------------------


@pytest.fixture(scope="module")
def zoo(tiny_teacher_dir, tiny_student_dir, tmp_path_factory) -> Path:
    """``root/zoo/{teacher,student}`` and two user files beside it, each command's inputs."""
    root = tmp_path_factory.mktemp("inputs")
    shutil.copytree(tiny_teacher_dir, root / "zoo" / "teacher")
    shutil.copytree(tiny_student_dir, root / "zoo" / "student")
    (root / "answers.samples.jsonl").write_text('{"id": "0", "completion": "1"}\n')  # completions to score
    (root / "rows.jsonl").write_text('{"id": "0", "question": "1+1=", "answer": "2", "domain": "math"}\n')
    return root


# (arguments with {root}, what the one line says); every one would have replaced or deleted an input
WRITES_OVER_INPUTS = {
    "convert-onto-teacher": (
        "convert --teacher {root}/zoo/teacher --out {root}/zoo/teacher --overwrite",
        "--out .*teacher is the --teacher itself",
    ),
    "convert-holding-teacher": (
        "convert --teacher {root}/zoo/teacher --out {root}/zoo --overwrite",
        "holds the --teacher",
    ),
    "export-onto-student": (
        "export --model {root}/zoo/student --format sglang --out {root}/zoo/student --overwrite",
        "is the --model itself",
    ),
    "stage-engines-holding-student": (
        f"stage engines --recipe {TINY} --student {{root}}/zoo/student --out {{root}}/zoo --overwrite",
        "holds the --student",
    ),
    "stage-convert-inside-teacher": (
        f"stage convert --recipe {TINY} --teacher {{root}}/zoo/teacher --out {{root}}/zoo/teacher/s --overwrite",
        "is inside the --teacher",
    ),
    "stage-teacher-holding-teacher": (
        f"stage teacher --recipe {TINY} --out {{root}}/zoo --overwrite teacher.path={{root}}/zoo/teacher",
        "holds the teacher",
    ),
    "stage-data-onto-source": (
        f"stage data --recipe {TINY} --out {{root}}/rows.jsonl data.source={{root}}/rows.jsonl",
        "is the data.source itself",
    ),
    "eval-json-inside-model": (
        "eval --model {root}/zoo/student --benchmark synthetic --json-out {root}/zoo/student/config.json",
        "is inside the --model",
    ),
    "eval-sweep-holding-model": (
        "eval --model {root}/zoo/student --sweep --out-dir {root}/zoo --overwrite --limit 2",
        "holds the --model",
    ),
    "score-samples-onto-completions": (
        "score --benchmark synthetic --completions {root}/answers.samples.jsonl --json-out {root}/answers.json",
        "samples file .*is the --completions itself",
    ),
    "train-inside-teacher": (
        f"train --config {TINY} --out {{root}}/zoo/teacher/run --teacher {{root}}/zoo/teacher {' '.join(RUN[:-1])}",
        "is inside the --teacher",
    ),
    "bootstrap-holding-cwd": ("teacher bootstrap --out {root} --overwrite", "holds the current directory"),
}


@pytest.mark.parametrize("case", list(WRITES_OVER_INPUTS))
def test_no_command_writes_over_its_input_even_with_overwrite(case, zoo, capsys, monkeypatch):
    import re
    import shlex

    args, said = WRITES_OVER_INPUTS[case]
    before = snapshot(zoo)
    monkeypatch.chdir(zoo)
    assert main(shlex.split(args.format(root=zoo))) == 2
    line = error_line(capsys)
    assert re.search(said, line), line
    assert snapshot(zoo) == before  # nothing replaced, deleted or added


def test_stage_engines_and_eval_publish_whole_folders_and_refuse_a_foreign_one(tiny_student_dir, tmp_path, capsys):
    out = tmp_path / "export"
    args = ["stage", "engines", "--recipe", str(TINY), "--student", str(tiny_student_dir), "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "exports.json").read_text())
    for fmt, result in results.items():  # recorded paths are the published ones, never a temporary folder
        assert result.startswith("refused: ") or result == str(out.absolute() / fmt)
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    capsys.readouterr()
    assert main(args) == 2 and "already exists and is not empty" in error_line(capsys)
    assert main([*args, "--overwrite"]) == 0


# --- item 3: success only once the output loads ----------------------------------------------------------------


def test_a_model_missing_a_shard_is_refused_before_anything_is_written(tiny_teacher_dir, tmp_path, capsys):
    """A teacher saved in shards, then its last shard lost (an interrupted download): `convert` said
    "converted" and `generate` failed on the student; now both refuse it in one line."""
    from transformers import AutoModelForCausalLM

    teacher = tmp_path / "sharded"
    shutil.copytree(tiny_teacher_dir, teacher)
    (teacher / "model.safetensors").unlink()
    AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).save_pretrained(teacher, max_shard_size="20KB")
    assert main(["convert", "--teacher", str(teacher), "--out", str(tmp_path / "student")]) == 0  # whole: fine
    capsys.readouterr()
    for folder in (teacher, tmp_path / "student"):
        shards = sorted(folder.glob("model-*.safetensors"))
        assert len(shards) > 1
        shards[-1].unlink()
    out = tmp_path / "again"
    assert main(["convert", "--teacher", str(teacher), "--out", str(out)]) == 2
    line = error_line(capsys)
    assert "model.safetensors.index.json puts" in line and "which is not in" in line, line
    assert not out.exists()
    assert main(["generate", "--model", str(tmp_path / "student"), "--prompt", "1+1="]) == 2  # one line, not a load
    assert "fetch the missing shard" in error_line(capsys)


def test_a_checkpoint_whose_config_contradicts_its_weights_is_not_imported_nor_exported(
    tiny_student_dir, tmp_path, capsys
):
    from opdlm.testing.blockdiff import make_qwen3_vocab_teacher, make_sdar_checkpoint

    sdar = make_sdar_checkpoint(tmp_path / "sdar", make_qwen3_vocab_teacher(tmp_path / "teacher"))
    config = json.loads((sdar / "config.json").read_text())
    (sdar / "config.json").write_text(json.dumps({**config, "intermediate_size": 2 * config["intermediate_size"]}))
    capsys.readouterr()  # the checkpoint's own save
    assert main(["convert", "--teacher", str(sdar), "--out", str(tmp_path / "imported")]) == 2
    line = error_line(capsys)
    assert "mlp.gate_proj.weight' is [32, 16] in model.safetensors but config.json's sizes make it [64, 16]" in line
    assert not (tmp_path / "imported").exists()

    bad = tmp_path / "bad-student"
    shutil.copytree(tiny_student_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    layers = config["num_hidden_layers"] + 1  # one layer more than the weights hold
    config.update(num_hidden_layers=layers, layer_types=config["layer_types"][:1] * layers)
    (bad / "config.json").write_text(json.dumps(config))
    for args in (
        ["export", "--model", bad, "--format", "sglang", "--out", tmp_path / "e"],
        ["generate", "--model", bad, "--prompt", "1+1="],
    ):
        assert main([str(a) for a in args]) == 2, args
        assert "that config.json asks for is in no safetensors file" in error_line(capsys)
    assert not (tmp_path / "e").exists()
    config["layer_types"] = config["layer_types"][:-1]  # a config transformers itself refuses to build
    (bad / "config.json").write_text(json.dumps(config))
    assert main(["generate", "--model", str(bad), "--prompt", "1+1="]) == 2
    assert "config.json does not build a model: " in error_line(capsys)


# --- item 9: an interrupted sweep leaves no folder --------------------------------------------------------------


# slow: a CLI subprocess (torch and transformers imports, a model load) before the signal: 36 to 97 s
# measured while eight sessions shared this 2-core machine
@pytest.mark.slow
def test_sigterm_during_a_sweep_leaves_no_folder(tiny_student_dir, tmp_path):
    out = tmp_path / "sweep"
    thresholds = ",".join(f"{t / 20:g}" for t in range(20, 0, -1))  # 20 points: the signal lands mid-sweep
    cmd = [sys.executable, "-m", "opdlm.cli.main", "eval", "--model", str(tiny_student_dir), "--benchmark"]
    cmd += ["synthetic", "--sweep", "--out-dir", str(out), "--thresholds", thresholds, "--limit", "4", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not list(tmp_path.glob(".sweep.tmp-*/points/*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # neither a partial --out-dir nor a temporary one


# --- item 10: a tokenizer saved by transformers 5 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def a2d_resaved(tmp_path_factory) -> Path:
    """A divelab a2d-qwen3 checkpoint (real Qwen3 tokenizer) whose tokenizer transformers 5 saved again:
    the added tokens live in tokenizer.json only; tokenizer_config.json has no added_tokens_decoder."""
    from transformers import AutoTokenizer

    from opdlm.testing.blockdiff import make_divelab_checkpoint, make_qwen3_vocab_teacher

    root = tmp_path_factory.mktemp("a2d5")
    ckpt = make_divelab_checkpoint(root / "a2d", make_qwen3_vocab_teacher(root / "teacher"))
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        (ckpt / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(ckpt)
    assert "added_tokens_decoder" not in json.loads((ckpt / "tokenizer_config.json").read_text())
    return ckpt


def test_an_a2d_tokenizer_saved_by_transformers_5_imports(a2d_resaved, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "student"
    assert main(["convert", "--teacher", str(a2d_resaved), "--out", str(out)]) == 0
    assert "mask_token_id=151669 from" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["mask_token_id"] == 151669
    assert AutoTokenizer.from_pretrained(out).mask_token_id == 151669


@pytest.mark.parametrize("fault", ["missing", "two-ids"])
def test_a_mask_token_really_missing_or_at_two_ids_is_refused(a2d_resaved, fault, tmp_path, capsys):
    ckpt = tmp_path / "a2d"
    shutil.copytree(a2d_resaved, ckpt)
    tokenizer_json = json.loads((ckpt / "tokenizer.json").read_text())
    if fault == "missing":
        tokenizer_json["added_tokens"] = [t for t in tokenizer_json["added_tokens"] if t["content"] != "<|MASK|>"]
        said = "mask_token '<|MASK|>' is not an added token"
    else:
        config = json.loads((ckpt / "tokenizer_config.json").read_text())
        config["added_tokens_decoder"] = {"151670": {"content": "<|MASK|>", "special": True}}
        (ckpt / "tokenizer_config.json").write_text(json.dumps(config))
        said = "added token '<|MASK|>' is id 151670 in tokenizer_config.json but 151669 in tokenizer.json"
    (ckpt / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    assert main(["convert", "--teacher", str(ckpt), "--out", str(tmp_path / "s")]) == 2
    assert said in error_line(capsys)
    assert not (tmp_path / "s").exists()


# --- item 11: a teacher passed as the student ------------------------------------------------------------------


def test_a_teacher_given_as_student_is_called_what_it_is(tiny_teacher_dir, tmp_path, capsys):
    args = ["train", "--config", TINY, "--out", tmp_path / "run", "--student", tiny_teacher_dir, *RUN]
    assert main([str(a) for a in args]) == 2
    line = error_line(capsys)
    assert f"--student {tiny_teacher_dir} is not a converted student" in line and "opdlm convert" in line, line
    assert "prompt_attention" not in line
    assert not (tmp_path / "run").exists()
