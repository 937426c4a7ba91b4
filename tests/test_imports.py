"""The package's static import graph: no import cycle inside ltpipe.cache, and the cache, the
classifier stage and the report never import stage one (``ltpipe.train``), not even through
another module. Imports are read from the source with ``ast`` (inside functions too), so an
import that only runs on some path is caught as well.

What DAG building imports is checked at run time too: the config check of every preset and of
config.yaml, in a fresh interpreter, leaves torch unimported (it costs ~2 s and ~600 MB in the
Snakemake process).

One module is not followed: ``ltpipe.workflow.config``, the config validator, checks every stage's
settings and so imports ``ltpipe.train.recipe`` inside its recipe checks; of the report, only
``workflow.targets`` (the report rules' targets, which the Snakefile runs) imports it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the top layer: the command line and the login node's workflow code
# the command line (ltpipe.worker runs its classify command in a warm process) and the workflow
TOP = ("ltpipe.cli", "ltpipe.__main__", "ltpipe.worker", "ltpipe.report.cli", "ltpipe.workflow")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / "ltpipe").rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """ltpipe modules that ``name`` imports; ``import a.b.c`` also runs ``a`` and ``a.b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the ltpipe modules its source imports."""
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` imports, directly or not, mapped to the module that imports it."""
    seen, todo = {}, [start]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in seen and nxt != start:
                seen[nxt] = node
                todo.append(nxt)
    return seen


def test_graph_helpers_find_cycles_and_indirect_imports():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _reachable({"a": {"b"}, "b": {"c"}}, "a") == {"b": "a", "c": "b"}
    graph = import_graph()  # the parser sees a function-level import: the dump reads the model
    assert "ltpipe.models.modelfile" in graph["ltpipe.train.dump"]


def test_cache_package_has_no_import_cycle():
    graph = import_graph()
    cache = {k: {m for m in v if m.startswith("ltpipe.cache.")}
             for k, v in graph.items() if k.startswith("ltpipe.cache.")}
    assert len(cache) >= 7, sorted(cache)
    assert _cycle(cache) is None, f"import cycle in ltpipe.cache: {' -> '.join(_cycle(cache))}"
    # the backends import only the format and raw-I/O modules of the package
    for backend in ("ltpipe.cache.zarr_backend", "ltpipe.cache.hdf5_backend"):
        assert cache[backend] <= {"ltpipe.cache.format", "ltpipe.cache.rawio"}, cache[backend]


@pytest.mark.parametrize("package", ["ltpipe.cache", "ltpipe.classifiers", "ltpipe.report"])
def test_never_imports_stage_one(package):
    graph = import_graph()
    for name in sorted(m for m in graph if m == package or m.startswith(package + ".")):
        reach = _reachable(graph, name)
        bad = sorted(m for m in reach if m == "ltpipe.train" or m.startswith("ltpipe.train."))
        chains = []
        for module in bad:
            chain = [module]
            while chain[-1] in reach:
                chain.append(reach[chain[-1]])
            chains.append(" <- ".join(chain))
        assert not bad, f"{name} imports stage one: {chains}"


def _top(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TOP)


def test_no_library_imports_the_workflow_layer():
    """Only the command line and ltpipe.workflow itself import ltpipe.workflow (directly or not):
    the libraries (data, models, losses, train, cache, classifiers, report, ...) never do."""
    graph = import_graph()
    assert "ltpipe.workflow.config" in graph and "ltpipe.workflow.targets" in graph
    for name in sorted(m for m in graph if not _top(m)):
        reach = _reachable(graph, name)
        bad = sorted(m for m in reach if m.startswith("ltpipe.workflow"))
        assert not bad, f"library module {name} imports the workflow layer: {bad}"


def test_the_dump_step_is_not_in_the_storage_package():
    """The cache package stores and reads arrays; running a model to fill it is a stage-one step
    (ltpipe.train.dump), so nothing in ltpipe.cache imports models or torch-side code."""
    graph = import_graph()
    for name in sorted(m for m in graph if m.startswith("ltpipe.cache")):
        reach = _reachable(graph, name)
        assert not [m for m in reach if m.startswith(("ltpipe.models", "ltpipe.train"))], name


CONFIGS = [ROOT / "config.yaml", *sorted((ROOT / "workflow" / "presets").glob("*.yaml"))]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_check_imports_no_torch(path):
    """What the Snakefile runs on a config before planning (schema, check_config: registered
    architectures and their settings, losses and theirs, methods, sweeps), in a fresh
    interpreter: torch stays unimported."""
    code = ("import sys, yaml\n"
            "from ltpipe.workflow.config import check_config, validate_schema\n"
            f"cfg = yaml.safe_load(open({str(path)!r}))\n"
            "validate_schema(cfg)\n"
            "check_config(cfg)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", f"{path.name}: the config check imported {out.stdout}"
