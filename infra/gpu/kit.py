"""The offline kit for a GPU run of ``benchmarks/gpu_check.py``: the wheels the GPU image lacks, and the command.

The GPU machines are offline (no package registry), hold about 15 minutes of one H100/H200, and take
at most 64 MiB of files along with the repository. Their image has Python 3.12, torch 2.11 and
transformers 5.17 (``image-packages.txt``), not pydantic. This script, run on a machine with PyPI:

    python infra/gpu/kit.py build        # (make gpu-kit) wheels into .whl/, prints the command to run there
    python infra/gpu/kit.py plan         # the closure only: what travels and why (no network)
    python infra/gpu/kit.py rehearse --python VENV/bin/python   # the kit on CPU in an image-like venv
    python infra/gpu/kit.py image-venv DIR --python python3.12  # make that venv (torch 2.11, transformers 5.17)

``build`` works out opdlm's runtime closure from installed metadata (``closure.py``), checks that every
import ``gpu_check.py`` makes is in the image or the kit, downloads the Python 3.12 manylinux x86_64
wheels with ``pip download --no-deps --only-binary=:all:``, builds opdlm's own wheel, checks the size
and writes ``.whl/`` in one rename (a failed build leaves the old kit alone).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

sys.path.insert(0, str(Path(__file__).resolve().parent))

from closure import (  # noqa: E402
    Image,
    KitError,
    imported_names,
    plan_closure,
    project_requirements,
    read_image,
    unaccounted_imports,
)

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "benchmarks" / "gpu_check.py"
KIT_DIR = ROOT / ".whl"
CARRY_LIMIT_MIB = 64  # the device tool: working tree + carried paths, per call
LEASE_S = 15 * 60  # device time per session, every start and idle second counted
START_S = 150  # a cold machine's start plus the tree's transfer (README: "a minute or more")
IDLE_S = 30  # a machine stays warm (and counted) this long after a call unless given back
RUN_OVERHEAD_S = 60  # per run, beyond gpu_check's budget: the offline install, imports, the last row's overrun
OUR_PACKAGES = ("opdlm", "tasks", "flows")
# pip matches manylinux tags exactly: every glibc up to the image's (Ubuntu 24.04: 2.39)
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(39, 4, -1)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]


def default_budget_s() -> int:
    """gpu_check's budget: a cold start, two runs (the first, one rerun after a fix) and the idle tail fit one lease."""
    return (LEASE_S - START_S - IDLE_S - 2 * RUN_OVERHEAD_S) // 2 // 10 * 10


def device_timeout_s(budget_s: int) -> int:
    """The device call's timeout_s: the budget plus one run's overhead (the check stops itself at its budget)."""
    return budget_s + RUN_OVERHEAD_S


def size_problem(kit_bytes: int, tree_bytes: int) -> str | None:
    """Why the kit cannot travel (None: it fits beside the tracked tree under the carry limit)."""
    if kit_bytes + tree_bytes <= CARRY_LIMIT_MIB * 2**20:
        return None
    return (
        f"kit {kit_bytes / 2**20:.1f} MiB + tracked tree {tree_bytes / 2**20:.1f} MiB is over the "
        f"{CARRY_LIMIT_MIB} MiB a device call carries"
    )


def run_command(budget_s: int) -> str:
    """The one command line for the device: install the kit offline, then the check under its budget."""
    return (
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        "--ignore-requires-python --target /tmp/site .whl/*.whl && "
        f"PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --budget-s {budget_s}"
    )


def image_for(python_version: str | None) -> Image:
    image = read_image()
    if python_version is None or python_version == ".".join(image.python.split(".")[:2]):
        return image
    return Image(python_version + ".0", image.versions)  # a rehearsal on another Python: same packages


def plan(image: Image) -> dict:
    """The closure of opdlm's core requirements against the image (``closure.plan_closure``)."""
    return plan_closure(project_requirements(ROOT / "pyproject.toml"), image)


def check_imports(image: Image, kit_names: list[str]) -> list[str]:
    """Imports gpu_check needs that neither the image nor the kit provides (empty: all accounted for)."""
    import importlib.metadata as md

    local = {*OUR_PACKAGES, *(p.stem for p in CHECK.parent.glob("*.py"))}
    return unaccounted_imports(needed_imports(), md.packages_distributions(), image, [*kit_names, "opdlm"], local)


