"""The package's shape: no import cycles, dependencies only downwards, click/rich in the face.

Imports inside functions count (they are dependencies all the same); imports under
``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import deeplense_cli

PACKAGE = Path(deeplense_cli.__file__).parent
NAME = "deeplense_cli"

# What each part of the package may import (besides itself). "" is the top-level __init__:
# the public API that plugin authors import.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    # the export-friendly layers models are built from: torch only, so that plugins (through
    # the top level) and deploy share them without the public API reaching into deploy
    "layers": set(),
    "registry": {"core"},
    "data": {"core"},
    "simulate": {"core", "data"},
    "runs": {"core", "registry"},
    "tracking": {"core", "registry", "runs"},
    "evaluation": {"core", "data", "registry", "runs", "tracking"},
    "training": {"core", "data", "registry", "runs", "tracking", "evaluation"},
    "deploy": {"core", "data", "registry", "runs", "tracking", "evaluation", "layers"},
    "tune": {"core", "data", "registry", "runs", "tracking", "evaluation", "training"},
    "cluster": {"core", "data", "registry", "runs", "tracking", "evaluation", "training", "tune"},
    "commands": {"core", "data", "simulate", "registry", "runs", "evaluation", "training"}
    | {"tracking", "deploy", "tune", "cluster"},
    "cli": {"core", "registry", "commands"},
    # the Python API sits beside the commands: the same engines, no click or rich
    "api": {"core", "data", "simulate", "registry", "runs", "evaluation", "training", "deploy"},
    "__main__": {"cli"},
    "": {"core", "registry", "layers"},
}
# click and rich (the terminal) belong to the command layer only.
FACE = ("commands", "cli")
FACE_MODULES = {f"{NAME}.core.console"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                skip.update(id(n) for n in ast.walk(sub))
    return skip


def _imported_names(module: str, path: Path) -> list[str]:
    """Dotted names each import statement of ``module`` refers to (functions included)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")
                if path.name != "__init__.py":
                    pkg = pkg[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            # "from a.b import c": the module a.b.c if it is one, else a.b (longest prefix)
            names += [f"{base}.{a.name}" for a in node.names]
    return names


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Internal edges (module -> modules) and third-party top-level names per module."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    external: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for name in _imported_names(mod, path):
            if name.split(".")[0] != NAME:
                external[mod].add(name.split(".")[0])
                continue
            parts = name.split(".")
            for i in range(len(parts), 0, -1):  # the longest prefix that is a module
                target = ".".join(parts[:i])
                if target in mods:
                    # A package importing its own submodule (a re-export) is not a dependency
                    # of the package on itself.
                    if target != mod and not target.startswith(mod + "."):
                        edges[mod].add(target)
                    break
    return edges, external


def _part(module: str) -> str:
    rest = module[len(NAME) + 1 :] if module != NAME else ""
    return rest.split(".")[0]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_dependencies_point_down() -> None:
    edges, _ = _graph()
    wrong = sorted(
        f"{mod} imports {target}"
        for mod, targets in edges.items()
        for target in targets
        if _part(target) != _part(mod) and _part(target) not in ALLOWED[_part(mod)]
    )
    assert wrong == []


def test_every_part_has_a_place_in_the_layering() -> None:
    parts = {_part(m) for m in _modules()}
    assert parts <= set(ALLOWED), f"add {sorted(parts - set(ALLOWED))} to ALLOWED"
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "api.py", "cli.py"]


def test_click_and_rich_only_in_the_command_layer() -> None:
    _, external = _graph()
    leaks = sorted(
        f"{mod} imports {lib}"
        for mod, libs in external.items()
        for lib in libs & {"click", "rich"}
        if _part(mod) not in FACE and mod not in FACE_MODULES
    )
    assert leaks == []


def test_every_subpackage_says_what_it_holds() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40 and "TODO" not in doc, f"{init} needs a docstring"


def test_the_checker_sees_function_level_imports_and_cycles() -> None:
    # The checks above must be able to fail: a cycle hidden in a function is still a cycle.
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    names = _imported_names(
        f"{NAME}.training.loop",
        _write_module("def f():\n    from deeplense_cli.evaluation import metrics\n"),
    )
    assert f"{NAME}.evaluation.metrics" in names


def _write_module(text: str) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "mod.py"
    path.write_text(text)
    return path
