"""Imports point one way: no import cycle among the package's modules, module-level or inside functions.

The graph is built from the source (the AST of every module), not by importing it, so a lazy import inside a function
that would close a cycle counts as much as a module-level one. Importing ``a.b.c`` runs ``a/__init__`` and
``a/b/__init__`` first, so an import also points at every package above its target, except the packages above the
importing module itself (those are already running when it is imported). Imports under ``if TYPE_CHECKING:`` never
run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = "monai_probunet"


def _modules(packages: list[str], root: Path) -> dict[str, Path]:
    """Dotted module name -> file for every ``.py`` file of ``packages`` (a package is its ``__init__``)."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` at any depth, those guarded by ``if TYPE_CHECKING:`` left out."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(packages: list[str], root: Path = REPO) -> dict[str, set[str]]:
    """``{module: modules whose import it runs}`` over the modules of ``packages`` (edges leaving them dropped)."""
    modules = _modules(packages, root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        here = name if is_pkg else name.rpartition(".")[0]  # the package relative imports start from
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            if node.level:
                base_parts = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        running = set(_ancestors(name)) | ({name} if is_pkg else set())
        for target in targets:
            for t in [*_ancestors(target), target]:
                if t in modules and t != name and t not in running:
                    graph[name].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    cycles = []
    for comp in components:  # a shortest cycle through the component's first module (breadth-first)
        members, start = set(comp), comp[0]
        parent: dict[str, str] = {}
        frontier, seen, closing = [start], {start}, None
        while frontier and closing is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        closing = v
                        break
                    if w not in seen:
                        seen.add(w)
                        parent[w] = v
                        nxt.append(w)
                if closing is not None:
                    break
            frontier = nxt
        path = [closing]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


def _report(cycles: list[list[str]]) -> str:
    return "import cycle(s):\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


# ------------------------------------------------------------------------------------------------ the checker


def test_the_checker_finds_lazy_relative_and_package_cycles(tmp_path):
    """Known answers on a throwaway package: a lazy import closing a cycle, a cycle through a package ``__init__``,
    and the imports that do not make one (a sibling via the own package, ``TYPE_CHECKING``)."""
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "def f():\n    from .a import x  # lazy: still a cycle\n",
        "sub/__init__.py": "from .leaf import y\n",
        "sub/leaf.py": "from .other import z\n",  # same package: sub/__init__ is already running, no cycle
        "sub/other.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from toy.c import w\n",
        "c.py": "import toy.sub.leaf\n",  # runs toy.sub (its __init__) first
        "d.py": "from toy.sub import other\n",
        "e.py": "from .sub import leaf\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    graph = import_graph(["toy"], tmp_path)
    assert graph["toy.a"] == {"toy.b"} and graph["toy.b"] == {"toy.a"}
    assert graph["toy.c"] == {"toy.sub", "toy.sub.leaf"}
    assert graph["toy.d"] == {"toy.sub", "toy.sub.other"} and graph["toy.e"] == {"toy.sub", "toy.sub.leaf"}
    assert graph["toy.sub"] == {"toy.sub.leaf"} and graph["toy.sub.leaf"] == {"toy.sub.other"}
    assert graph["toy.sub.other"] == set()
    assert find_cycles(graph) == [["toy.a", "toy.b", "toy.a"]]
    # a package cycle: the leaf imports a module that imports the package
    (pkg / "sub" / "other.py").write_text("import toy.c\n")
    (pkg / "c.py").write_text("from toy.sub import leaf\n")
    cycles = find_cycles(import_graph(["toy"], tmp_path))
    assert ["toy.c", "toy.sub.leaf", "toy.sub.other", "toy.c"] in cycles, _report(cycles)


# ------------------------------------------------------------------------------------------------ the project


def test_no_import_cycle_inside_the_package():
    graph = import_graph([PACKAGE])
    assert len(graph) > 40  # every module was read
    assert "monai_probunet.evaluation" in graph["monai_probunet.calibration"]  # one way only
    cycles = find_cycles(graph)
    assert not cycles, _report(cycles)


def test_no_import_cycle_between_the_package_and_preprocessing():
    """The preprocessing scripts are thin CLIs over ``monai_probunet.data``; the package never imports them."""
    graph = import_graph([PACKAGE, "preprocessing"])
    into_scripts = {
        (m, t) for m, ts in graph.items() if m.startswith(PACKAGE) for t in ts if t.startswith("preprocessing")
    }
    assert not into_scripts, into_scripts
    assert "monai_probunet.data.lidc_cases" in graph["preprocessing.lidc"]  # the CLI uses the library
    cycles = find_cycles(graph)
    assert not cycles, _report(cycles)


def test_handlers_moved_out_of_engines_keep_their_old_module_paths():
    """Configs and code written against ``monai_probunet.engines.<module>`` get the same objects from ``handlers``."""
    import importlib

    from monai_probunet import handlers

    moved = {
        "checkpoint": ["AtomicCheckpointSaver", "LastCheckpoint"],
        "ged_handler": ["GeneralizedEnergyDistance"],
        "kl_warmup": ["KLWarmup"],
        "progress": ["TrainingProgress", "format_duration"],
        "tracking": ["MLflowSampleGrid", "configure_mlflow", "flatten_params", "iteration_terms"],
    }
    for module, names in moved.items():
        old = importlib.import_module(f"monai_probunet.engines.{module}")
        new = importlib.import_module(f"monai_probunet.handlers.{module}")
        for name in names:
            assert getattr(old, name) is getattr(new, name), f"engines.{module}.{name}"
            if name in handlers.__all__:
                assert getattr(handlers, name) is getattr(new, name), name