def needed_imports() -> set[str]:
    """Top-level names gpu_check's run imports: every import of the script, and the module-level ones of our files.

    A subprocess imports everything gpu_check.py imports (its lazy imports too) and reports which of
    our files (opdlm, the benchmarks' helpers) got loaded; their module-level imports are needed too.
    """
    probe = f"""
import ast, importlib, json, sys
sys.path[:0] = [{str(CHECK.parent)!r}, {str(ROOT)!r}]
tree = ast.parse(open({str(CHECK)!r}).read())
for node in ast.walk(tree):
    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
        [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
    for m in mods:
        importlib.import_module(m)
roots = {[str(ROOT / p) for p in (*OUR_PACKAGES, "benchmarks")]!r}
files = sorted({{getattr(m, "__file__", None) or "" for m in list(sys.modules.values())}})
print(json.dumps([f for f in files if any(f.startswith(r) for r in roots)]))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise KitError(f"importing what gpu_check.py imports failed here: {last}")
    names = imported_names(CHECK, module_level_only=False)
    for f in json.loads(proc.stdout.strip().splitlines()[-1]):
        names |= imported_names(Path(f), module_level_only=True)
    return names


def git_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def tracked_files() -> list[str]:
    """Paths git tracks here that exist (a deleted file is not there to copy or carry)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def tracked_bytes() -> int:
    """Bytes of the files git tracks here: they travel with every call, beside the kit."""
    return sum((ROOT / p).stat().st_size for p in tracked_files())


def pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("ERROR")] or ["no error line"]
        raise KitError(f"pip {args[0]} failed: {lines[-1][:300]}")


def download(name: str, version: str, python: str, into: Path) -> None:
    """One wheel for CPython ``python`` on manylinux x86_64; a pure-Python sdist is built into a wheel."""
    platform = [a for p in PLATFORMS for a in ("--platform", p)]
    tag = python.replace(".", "")[:3]
    try:
        pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python, "--implementation",
            "cp", "--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none", *platform, "--platform", "any",
            "-d", str(into), f"{name}=={version}")  # fmt: skip
    except KitError:
        pip("wheel", "-q", "--no-deps", "-w", str(into), f"{name}=={version}")
        built = [w for w in into.glob("*.whl") if canonicalize_name(parse_wheel_filename(w.name)[0]) == name]
        if not built or not built[0].name.endswith("-py3-none-any.whl"):
            raise KitError(f"{name}=={version} has no wheel for Python {python} on manylinux x86_64") from None


def build_opdlm_wheel(into: Path) -> None:
    """opdlm's wheel, built from a copy of the tracked files as they are now (setuptools writes build/ and
    *.egg-info beside the sources; in the checkout they would show up as a second installed opdlm)."""
    with tempfile.TemporaryDirectory(prefix="opdlm-src-") as tmp:
        for rel in tracked_files():
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, Path(tmp) / rel)
        pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(into), tmp)


