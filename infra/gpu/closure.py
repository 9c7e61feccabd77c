"""What a GPU run must carry: opdlm's runtime dependency closure minus what the GPU image already holds.

Pure logic, no network: the requirement graph is read from installed package metadata (the
environment that runs this, where opdlm's dependencies are installed), the image's packages from
``image-packages.txt``. A package is carried when the image lacks it, or holds a recorded version
that a requirement excludes; the carried packages' own requirements are then resolved the same way.
Packages the size of torch (torch and its CUDA libraries) never travel: the run uses the image's,
and a pin of ours they miss is reported as a deviation (rehearsed on CPU by ``kit.py rehearse``).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

IMAGE_PACKAGES = Path(__file__).with_name("image-packages.txt")

# torch-sized: never carried (hundreds of MB to GB, CUDA builds); the run takes the image's
NEVER_CARRY = ("torch", "triton", "nvidia-*", "cuda-*", "jax*", "cupy-*")

# in the image with no recorded version, but our floor is too new to assume: carried anyway
CARRY_ANYWAY = {
    "typing-extensions": "pydantic-core needs >= 4.16.0, the newest release; the image's version is not recorded",
}


class KitError(Exception):
    """A kit that cannot be planned or built as asked; the message is one line for a person."""


@dataclass(frozen=True)
class Image:
    """The GPU image: its Python (``major.minor.micro``) and its packages (canonical name -> version or None)."""

    python: str
    versions: dict[str, str | None]

    def has(self, name: str) -> bool:
        return canonicalize_name(name) in self.versions

    def version(self, name: str) -> str | None:
        return self.versions.get(canonicalize_name(name))


def read_image(path: Path = IMAGE_PACKAGES) -> Image:
    """Parse ``image-packages.txt``: ``@python X.Y.Z`` once, then one ``name`` or ``name==version`` a line."""
    python, versions = None, {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("@python "):
            python = line.split(None, 1)[1].strip()
            continue
        name, sep, version = line.partition("==")
        if not name.strip() or (sep and not version.strip()):
            raise KitError(f"{path.name}:{number}: expected 'name' or 'name==version', got {line[:40]!r}")
        versions[canonicalize_name(name.strip())] = version.strip() or None
    if python is None:
        raise KitError(f"{path.name}: no '@python X.Y.Z' line (the image's Python)")
    return Image(python, versions)


def target_environment(python: str) -> dict[str, str]:
    """PEP 508 marker values of the GPU machine: CPython ``python`` on Linux x86_64."""
    major_minor = ".".join(python.split(".")[:2])
    return {
        "python_version": major_minor,
        "python_full_version": python if python.count(".") == 2 else major_minor + ".0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "extra": "",
    }


def never_carried(name: str) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(canonicalize_name(name), pattern) for pattern in NEVER_CARRY)


@dataclass
class Decision:
    """Where one package comes from on the GPU machine.

    Attributes:
        name: canonical distribution name.
        source: ``kit`` (carried as a wheel) or ``image`` (the image's own).
        version: the version carried, or the image's recorded version (None: not recorded).
        reason: why, in words.
        required_by: ``parent (specifier)`` for every requirement that reached it.
        deviation: set when the image's version misses one of our pins and cannot be carried.
    """

    name: str
    source: str
    version: str | None
    reason: str
    required_by: list[str] = field(default_factory=list)
    deviation: str = ""


Installed = Callable[[str], tuple[str, list[str]]]


def installed_here(name: str) -> tuple[str, list[str]]:
    """``(version, Requires-Dist lines)`` of ``name`` in the environment running this."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        raise KitError(
            f"{name} is not installed here, so its wheel and requirements are unknown: install opdlm's dependencies"
            " (pip install -e .) and build the kit again"
        ) from None
    return dist.version, list(dist.requires or [])


