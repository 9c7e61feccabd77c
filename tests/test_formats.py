"""Formats in and out: divelab/SDAR checkpoints imported byte for byte; SGLang/LMDeploy exports.

The fixtures are tiny checkpoints in the released layouts (:mod:`opdlm.testing.blockdiff`) with the
real Qwen3 tokenizer, so the mask token lands at 151669 as on the hub. Their remote-code files raise
when executed: an import that ran any of them would fail.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from opdlm.cli.main import main
from opdlm.formats import lmdeploy, sglang
from opdlm.formats.engine import engine_config, field_problems
from opdlm.testing.blockdiff import MASK_ID, make_divelab_checkpoint, make_qwen3_vocab_teacher, make_sdar_checkpoint


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    teacher = make_qwen3_vocab_teacher(root / "teacher")
    return {
        "root": root,
        "teacher": teacher,
        "divelab": make_divelab_checkpoint(root / "divelab", teacher),
        "sdar": make_sdar_checkpoint(root / "sdar", teacher),
    }


@pytest.fixture(scope="module")
def student(models):
    """Our own conversion of the Qwen3-vocabulary teacher (mask at 151669, no logit shift)."""
    from opdlm.sources.convert import convert_teacher

    return convert_teacher(models["teacher"], models["root"] / "student")


def _logits(model_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("fmt", ["divelab", "sdar"])
def test_import_round_trip_is_byte_for_byte(fmt, models, tmp_path, capsys):
    src, out = models[fmt], tmp_path / "imported"
    assert main(["convert", "--teacher", str(src), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"imported ({fmt})" in stdout and "block_size=4" in stdout
    assert ("absolute position 0" in stdout) == (fmt == "sdar")  # SDAR's alignment is said, divelab's is ours

    assert sha(out / "model.safetensors") == sha(src / "model.safetensors")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen3" and cfg["architectures"] == ["Qwen3ForCausalLM"] and "auto_map" not in cfg
    assert (cfg["block_size"], cfg["mask_token_id"], cfg["logit_shift"], cfg["prompt_attention"]) == (
        4,
        MASK_ID,
        False,
        "block",
    )
    assert cfg["opdlm_imported_format"] == fmt
    assert not list(out.glob("*.py"))  # no remote code travels with the student
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert "auto_map" not in tok_cfg

    from opdlm.models.student import load_student

    st = load_student(out, device="cpu")
    assert st.meta.mask_token_id == MASK_ID and st.tokenizer.mask_token_id == MASK_ID
    assert main(["generate", "--model", str(out), "--prompt", "1+1=", "--max-new-tokens", "8", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert 1 <= len(rec["token_ids"]) <= 8 and MASK_ID not in rec["token_ids"]


def test_block_size_comes_from_the_card_and_a_conflict_fails(models, tmp_path, capsys):
    card_8 = make_divelab_checkpoint(tmp_path / "b8", models["teacher"], block_size_in_card=8)
    assert main(["convert", "--teacher", str(card_8), "--out", str(tmp_path / "s8")]) == 0
    assert json.loads((tmp_path / "s8" / "config.json").read_text())["block_size"] == 8
    # an a2d-init: no block size in its card, <|MASK|> added but not registered as the mask token
    init = make_divelab_checkpoint(tmp_path / "init", models["teacher"], block_size_in_card=None, mask_registered=False)
    assert main(["convert", "--teacher", str(init), "--out", str(tmp_path / "s2"), "--block-size", "2"]) == 0
    assert json.loads((tmp_path / "s2" / "config.json").read_text())["block_size"] == 2
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "s2").mask_token_id == MASK_ID
    capsys.readouterr()
    assert main(["convert", "--teacher", str(card_8), "--out", str(tmp_path / "bad"), "--block-size", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "block_size" in err and "declares 8" in err
    assert not (tmp_path / "bad").exists()


def _edit_config(src, dst, change):
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    change(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _edit_tokenizer_mask(src, dst):
    import shutil

    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer_config.json").read_text())
    tok["mask_token"] = "<|endoftext|>"
    (dst / "tokenizer_config.json").write_text(json.dumps(tok))
    return dst


def _extra_weight(src, dst):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    weights["model.layers.0.self_attn.rotary_mix"] = torch.zeros(2)
    save_file(weights, dst / "model.safetensors")
    return dst


@pytest.mark.parametrize(
    "fmt,make,needle",
    [
        (
            "divelab",
            lambda s, d: _edit_config(s, d, lambda c: c.pop("num_key_value_heads")),
            "num_key_value_heads is missing",
        ),
        (
            "sdar",
            lambda s, d: _edit_config(s, d, lambda c: c.update(architectures=["SDARMoeForCausalLM"])),
            "architectures[0]",
        ),
        ("sdar", lambda s, d: _edit_config(s, d, lambda c: c.update(model_type="sdar_moe")), "model_type 'sdar_moe'"),
        ("sdar", lambda s, d: _edit_config(s, d, lambda c: c.update(mask_token_id=5)), "mask_token_id is 5"),
        ("divelab", lambda s, d: _edit_config(s, d, lambda c: c.update(use_sliding_window=True)), "use_sliding_window"),
        ("divelab", _edit_tokenizer_mask, "mask_token_id"),
        ("sdar", _extra_weight, "is not a Qwen3 weight name"),
    ],
)
def test_bad_checkpoints_fail_with_one_line_naming_the_field(fmt, make, needle, models, tmp_path, capsys):
    bad = make(models[fmt], tmp_path / "bad")
    assert main(["convert", "--teacher", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("engine", [sglang.ENGINE, lmdeploy.ENGINE], ids=lambda e: e.name)
def test_export_loads_into_plain_qwen3_with_identical_logits(engine, student, tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = tmp_path / engine.name
    assert main(["export", "--model", str(student), "--format", engine.name, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "absolute position 0" in stdout and "serve it with" in stdout
    assert sha(out / "model.safetensors") == sha(student / "model.safetensors")

    cfg = json.loads((out / "config.json").read_text())
    plain = Qwen3Config(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures")})
    model = Qwen3ForCausalLM(plain).eval()
    missing, unexpected = model.load_state_dict(load_file(out / "model.safetensors"), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    ids = torch.tensor([[151644, 872, 198, 16, 10, 16, 28]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, _logits(student, ids))

    readme = (out / "README.md").read_text()
    summary = json.loads((out / "export.json").read_text())
    assert summary["launch"] in readme and "What differs" in readme
    assert "absolute position 0" in readme


def test_every_field_each_engine_reads_is_present_with_the_right_value(student, tmp_path):
    import yaml

    student_cfg = json.loads((student / "config.json").read_text())
    theta = student_cfg["rope_parameters"]["rope_theta"]
    for engine in (sglang.ENGINE, lmdeploy.ENGINE):
        out = tmp_path / engine.name
        assert (
            main(
                ["export", "--model", str(student), "--format", engine.name, "--out", str(out), "--remasking", "static"]
            )
            == 0
        )
        cfg = json.loads((out / "config.json").read_text())
        assert field_problems(cfg, engine) == []
        assert cfg["architectures"] == ["SDARForCausalLM"] and cfg["rope_theta"] == theta
        assert cfg["use_sliding_window"] is False and cfg["vocab_size"] > engine.mask_id
    assert json.loads((tmp_path / "lmdeploy" / "config.json").read_text())["model_type"] == "sdar"
    assert (
        json.loads((tmp_path / "sglang" / "config.json").read_text())["model_type"] == "qwen3"
    )  # no remote code needed
    assert yaml.safe_load((tmp_path / "sglang" / "dllm_algorithm.yaml").read_text()) == {
        "block_size": 4,
        "threshold": 1.0,
    }
    assert json.loads((tmp_path / "lmdeploy" / "lmdeploy_engine.json").read_text()) == {
        "dllm_block_length": 4,
        "dllm_denoising_steps": 4,
        "dllm_unmasking_strategy": "low_confidence_static",
        "dllm_confidence_threshold": 0.9,
    }
    # the table check itself can fail: LMDeploy reads a missing use_sliding_window as true
    broken = {k: v for k, v in engine_config(student_cfg, lmdeploy.ENGINE).items() if k != "use_sliding_window"}
    assert any("use_sliding_window" in p for p in field_problems(broken, lmdeploy.ENGINE))


@pytest.fixture(scope="module")
def shifted_student(models):
    from opdlm.sources.convert import convert_teacher

    return convert_teacher(models["teacher"], models["root"] / "shifted", logit_shift=True)


@pytest.mark.parametrize(
    "which,fmt,extra,needle",
    [
        ("char", "sglang", [], "mask_token_id: the student's is"),
        ("char", "lmdeploy", [], "hard-codes 151669"),
        ("shifted", "lmdeploy", [], "logit_shift"),
        ("student", "sglang", ["--temperature", "0.7"], "temperature"),
        ("student", "sglang", ["--steps-per-block", "2"], "denoise_steps_per_block"),
        ("student", "lmdeploy", ["--remasking", "static", "--steps-per-block", "3"], "remainder"),
        ("student", "lmdeploy", ["--remasking", "dynamic", "--steps-per-block", "2"], "one token per step"),
        ("student", "vllm", [], "not an export format"),
    ],
)
def test_export_refuses_what_the_engine_would_mis_serve(
    which, fmt, extra, needle, student, shifted_student, tiny_student_dir, tmp_path, capsys
):
    src = {"char": tiny_student_dir, "shifted": shifted_student, "student": student}[which]
    out = tmp_path / "export"
    assert main(["export", "--model", str(src), "--format", fmt, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert not out.exists()


def test_pipeline_convert_stage_starts_from_a_released_checkpoint(models, tmp_path):
    from opdlm.config.recipe import Recipe
    from opdlm.pipeline.stages import convert_stage

    recipe = Recipe.model_validate({"convert": {"student_source": str(models["sdar"]), "enable_thinking": True}})
    out = convert_stage(recipe, models["teacher"], tmp_path / "student")
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["opdlm_imported_format"] == "sdar" and cfg["enable_thinking"] is True and cfg["prompt_attention"] == "block"
    )
    assert sha(out / "model.safetensors") == sha(models["sdar"] / "model.safetensors")


def test_register_logs_each_export_as_an_artifact_or_a_refusal(student, tiny_student_dir, tmp_path, monkeypatch):
    import mlflow

    from tasks.engine_exports import log_engine_exports

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns.db")
    # artifacts under tmp_path: a SQLite store's default artifact root is ./mlruns in the working directory
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment("exports", artifact_location=(tmp_path / "art").as_uri())
    )
    with mlflow.start_run() as run:
        assert log_engine_exports(run.info.run_id, student, tmp_path / "ok", ["sglang", "lmdeploy"]) == {
            "sglang": "export/sglang",
            "lmdeploy": "export/lmdeploy",
        }
    client = mlflow.MlflowClient()
    for fmt, settings in (("sglang", "dllm_algorithm.yaml"), ("lmdeploy", "lmdeploy_engine.json")):
        names = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, f"export/{fmt}")}
        assert {"config.json", "model.safetensors", "README.md", settings} <= names
    assert client.get_run(run.info.run_id).data.tags["export.lmdeploy.status"] == "ok: export/lmdeploy"
    with mlflow.start_run() as run:
        results = log_engine_exports(run.info.run_id, tiny_student_dir, tmp_path / "refused", ["sglang"])
    assert results["sglang"].startswith("refused: mask_token_id")
    assert client.get_run(run.info.run_id).data.tags["export.sglang.status"] == results["sglang"]
    assert "export.sglang" not in client.get_run(run.info.run_id).data.tags
    assert not client.list_artifacts(run.info.run_id)


def test_serve_parity_says_in_one_line_why_it_cannot_run_here(tiny_student_dir):
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: serve_parity would really run")
    script = Path(__file__).parents[1] / "benchmarks" / "serve_parity.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--model", str(tiny_student_dir), "--format", "sglang"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "needs a CUDA GPU" in proc.stderr and "not run" in proc.stderr


@pytest.mark.slow  # ~25 s of CPU: one OPD step and a 2-row eval at Qwen3's 151,936-row vocabulary
def test_train_and_eval_start_from_an_imported_checkpoint(models, tmp_path, capsys):
    """``opdlm train --student`` and ``opdlm eval`` take an imported divelab student unchanged."""
    imported = tmp_path / "imported"
    assert main(["convert", "--teacher", str(models["divelab"]), "--out", str(imported)]) == 0
    out = tmp_path / "trained"
    one_step = [
        "train.prompts_per_rollout=2",
        "train.optimizer_steps_per_rollout=1",
        "train.micro_batch_size=2",
        "train.num_prompts=8",
        "train.stages=[{name: one, rollout_steps: 1, length: {start: 8, end: 8}}]",
    ]
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    assert (
        main(
            [
                "train",
                "--config",
                str(tiny),
                "--out",
                str(out),
                "--teacher",
                str(models["teacher"]),
                "--student",
                str(imported),
                "--quiet",
                *one_step,
            ]
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["mask_token_id"], cfg["block_size"], cfg["prompt_attention"]) == (MASK_ID, 4, "block")
    assert sha(out / "model.safetensors") != sha(imported / "model.safetensors")  # it trained
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--model",
                str(out),
                "--benchmark",
                "synthetic",
                "--limit",
                "2",
                "--json-out",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    assert (tmp_path / "eval.json").is_file()


def test_engine_export_stage_is_what_dvc_runs(student, tiny_student_dir, tmp_path, capsys):
    """`opdlm stage engines` (dvc.yaml's export stage) exports registry.export_formats through the stage
    function the register task logs; a refusal is recorded in exports.json and leaves no folder."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "train:\n  stages: [{name: only, rollout_steps: 1}]\nregistry:\n  export_formats: [sglang, lmdeploy]\n"
    )
    out = tmp_path / "export"
    assert main(["stage", "engines", "--recipe", str(recipe), "--student", str(student), "--out", str(out)]) == 0
    results = json.loads((out / "exports.json").read_text())
    assert results == {"sglang": str(out / "sglang"), "lmdeploy": str(out / "lmdeploy")}
    assert (out / "sglang" / "dllm_algorithm.yaml").is_file() and (out / "lmdeploy" / "lmdeploy_engine.json").is_file()
    assert "sglang: " in capsys.readouterr().out
    args = [
        "stage",
        "engines",
        "--recipe",
        str(recipe),
        "--student",
        str(tiny_student_dir),
        "--out",
        str(out),
        "--overwrite",
    ]
    assert main([*args, "registry.export_formats=[sglang]"]) == 0
    results = json.loads((out / "exports.json").read_text())
    assert list(results) == ["sglang"] and results["sglang"].startswith("refused: mask_token_id")
    assert not (out / "sglang").exists()  # the earlier student's export is not left to look like this one's