def build(out: Path, python: str | None, budget_s: int) -> dict:
    """Download the kit into ``out`` (replaced whole, only once complete); returns its manifest."""
    image = image_for(python)
    python = ".".join(image.python.split(".")[:2])
    decisions = plan(image)
    carried = {n: d for n, d in decisions.items() if d.source == "kit"}
    missing = check_imports(image, list(carried))
    if missing:
        raise KitError(f"gpu_check imports what neither the GPU image nor the kit has: {'; '.join(missing)}")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for name, d in sorted(carried.items()):
            download(name, d.version, python, partial)
        build_opdlm_wheel(partial)
        wheels = sorted(partial.glob("*.whl"))
        by_name = {}
        for w in wheels:
            name, version = canonicalize_name(parse_wheel_filename(w.name)[0]), str(parse_wheel_filename(w.name)[1])
            if name in by_name:
                raise KitError(f"two wheels of {name} in the kit ({by_name[name]['file']}, {w.name}): keep one")
            by_name[name] = {"file": w.name, "version": version, "bytes": w.stat().st_size}
            by_name[name]["sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
        if set(by_name) != {*carried, "opdlm"}:
            raise KitError(f"the kit holds {sorted(by_name)}, planned {sorted({*carried, 'opdlm'})}")
        kit_bytes, tree = sum(v["bytes"] for v in by_name.values()), tracked_bytes()
        if problem := size_problem(kit_bytes, tree):
            raise KitError(problem)
        manifest = {
            "python": python,
            "budget_s": budget_s,
            "command": run_command(budget_s),
            "carry": [out.name],
            "kit_bytes": kit_bytes,
            "tracked_tree_bytes": tree,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": git_commit(),
            "wheels": by_name,
            "decisions": {n: vars(d) for n, d in sorted(decisions.items())},
        }  # fmt: skip
        (partial / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return manifest


def print_plan(decisions: dict) -> None:
    for src in ("kit", "image"):
        rows = sorted((n, d) for n, d in decisions.items() if d.source == src)
        print(f"{'carried in the kit' if src == 'kit' else 'taken from the GPU image'} ({len(rows)}):")
        for n, d in rows:
            print(f"  {n:<24} {d.version or '(not recorded)':<14} {d.reason}; needed by {', '.join(d.required_by)}")
    for n, d in sorted(decisions.items()):
        if d.deviation:
            print(f"deviation: {n}: {d.deviation}")


def cmd_build(args) -> None:
    manifest = build(Path(args.out).resolve(), args.python_version, args.budget_s)
    rows = sorted(manifest["wheels"].values(), key=lambda v: -v["bytes"])
    print(
        f"kit: {len(rows)} wheels, {manifest['kit_bytes'] / 2**20:.2f} MiB in {args.out}/ (Python {manifest['python']})"
    )
    for v in rows:
        print(f"  {v['bytes'] / 2**20:7.2f} MiB  {v['file']}")
    for n, d in sorted(manifest["decisions"].items()):
        if d["deviation"]:
            print(f"runs on the image's {n} {d['version']} (not carried): {d['deviation']}")
    timeout = device_timeout_s(manifest["budget_s"])
    print(f"on the GPU (device run, carry {manifest['carry']}, timeout_s {timeout}):")
    print(manifest["command"])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would mix our environment into the image-like venv's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **extra}


def installed_versions(python: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, env=clean_env()).stdout
    return {canonicalize_name(k): v for k, v in json.loads(out).items()}


def image_mismatches(python: str, image: Image) -> list[str]:
    """How the venv of ``python`` differs from the image: recorded versions that differ, packages it lacks."""
    have = installed_versions(python)
    wrong = [
        f"{n} {have[n]} (image {v})" for n, v in sorted(image.versions.items()) if v and n in have and have[n] != v
    ]
    extra = [f"{n} {v} (not in the image)" for n, v in sorted(have.items()) if not image.has(n) and n != "pip"]
    return wrong + extra


def python_version_of(python: str) -> str:
    """``X.Y`` of the interpreter ``python``; a KitError when it does not run."""
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=clean_env())
    except OSError as exc:
        raise KitError(
            f"{python} does not run here ({exc.strerror}): pass --python with a working interpreter"
        ) from None
    if proc.returncode != 0:
        raise KitError(f"{python} does not run here (exit {proc.returncode}): pass --python with a working interpreter")
    return proc.stdout.strip()


def cmd_rehearse(args) -> None:
    """Install the kit as the device would (offline, --no-deps, a target dir) and run the smoke check there."""
    kit = Path(args.kit).resolve()
    if not (kit / "MANIFEST.json").is_file():
        raise KitError(f"{kit} holds no built kit (MANIFEST.json): run kit.py build first")
    manifest = json.loads((kit / "MANIFEST.json").read_text())
    py = python_version_of(args.python)
    if py != manifest["python"]:
        raise KitError(
            f"the kit holds Python {manifest['python']} wheels, {args.python} is {py}: build --python-version {py}"
        )
    off = image_mismatches(args.python, image_for(py))
    if off:
        raise KitError(f"{args.python} is not the GPU image's environment: {'; '.join(off[:8])}")
    with tempfile.TemporaryDirectory(prefix="gpukit-") as tmp:
        site, out = Path(tmp) / "site", Path(tmp) / "out"
        out.mkdir()
        # the manifest's own install command, with this venv's python, this kit's wheels and a private target
        install = manifest["command"].split(" && ")[0].replace("python3", args.python, 1)
        install = install.replace(".whl/*.whl", " ".join(str(kit / w["file"]) for w in manifest["wheels"].values()))
        install = install.replace("/tmp/site", str(site))
        t0 = time.perf_counter()
        if subprocess.run(install, shell=True, cwd=ROOT, env=clean_env()).returncode != 0:
            raise KitError("the offline install of the kit failed (its output is above)")
        t_install = time.perf_counter() - t0
        env = clean_env(PYTHONPATH=str(site), PYTHONUNBUFFERED="1", OUT=str(out))
        t0 = time.perf_counter()
        proc = subprocess.run([args.python, str(CHECK), "--smoke", *args.check_args], cwd=tmp, env=env)
        t_check = time.perf_counter() - t0
        results = sorted(p.name for p in out.iterdir())
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for name in results:
                shutil.copy2(out / name, Path(args.keep) / name)
        print(
            f"rehearsal: offline install {t_install:.0f} s, gpu_check --smoke {t_check:.0f} s, "
            f"exit {proc.returncode}, $OUT holds {results}"
        )
        if proc.returncode != 0 or "gpu_check.json" not in results:
            raise KitError("the rehearsal failed: gpu_check --smoke did not finish in the image-like environment")


def cmd_image_venv(args) -> None:
    """A venv with the image's packages that a gpu_check run touches, at the image's recorded versions."""
    image = read_image()
    venv = Path(args.dir).resolve()
    if not (venv / "bin" / "python").exists():
        python_version_of(args.python)  # one line if it does not run, before a half-made venv
        subprocess.run([args.python, "-m", "venv", str(venv)], check=True, env=clean_env())
    py = str(venv / "bin" / "python")
    decisions = plan(image_for(python_version_of(py)))
    wanted = sorted({n for n, d in decisions.items() if d.source == "image"} | {"transformers"})
    pins = [f"{n}=={image.version(n)}" if image.version(n) else n for n in wanted]
    pins = [p if p != "typer" else "typer<0.29" for p in pins]  # 0.29 needs pydantic, which the image lacks
    subprocess.run([py, "-m", "pip", "install", "-q", *pins], check=True, env=clean_env())
    extra = [m.split()[0] for m in image_mismatches(py, image) if m.endswith("(not in the image)")]
    if extra:  # dependencies pip chose that the image does not list: the image does without them
        subprocess.run([py, "-m", "pip", "uninstall", "-q", "-y", *extra], check=True, env=clean_env())
    off = image_mismatches(py, image)
    if off:
        raise KitError(f"{venv} still differs from the image: {'; '.join(off[:8])}")
    print(f"{venv}: the image's {', '.join(pins)}, and what they need of the image's list")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download the kit into .whl/ and print the command for the GPU")
    b.add_argument("--out", default=str(KIT_DIR))
    b.add_argument("--python-version", help="X.Y of the wheels (default: the image's; another only to rehearse)")
    b.add_argument("--budget-s", type=int, default=default_budget_s(), help="gpu_check's time budget on the GPU")
    p = sub.add_parser("plan", help="print what the kit carries and why (no network)")
    p.add_argument("--python-version")
    r = sub.add_parser("rehearse", help="install the kit offline into an image-like venv and run gpu_check --smoke")
    r.add_argument("--python", required=True, help="the python of a venv holding the image's packages")
    r.add_argument("--kit", default=str(KIT_DIR))
    r.add_argument("--keep", help="copy the smoke's $OUT files (gpu_check.json, .txt) into this folder")
    r.add_argument("check_args", nargs="*", help="extra gpu_check arguments (after --)")
    v = sub.add_parser("image-venv", help="make a venv with the image's versions (torch 2.11, transformers 5.17)")
    v.add_argument("dir")
    v.add_argument("--python", default="python3.12", help="the interpreter to make it with")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "plan":
            print_plan(plan(image_for(args.python_version)))
        elif args.cmd == "build":
            cmd_build(args)
        elif args.cmd == "rehearse":
            cmd_rehearse(args)
        else:
            cmd_image_venv(args)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
