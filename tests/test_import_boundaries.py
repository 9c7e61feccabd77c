"""Imports run one way: flows -> tasks -> opdlm, and inside ``opdlm/`` from higher layers to lower ones.

The library never imports orchestration packages at module level, and its packages form the ordered
stack :data:`LAYERS` (lowest first): a module may import its own layer and the layers below it,
never one above, and no two modules import each other, directly or round a longer circle. Both rules
count every import, the ones inside functions too: a lazy import defers the cost, not the dependency
(a lazy back-edge is the same knot, it only fails later, at run time, as an import circle or a
wrong-way dependency someone has to trace).

Measured by this file's checker (``python tests/test_import_boundaries.py`` prints the picture), all
imports / module-level imports only:

========================== ======================= =======
                           before (main, 6117a0a)  after
========================== ======================= =======
back-edges, module level   5 / 1                   0 / 0
back-edges, package level  4 / 1                   0 / 0
import circles, module     4 / 0                   0 / 0
import circles, package    1 / 1                   0 / 0
========================== ======================= =======

Before: config.eval -> eval.benchmarks (benchmark names), config.recipe -> teacher.config
(BootstrapConfig), models.convert -> formats.importer, models.sources -> teacher (builtin:tiny);
circles eval.harness <-> eval.scoring, formats.importer <-> formats.divelab/sdar, formats.engine <->
formats.sglang/lmdeploy, and models.sources -> teacher -> sampling -> models.student ->
models.sources; as packages, one knot of config, data, eval, formats, models, sampling and teacher
(config <-> data <-> teacher with module-level imports alone). A circle is counted as one strongly
connected set of two or more modules (or packages), each reachable from every other by imports.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_LIBRARY = {"prefect", "mlflow", "dvc", "boto3", "botocore"}

# The layers of opdlm/, lowest first. A module imports its own layer and the layers listed before it,
# never one listed after; each entry says what it needs from below (why it is no lower) and what
# above it needs it (why it is no higher).
LAYERS: tuple[tuple[str, str], ...] = (
    ("opdlm", "the package root (__version__): every import of an opdlm module runs it first, so it imports nothing"),
    ("errors", "the user-facing exception types every layer raises; imports nothing"),
    ("numbers", "how figures people read are rounded (fractions, rates, counts); imports nothing"),
    ("fsutil", "atomic writes and checked reads of files and folders; raises errors only"),
    ("progress", "the bar-or-lines reporter of long loops (bootstrap, training, eval); the standard library only"),
    ("jit", "TorchScript where a function compiles, the function itself where not (torch, lazily); imports nothing"),
    (
        "storage",
        "the cache root, S3 transfers (boto3 lazily) and pinned PyPI wheels (pip): fsutil's atomic folders; "
        "data and sources download through it",
    ),
    (
        "config",
        "every typed settings section (recipe, sampler, train, eval, teacher, benchmark names): data only, "
        "so all layers above can be driven by a recipe and none is needed to validate one",
    ),
    ("data", "rows, prompt formatting, the synthetic suite, the dataset download: config's StrictModel, storage"),
    (
        "models",
        "networks on disk: geometry, attention, loading, causal -> student conversion of a local directory; "
        "knows no source names (sources), no released formats (formats) and no bootstrap (teacher)",
    ),
    ("sampling", "the block-diffusion sampler and autoregressive decoding: runs the models' networks"),
    (
        "formats",
        "released checkpoints in (divelab, SDAR) and engine exports out (SGLang, LMDeploy): reads and "
        "writes model directories (config, models' directory checks), never runs a network; sources imports with it",
    ),
    ("teacher", "the tiny teacher's bootstrap: trains on data, checks itself with sampling's decoding"),
    (
        "sources",
        "source name -> local directory (hf://, s3://, builtin:tiny built by teacher with the recipe's "
        "settings) and convert (formats' import or models' conversion): composes the four layers below it",
    ),
    ("eval", "benchmarks, scoring, sandbox, harness, sweep: decodes with sampling on local model directories"),
    ("train", "the OPD / mdm_sft loop: resolves its teacher and converts its student through sources"),
    ("lmeval", "the lm-evaluation-harness model type: decodes through eval's harness"),
    ("pipeline", "one function per pipeline stage for Prefect and DVC: composes sources, eval, train, lmeval"),
    ("study", "the toy-scale reproduction study (leaving the library): trains and evaluates arms"),
    ("cli", "the `opdlm` command: parses arguments and calls any layer"),
    ("testing", "test fixtures (tiny models) for tests and benchmarks; the library never depends on them"),
)
LAYER_RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}


def _module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported outside any function or class body."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:  # module level only; imports inside functions are lazy by design
        for sub in [node] + ([n for n in ast.walk(node)] if isinstance(node, ast.If | ast.Try | ast.With) else []):
            if isinstance(sub, ast.Import):
                names |= {a.name.split(".")[0] for a in sub.names}
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                names.add(sub.module.split(".")[0])
    return names


def _all_imports(path: Path) -> set[str]:
    names = set()
    for sub in ast.walk(ast.parse(path.read_text())):
        if isinstance(sub, ast.Import):
            names |= {a.name.split(".")[0] for a in sub.names}
        elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
            names.add(sub.module.split(".")[0])
    return names


# ---- the module graph of opdlm/ -------------------------------------------------------------------


def library_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of ``opdlm/`` by dotted name (a package by its own name, for its ``__init__.py``)."""
    modules = {}
    for path in sorted((root / "opdlm").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported(node: ast.Import | ast.ImportFrom, package: str, modules: dict[str, Path]) -> list[str]:
    """The opdlm modules one import statement loads: ``from opdlm.eval import loaders`` names the module
    ``opdlm.eval.loaders``, ``from opdlm.eval.harness import evaluate`` the module ``opdlm.eval.harness``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "opdlm"]
    if node.level:  # relative: resolve against the importing module's package
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "opdlm":
        return []
    found = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
    return found if len(found) == len(node.names) else [*found, target]


def import_graph(root: Path = ROOT, lazy: bool = True) -> dict[str, set[str]]:
    """``{module: modules it imports}`` inside opdlm/; ``lazy=False`` keeps only imports that run when the
    module is imported (outside function bodies)."""
    modules = library_modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        todo: list[tuple[ast.AST, bool]] = [(tree, False)]
        while todo:
            node, in_function = todo.pop()
            if isinstance(node, ast.Import | ast.ImportFrom) and (lazy or not in_function):
                graph[name] |= {m for m in _imported(node, package, modules) if m != name}
            inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            todo.extend((child, inner) for child in ast.iter_child_nodes(node))
    return graph


def layer_of(module: str) -> str:
    """``opdlm.eval.harness`` -> ``eval``; ``opdlm.errors`` -> ``errors``; ``opdlm`` -> ``opdlm``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to layers (imports inside one layer dropped)."""
    packages: dict[str, set[str]] = defaultdict(set)
    for src, targets in graph.items():
        packages[layer_of(src)] |= {layer_of(t) for t in targets} - {layer_of(src)}
    return dict(packages)


def back_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every import of a module in a higher layer than the importer's, as ``(importer, imported)``."""
    return sorted(
        (src, dst)
        for src, targets in graph.items()
        for dst in targets
        if LAYER_RANK[layer_of(dst)] > LAYER_RANK[layer_of(src)]
    )


def back_edges_of_packages(packages: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Back-edges of the collapsed graph: a package importing a higher package."""
    return sorted((s, d) for s, ts in packages.items() for d in ts if LAYER_RANK[d] > LAYER_RANK[s])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected sets of two or more nodes (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


# ---- the tests ------------------------------------------------------------------------------------


def test_library_never_imports_orchestration_at_module_level():
    offenders = {
        str(p.relative_to(ROOT)): sorted(_module_level_imports(p) & FORBIDDEN_IN_LIBRARY)
        for p in (ROOT / "opdlm").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_imports_run_one_way():
    """opdlm never imports tasks or flows; tasks never import flows."""
    for p in (ROOT / "opdlm").rglob("*.py"):
        assert not _all_imports(p) & {"tasks", "flows"}, p
    for p in (ROOT / "tasks").rglob("*.py"):
        assert "flows" not in _all_imports(p), p


def test_library_imports_in_a_plain_session():
    import subprocess

    code = (
        "import sys, opdlm, opdlm.config, opdlm.models.convert, opdlm.sampling.block_sampler, opdlm.cli.main;"
        "bad = [m for m in ('prefect', 'mlflow', 'dvc', 'boto3') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_package_has_one_layer():
    """Each top-level module and package of opdlm/ is in :data:`LAYERS`, and each layer exists."""
    present = {layer_of(m) for m in library_modules()}
    assert sorted(present - set(LAYER_RANK)) == [], "add the new package to LAYERS, at the place its imports allow"
    assert sorted(set(LAYER_RANK) - present) == [], "a layer of LAYERS has no module left: remove it"


def test_no_module_imports_a_higher_layer():
    """Every import inside opdlm/, lazy ones included, goes to the importer's layer or a lower one."""
    assert back_edges(import_graph()) == []


def test_no_import_circles():
    """No set of opdlm modules import each other round a circle (every import counted, lazy ones too)."""
    graph = import_graph()
    assert circles(graph) == []
    assert circles(package_graph(graph)) == []


def test_the_checker_finds_what_it_should():
    """The checker itself, on a graph small enough to check by eye."""
    graph = {
        "opdlm.eval.harness": {"opdlm.eval.scoring", "opdlm.config.eval"},
        "opdlm.eval.scoring": {"opdlm.eval.harness"},
        "opdlm.config.eval": {"opdlm.eval.benchmarks"},
        "opdlm.eval.benchmarks": {"opdlm.errors"},
        "opdlm.errors": set(),
    }
    assert back_edges(graph) == [("opdlm.config.eval", "opdlm.eval.benchmarks")]
    assert circles(graph) == [["opdlm.eval.harness", "opdlm.eval.scoring"]]
    assert circles(package_graph(graph)) == [["config", "eval"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [["a", "b", "c"]]


def _picture() -> None:
    """Print the counts and the offending imports (``python tests/test_import_boundaries.py``)."""
    for lazy, what in ((True, "all imports"), (False, "top-level imports")):
        graph = import_graph(lazy=lazy)
        packages = package_graph(graph)
        print(f"== {what}")
        print(f"back-edges: {len(back_edges(graph))} module, {len(back_edges_of_packages(packages))} package")
        for src, dst in back_edges(graph):
            print(f"  {src} -> {dst}")
        print(f"circles: {len(circles(graph))} module, {len(circles(packages))} package")
        for members in circles(graph) + circles(packages):
            print("  " + " <-> ".join(members))


if __name__ == "__main__":
    _picture()


def test_every_opdlm_import_names_a_module_that_exists():
    """Lazy imports too: a module moved between layers must leave no import of its old path behind
    (they fail only when that code path runs, e.g. deep inside a study arm)."""
    import importlib.util

    missing = []
    for top in ("opdlm", "tasks", "flows", "tests", "benchmarks"):
        for p in (ROOT / top).rglob("*.py"):
            for sub in ast.walk(ast.parse(p.read_text())):
                if isinstance(sub, ast.ImportFrom) and sub.level == 0 and sub.module:
                    names = [sub.module]
                elif isinstance(sub, ast.Import):
                    names = [a.name for a in sub.names]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] in {"opdlm", "tasks", "flows"} and importlib.util.find_spec(name) is None:
                        missing.append(f"{p.relative_to(ROOT)}: {name}")
    assert missing == []
