"""The architecture as a test: imports point one way between layers, form no circle, and oneformer/ stays usable
without Prefect, MLflow or Optuna; every module says its job in a docstring."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("oneformer", "tasks", "flows")
# Each module may import from its own layer or a lower one; the longest matching prefix gives a module's layer
# ("oneformer" itself is only the package's __init__: a new module of the package must be placed here).
LAYERS = {
    "oneformer": 0, "oneformer.errors": 0, "oneformer.spec": 0, "oneformer.secrets": 0, "oneformer.presets": 0,
    "oneformer.artifacts": 0, "oneformer.arch_spec": 0, "oneformer.sections": 0,
    "oneformer.data": 1,
    "oneformer.model": 2,
    # parity (how closely a converted file matches its source) sits with the runtime: the backend chooser
    # (oneformer.runtime.choice) measures each backend's parity as it picks the fastest
    "oneformer.runtime": 3, "oneformer.parity": 3,
    "oneformer.evaluation": 4, "oneformer.training": 4,
    "oneformer.actions": 5,
    "oneformer.check": 6, "oneformer.templates": 6, "oneformer.cli": 6,
    "tasks": 7,
    "flows": 8,
}
ORCHESTRATION = ("prefect", "mlflow", "optuna", "tasks", "flows")  # what the model package never imports


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages under `root`."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, module: str, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in a file, including those inside functions and TYPE_CHECKING."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            for alias in node.names:  # `from pkg import module` imports that module
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in known else base, node.lineno))
    return found


def layer(module: str) -> int | None:
    """The layer of one of the project's modules (None for a module the map does not place)."""
    matches = [p for p in LAYERS if module == p or (p != "oneformer" and module.startswith(p + "."))]
    return LAYERS[max(matches, key=len)] if matches else None


def graph(root: Path) -> dict[str, list[tuple[str, int]]]:
    """Module -> the project's modules it imports, with lines."""
    names = module_names(root)
    known = set(names)
    return {m: [(i, n) for i, n in imports(p, m, known) if i.split(".")[0] in PACKAGES] for m, p in names.items()}


def violations(root: Path) -> list[str]:
    """Back edges between layers, unplaced modules, and orchestration imports inside oneformer/."""
    problems = []
    names = module_names(root)
    for module, path in names.items():
        mine = layer(module)
        if mine is None:
            problems.append(f"{module} is in no layer: place it in tests/test_layers.py LAYERS")
            continue
        for imported, line in imports(path, module, set(names)):
            top = imported.split(".")[0]
            if module.startswith("oneformer") and top in ORCHESTRATION:
                problems.append(f"{path.relative_to(root)}:{line}: oneformer/ imports {imported}")
            elif top in PACKAGES and (theirs := layer(imported)) is not None and theirs > mine:
                problems.append(f"{path.relative_to(root)}:{line}: {module} (layer {mine}) imports {imported} "
                                f"(layer {theirs})")
    return problems


def cycles(root: Path) -> list[list[str]]:
    """Import circles among the project's modules (strongly connected components of two or more)."""
    edges = {m: sorted({i for i, _ in deps if i in module_names(root)} - {m}) for m, deps in graph(root).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_imports_point_one_way_between_layers() -> None:
    assert violations(ROOT) == []


def test_no_module_imports_itself_in_a_circle() -> None:
    assert cycles(ROOT) == []


def test_every_module_says_its_job() -> None:
    missing = [str(p.relative_to(ROOT)) for p in module_names(ROOT).values() if not ast.get_docstring(
        ast.parse(p.read_text()))]
    assert missing == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small tree shaped like ours: a runtime module, an action, and a task."""
    files = {
        "oneformer/__init__.py": '"""Package."""',
        "oneformer/runtime/__init__.py": '"""Runtime."""',
        "oneformer/runtime/onnx.py": '"""Backend."""\nfrom oneformer.errors import OneFormerError\n',
        "oneformer/errors.py": '"""Errors."""',
        "oneformer/actions/__init__.py": '"""Actions."""',
        "oneformer/actions/export.py": '"""Export."""\nfrom oneformer.runtime import onnx\n',
        "tasks/__init__.py": '"""Tasks."""',
        "tasks/actions.py": '"""Tasks."""\nfrom oneformer.actions import export\n',
        "flows/__init__.py": '"""Flows."""',
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_checks_catch_back_edges_orchestration_imports_and_circles(tree: Path) -> None:
    assert violations(tree) == [] and cycles(tree) == []
    (tree / "oneformer/runtime/tensorrt.py").write_text('"""Backend."""\ndef f():\n    from ..actions import export\n')
    (tree / "oneformer/errors.py").write_text('"""Errors."""\nimport mlflow\nfrom tasks.actions import x\n')
    (tree / "oneformer/runtime/onnx.py").write_text('"""Backend."""\nfrom oneformer.actions.export import y\n')
    (tree / "oneformer/stray.py").write_text('"""Unplaced."""\n')
    found = violations(tree)
    assert "oneformer/runtime/tensorrt.py:3: oneformer.runtime.tensorrt (layer 3) imports oneformer.actions.export " \
           "(layer 5)" in found
    assert "oneformer/errors.py:2: oneformer/ imports mlflow" in found
    assert "oneformer/errors.py:3: oneformer/ imports tasks.actions" in found
    assert "oneformer.stray is in no layer: place it in tests/test_layers.py LAYERS" in found
    assert cycles(tree) == [["oneformer.actions.export", "oneformer.runtime.onnx"]]
