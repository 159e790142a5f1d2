"""Imports in cait_cli go one way: no module imports itself back, and layers import only downward.

The graph is read from the source with `ast`: every import counts, also those inside functions
and `if TYPE_CHECKING:` blocks (a late import that dodges a circle is still a circle).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "cait_cli"

# Lower layers never import higher ones. errors, atomic and version are utilities anyone may import.
LAYERS = {
    "cait_cli.errors": 0, "cait_cli.atomic": 0, "cait_cli.version": 0,
    "cait_cli.method": 1,
    "cait_cli.models": 2,
    "cait_cli.pipeline": 3,
    "cait_cli.api": 4, "cait_cli.interface": 4,
    "cait_cli": 5, "cait_cli.__main__": 5,  # the package's front door and `python -m cait_cli`
}

Edge = Tuple[str, str, str]  # (importer, imported, "path:line" of the import)


def module_files(package_dir: Path) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py file under package_dir (a package's own name for __init__)."""
    root = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported_names(node: ast.AST, module: str, is_package: bool, known: Dict[str, Path]) -> List[str]:
    """The modules of `known` that one import statement in `module` loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the importer's package, up level - 1 packages
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    names = []
    for alias in node.names:  # `from pkg import sub` loads the submodule pkg.sub
        target = f"{base}.{alias.name}"
        names.append(target if target in known else base)
    return [name for name in dict.fromkeys(names) if name in known]


def import_edges(package_dir: Path) -> List[Edge]:
    """Every import of one package module by another, wherever in the file it stands."""
    known = module_files(package_dir)
    edges = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):  # walks into functions, classes and `if TYPE_CHECKING:` alike
            for target in _imported_names(node, module, path.name == "__init__.py", known):
                edges.append((module, target, f"{path.relative_to(package_dir.parent)}:{node.lineno}"))
    return edges


def find_circle(edges: List[Edge]) -> Optional[List[Edge]]:
    """One import circle as its edges in order (the last imports the first's importer), or None."""
    graph: Dict[str, List[Edge]] = {}
    for edge in edges:
        graph.setdefault(edge[0], []).append(edge)
    state: Dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: List[Edge] = []

    def visit(module: str) -> Optional[List[Edge]]:
        state[module] = "open"
        for edge in graph.get(module, []):
            target = edge[1]
            if state.get(target) == "open":
                start = next(i for i, e in enumerate(path + [edge]) if e[0] == target)
                return (path + [edge])[start:]
            if target not in state:
                path.append(edge)
                found = visit(target)
                if found:
                    return found
                path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def describe(circle: List[Edge]) -> str:
    return " -> ".join([circle[0][0]] + [target for _, target, _ in circle]) + "\n" + "\n".join(
        f"  {where}: {importer} imports {target}" for importer, target, where in circle)


def layer(module: str) -> Optional[int]:
    """The layer of `module`: its own in LAYERS, else its package's (never the root's: a new top-level
    module must be placed)."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return LAYERS.get(module)


def upward_imports(edges: List[Edge]) -> List[str]:
    return [f"{where}: {importer} (layer {layer(importer)}) imports {target} (layer {layer(target)})"
            for importer, target, where in edges if layer(importer) < layer(target)]


def test_the_package_has_no_import_circle():
    circle = find_circle(import_edges(PACKAGE_DIR))
    if circle:
        pytest.fail("import circle: " + describe(circle), pytrace=False)


def test_layers_import_only_downward():
    edges = import_edges(PACKAGE_DIR)
    unplaced = sorted({m for m in module_files(PACKAGE_DIR) if layer(m) is None})
    assert not unplaced, f"give these modules a layer in LAYERS: {unplaced}"
    assert len({importer for importer, _, _ in edges}) > 20  # the walk found the package's imports
    upward = upward_imports(edges)
    if upward:
        pytest.fail("imports from a higher layer:\n" + "\n".join(upward), pytrace=False)


def _write(root: Path, files: Dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "cait_cli"


def test_circles_through_late_and_type_checking_imports_are_found(tmp_path):
    package = _write(tmp_path, {
        "cait_cli/__init__.py": "",
        "cait_cli/method/__init__.py": "",
        "cait_cli/method/a.py": "def f():\n    from .b import g\n",
        "cait_cli/method/b.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                 "    from cait_cli.method import c\n"),
        "cait_cli/method/c.py": "from ..method import a\n",
    })
    circle = find_circle(import_edges(package))
    assert circle is not None
    assert [importer for importer, _, _ in circle] == ["cait_cli.method.a", "cait_cli.method.b", "cait_cli.method.c"]
    assert describe(circle).startswith("cait_cli.method.a -> cait_cli.method.b -> cait_cli.method.c -> "
                                       "cait_cli.method.a")
    assert "cait_cli/method/a.py:2" in describe(circle)


def test_an_upward_import_is_named(tmp_path):
    package = _write(tmp_path, {
        "cait_cli/__init__.py": "",
        "cait_cli/errors.py": "",
        "cait_cli/method/__init__.py": "",
        "cait_cli/method/tokens.py": "from .. import errors\nfrom ..pipeline.plan import Plan\n",
        "cait_cli/pipeline/__init__.py": "",
        "cait_cli/pipeline/plan.py": "from ..method import tokens\n",
    })
    edges = import_edges(package)
    assert find_circle(edges) is not None
    assert upward_imports(edges) == ["cait_cli/method/tokens.py:2: cait_cli.method.tokens (layer 1) imports "
                                     "cait_cli.pipeline.plan (layer 3)"]


@pytest.mark.parametrize("module, expected", [("cait_cli.pipeline.export.quantize", 3), ("cait_cli.errors", 0),
                                              ("cait_cli", 5), ("cait_cli.interface.cli", 4), ("cait_cli.new", None)])
def test_layer_of_a_module_is_that_of_its_package(module, expected):
    assert layer(module) == expected
