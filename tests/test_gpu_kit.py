"""The offline GPU kit (infra/gpu): what travels, why, and that it runs gpu_check in an image-like venv.

The fast tests check the closure logic on made-up metadata and on this environment's real metadata
(no network). The slow one downloads the kit and the GPU image's torch and transformers and runs
``gpu_check.py --smoke`` there, the way the device would.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "infra" / "gpu"))

import closure  # noqa: E402
import kit  # noqa: E402
from closure import Image, KitError, plan_closure, read_image, unaccounted_imports  # noqa: E402


def fake_metadata(packages: dict[str, tuple[str, list[str]]]):
    def installed(name: str) -> tuple[str, list[str]]:
        if name not in packages:
            raise KitError(f"{name} is not installed here")
        return packages[name]

    return installed


IMAGE = Image("3.12.3", {"torch": "2.11.0", "numpy": "2.5.2", "oldlib": "1.0", "bare": None, "typing-extensions": None})


def test_the_checked_in_image_list_is_the_gpu_image():
    image = read_image()
    assert image.python.startswith("3.12.")
    assert image.version("torch") == "2.11.0" and image.version("transformers") == "5.17.0"
    assert image.has("typer") and image.version("typer") is None  # there, version not recorded
    assert not image.has("pydantic")


def test_a_malformed_image_line_is_named(tmp_path):
    bad = tmp_path / "image.txt"
    bad.write_text("@python 3.12.3\nnumpy==\n")
    with pytest.raises(KitError, match=r"image.txt:2: expected 'name' or 'name==version'"):
        read_image(bad)
    bad.write_text("numpy\n")
    with pytest.raises(KitError, match="no '@python"):
        read_image(bad)


def test_the_closure_carries_what_the_image_lacks_and_follows_only_carried_packages():
    meta = fake_metadata(
        {
            "newlib": ("2.0", ["leaf>=1", "numpy>=1.26", 'winonly; sys_platform == "win32"', "docs; extra == 'doc'"]),
            "leaf": ("1.5", []),
            "oldlib": ("3.1", ["leaf"]),
        }
    )
    plan = plan_closure(["newlib>=2", "oldlib>=3", "numpy>=2", "bare>=1", "torch==2.13.0"], IMAGE, meta)
    src = {n: d.source for n, d in plan.items()}
    assert src == {
        "newlib": "kit",  # not in the image
        "leaf": "kit",  # needed by a carried package, not in the image
        "oldlib": "kit",  # the image's 1.0 misses >=3
        "numpy": "image",
        "bare": "image",  # version not recorded: assumed to fit
        "torch": "image",  # never carried, whatever our pin says
    }
    assert "winonly" not in plan and "docs" not in plan  # markers for Linux / CPython 3.12, no extras
    assert plan["oldlib"].version == "3.1" and "the image's 1.0 misses >=3" in plan["oldlib"].reason
    assert plan["torch"].deviation.startswith("the image's 2.11.0 misses ==2.13.0")
    assert plan["numpy"].required_by == ["opdlm (>=2)", "newlib (>=1.26)"] and not plan["numpy"].deviation


def test_an_image_package_a_carried_one_outgrows_is_carried_and_followed():
    meta = fake_metadata({"newlib": ("1.0", ["oldlib>=2"]), "oldlib": ("2.2", ["leaf"]), "leaf": ("0.1", [])})
    plan = plan_closure(["oldlib", "newlib"], IMAGE, meta)  # oldlib is first accepted from the image...
    assert plan["oldlib"].source == "kit" and plan["oldlib"].version == "2.2"  # ...then newlib needs >=2
    assert plan["leaf"].source == "kit"


def test_carry_anyway_and_the_errors_that_stop_a_build():
    meta = fake_metadata({"typing-extensions": ("4.16.0", []), "newlib": ("1.0", []), "leaf": ("1.0", [])})
    plan = plan_closure(["typing-extensions>=4.16"], IMAGE, meta)
    assert plan["typing-extensions"].source == "kit"
    assert plan["typing-extensions"].reason == closure.CARRY_ANYWAY["typing-extensions"]
    with pytest.raises(KitError, match="missing-pkg is not installed here"):
        plan_closure(["missing-pkg"], IMAGE, meta)
    with pytest.raises(KitError, match=r"newlib 1.0 installed here misses >=2"):
        plan_closure(["newlib>=2"], IMAGE, meta)
    with pytest.raises(KitError, match="nvidia-cublas is needed .* never carried"):
        plan_closure(["nvidia-cublas"], IMAGE, meta)


def test_the_real_kit_plan_from_this_environment():
    """opdlm's closure from the metadata installed here: pydantic travels, torch never does."""
    plan = kit.plan(read_image())
    carried = {n for n, d in plan.items() if d.source == "kit"}
    assert {"pydantic", "pydantic-core", "annotated-types", "typing-inspection", "transformers"} <= carried
    assert plan["transformers"].version == md.version("transformers")  # our pin, not the image's 5.17
    assert not any(closure.never_carried(n) for n in carried)
    for name in ("torch", "numpy", "tokenizers", "safetensors", "accelerate", "huggingface-hub", "pyyaml"):
        assert plan[name].source == "image", name
    assert plan["torch"].deviation  # our torch pin is not the image's: the run uses 2.11 (rehearsed)


def test_imports_neither_image_nor_kit_provide_are_named():
    dists = md.packages_distributions()
    image = Image("3.12.3", {"torch": "2.11.0"})
    missing = unaccounted_imports(
        ["torch", "yaml", "pydantic", "json", "opdlm", "opd_memory", "nosuchmod"],
        dists,
        image,
        kit=["pydantic"],
        local=["opdlm", "opd_memory"],
    )
    assert missing == ["nosuchmod (no installed distribution provides it)", "yaml (pyyaml)"]