def plan_closure(roots: Iterable[str], image: Image, installed: Installed = installed_here) -> dict[str, Decision]:
    """Decide, for every package reachable from the requirement lines ``roots``, whether the kit carries it.

    A carried package's version is the one installed here (where the test suite ran); its requirements
    are followed. An image package is not followed: the image holds its dependencies. Markers are
    evaluated for the image's Python on Linux x86_64, without extras.

    Raises:
        KitError: a package to carry is not installed here, or its installed version misses a requirement.
    """
    env = target_environment(image.python)
    specs: dict[str, list[tuple[str, SpecifierSet]]] = {}
    decisions: dict[str, Decision] = {}
    queue = [("opdlm", line) for line in roots]
    while queue:
        parent, line = queue.pop(0)
        req = Requirement(line)
        if req.marker is not None and not Marker(str(req.marker)).evaluate(env):
            continue
        name = canonicalize_name(req.name)
        specs.setdefault(name, []).append((parent, req.specifier))
        before = decisions.get(name)
        decisions[name] = _decide(name, specs[name], image, installed)
        if decisions[name].source == "kit" and (before is None or before.source != "kit"):
            _, requires = installed(name)
            queue.extend((name, r) for r in requires)
    return decisions


def _decide(name: str, specs: list[tuple[str, SpecifierSet]], image: Image, installed: Installed) -> Decision:
    required_by = [f"{parent} ({spec or 'any'})" for parent, spec in specs]
    wanted = SpecifierSet(",".join(str(s) for _, s in specs if str(s)))
    have = image.version(name)
    if never_carried(name):
        if not image.has(name):
            raise KitError(
                f"{name} is needed ({', '.join(required_by)}) but the image lacks it and it is never carried"
            )
        missed = have is not None and not wanted.contains(Version(have), prereleases=True)
        deviation = f"the image's {have} misses {wanted}; the run uses {have} (never carried)" if missed else ""
        return Decision(name, "image", have, "torch-sized: the image's own", required_by, deviation)
    if image.has(name) and name not in CARRY_ANYWAY:
        if have is None:
            return Decision(name, "image", None, "in the image (version not recorded; assumed to fit)", required_by)
        if wanted.contains(Version(have), prereleases=True):
            return Decision(name, "image", have, "in the image", required_by)
        reason = f"the image's {have} misses {wanted}"
    elif name in CARRY_ANYWAY:
        reason = CARRY_ANYWAY[name]
    else:
        reason = "not in the image"
    version, _ = installed(name)
    if not wanted.contains(Version(version), prereleases=True):
        raise KitError(f"{name} {version} installed here misses {wanted} ({', '.join(required_by)}): cannot carry it")
    return Decision(name, "kit", version, reason, required_by)


def project_requirements(pyproject: Path) -> list[str]:
    """``[project] dependencies`` of a pyproject.toml (opdlm's core requirements, no extras)."""
    import tomllib

    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def imported_names(path: Path, module_level_only: bool) -> set[str]:
    """Top-level names of the absolute imports in one Python file (all of them, or module level only)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif module_level_only and isinstance(node, ast.If | ast.Try | ast.With):
            names.update(_names_in(node))
    return names


def _names_in(node: ast.AST) -> set[str]:
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            out.update(a.name.split(".")[0] for a in sub.names)
        elif isinstance(sub, ast.ImportFrom) and sub.level == 0 and sub.module:
            out.add(sub.module.split(".")[0])
    return out


def unaccounted_imports(
    names: Iterable[str],
    distributions_of: dict[str, list[str]],
    image: Image,
    kit: Iterable[str],
    local: Iterable[str],
) -> list[str]:
    """Imported top-level names that neither the image nor the kit provides, as ``name (distribution)``.

    Args:
        names: top-level module names the run imports.
        distributions_of: top-level module name -> distributions that provide it (``packages_distributions()``).
        image: the GPU image.
        kit: canonical names of the carried distributions (opdlm's own wheel included).
        local: top-level names that travel as files (opdlm's packages, the benchmarks' own modules).
    """
    kit, local = {canonicalize_name(k) for k in kit}, set(local)
    missing = []
    for name in sorted(set(names)):
        if name in sys.stdlib_module_names or name in local or name == "__future__":
            continue
        dists = [canonicalize_name(d) for d in distributions_of.get(name, [])]
        if not dists:
            missing.append(f"{name} (no installed distribution provides it)")
        elif not any(image.has(d) or d in kit for d in dists):
            missing.append(f"{name} ({', '.join(dists)})")
    return missing