def test_imported_names_module_level_or_all(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os.path\nfrom yaml import safe_load\ntry:\n    import rich\nexcept ImportError:\n    pass\n")
    src.write_text(src.read_text() + "def f():\n    import pydantic\nfrom . import sibling\n")
    assert closure.imported_names(src, module_level_only=True) == {"os", "yaml", "rich"}
    assert closure.imported_names(src, module_level_only=False) == {"os", "yaml", "rich", "pydantic"}


def test_the_budget_leaves_room_for_a_rerun_in_one_lease():
    budget = kit.default_budget_s()
    timeout = kit.device_timeout_s(budget)
    assert kit.START_S + 2 * timeout + kit.IDLE_S <= kit.LEASE_S
    assert budget >= 240  # enough for the priority rows on an H100
    cmd = kit.run_command(budget)
    install, check = cmd.split(" && ")
    for flag in ("--no-index", "--no-deps", "--target /tmp/site", ".whl/*.whl", "--ignore-requires-python"):
        assert flag in install
    assert check == f"PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --budget-s {budget}"


def test_a_kit_over_the_carry_limit_is_refused_in_one_line():
    assert kit.size_problem(16 * 2**20, 2 * 2**20) is None
    problem = kit.size_problem(63 * 2**20, 2 * 2**20)
    assert problem == "kit 63.0 MiB + tracked tree 2.0 MiB is over the 64 MiB a device call carries"


def test_every_import_gpu_check_needs_is_in_the_image_or_the_kit():
    """Imports gpu_check.py's imports here (a subprocess, ~10 s of CPU) and checks their distributions."""
    image = read_image()
    carried = [n for n, d in kit.plan(image).items() if d.source == "kit"]
    names = kit.needed_imports()
    assert {"torch", "transformers", "pydantic", "opdlm", "opd_memory"} <= names
    local = ["opdlm", "opd_memory", "gpu_check"]
    dists = md.packages_distributions()
    assert unaccounted_imports(names, dists, image, [*carried, "opdlm"], local) == []
    without_pydantic = [n for n in carried if n != "pydantic"]
    assert unaccounted_imports(names, dists, image, [*without_pydantic, "opdlm"], local) == ["pydantic (pydantic)"]


def test_gpu_check_stops_at_its_budget_and_still_reports(tmp_path):
    """A spent budget ends the run cleanly: exit 0, the JSON says where it stopped, the headline is last."""
    out = tmp_path / "gpu_check.json"
    script = REPO / "benchmarks" / "gpu_check.py"
    args = ["--smoke", "--budget-s", "0.5", "--sections", "versions,sampler,parity", "--json", str(out)]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu_rollout_speedup_vs_hf_at_128: n/a")
    report = json.loads(out.read_text())
    assert report["meta"]["budget_s"] == 0.5
    skipped = [r for r in report["rows"] if "skipped" in r["note"]]
    assert report["meta"]["stopped"] == "the 0.5 s budget is spent" or skipped
    assert not [r for r in report["rows"] if r["note"].startswith("FAILED")]
    assert "parity" not in report["meta"]["sections_run"]


# downloads: the kit's wheels (~16 MiB) and, the first time, the image's torch 2.11 (PyPI has only its
# CUDA build: ~3 GB with the nvidia libraries) into a cached venv; then gpu_check --smoke (minutes on CPU).
# Opt-in (OPDLM_GPU_REHEARSAL=1, or `make gpu-rehearse`): 3 GB and ~5 minutes would be a quarter of CI's
# budget; the fast tests above keep the closure, the import check and the install line honest.
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("OPDLM_GPU_REHEARSAL") != "1", reason="set OPDLM_GPU_REHEARSAL=1 (downloads ~3 GB: torch 2.11)"
)
def test_the_kit_runs_gpu_check_smoke_in_an_image_like_venv(tmp_path):
    given = os.environ.get("OPDLM_GPU_IMAGE_VENV")
    # the image's 3.12 where one runs (a pyenv shim may exist and refuse), else this Python's version
    candidates = [str(Path(given) / "bin" / "python")] if given else [shutil.which("python3.12"), sys.executable]
    python, version = next((p, v) for p in candidates if p and (v := python_version(p)))
    venv = Path(given) if given else Path.home() / ".cache" / "opdlm" / f"gpu-image-venv-{version}"
    script = str(REPO / "infra" / "gpu" / "kit.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    steps = [
        ["image-venv", str(venv), "--python", python],
        ["build", "--out", str(tmp_path / "kit"), "--python-version", version],
        ["rehearse", "--python", str(venv / "bin" / "python"), "--kit", str(tmp_path / "kit")],
    ]
    for args in steps:
        args += ["--keep", str(tmp_path / "out")] if args[0] == "rehearse" else []
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, f"kit.py {args[0]}: {proc.stderr[-2000:]}"
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    rows = report["rows"]
    assert report["meta"]["stopped"] is None
    assert set(report["meta"]["sections_run"]) == set(kit_sections())
    assert [r for r in rows if r["note"].startswith("FAILED")] == []
    versions = {r["name"]: r for r in rows if r["section"] == "versions"}
    assert versions["torch"]["value"].startswith("2.11.0")  # the image's torch, not ours
    assert versions["transformers"]["value"] == md.version("transformers")  # the kit's, shadowing the image's
    assert "/site/opdlm" in versions["opdlm"]["note"]  # the kit's wheel, not this checkout


def python_version(python: str) -> str | None:
    """``X.Y`` of an interpreter, None when it does not run."""
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def kit_sections() -> tuple[str, ...]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    return gpu_check.SECTIONS
