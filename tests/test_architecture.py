"""The package's shape: layers that import downward only, no import cycles, figures only in
``viz``, small signatures, and every class a config names importable.

These tests read the source (its syntax trees), so they fail on a new upward import before
anything runs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_object

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "phasesgd"

# Each layer may import the layers of a lower rank only; layers of one rank ignore each other.
LAYERS = {"infra": 0, "theory": 1, "ode": 2, "sgd": 2, "viz": 3, "training": 4, "app": 5, "experiments": 6}
MAX_PARAMETERS = 8
MAX_CONSTRUCTOR_PARAMETERS = 12  # constructors that Hydra fills from a config group


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path) -> set[str]:
    """The phasesgd modules that ``name`` imports anywhere (functions included), resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # ``from .pkg import mod`` imports a module, not only a name
            found |= {f"{target}.{alias.name}" for alias in node.names}
    known = modules()
    return {t for t in found if t in known and t != name}


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


GRAPH = {name: imported(name, path) for name, path in modules().items()}


def test_every_module_lives_in_a_layer():
    top = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= 6, top
    packages = [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    assert set(packages) == set(LAYERS), packages


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if layer(n)))
def test_imports_run_downward(name):
    source = layer(name)
    for target in GRAPH[name]:
        assert target != "phasesgd", f"{name} imports the public API (phasesgd); import the module itself"
        goal = layer(target)
        if goal == source:
            continue
        assert LAYERS[goal] < LAYERS[source], (
            f"{name} ({source}) imports {target} ({goal}): an upward or sideways import"
        )


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if nxt == "phasesgd" or nxt.startswith(f"{node}."):
                continue  # a package's __init__ re-exports its own modules
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path[path.index(nxt) :], nxt])}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state and name != "phasesgd":
            visit(name, [name])


def test_matplotlib_is_imported_in_viz_only():
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if any(n.split(".")[0] == "matplotlib" for n in names):
            assert layer(name) == "viz", f"{name} imports matplotlib outside viz/"


def parameter_count(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    count = len([n for n in names if n.arg not in ("self", "cls")])
    return count + (a.vararg is not None) + (a.kwarg is not None)


def test_signatures_are_small():
    wide = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = MAX_CONSTRUCTOR_PARAMETERS if node.name == "__init__" else MAX_PARAMETERS
                if parameter_count(node) > limit:
                    wide.append(f"{name}.{node.name}: {parameter_count(node)} > {limit}")
    assert not wide, wide


def targets(tree) -> list[str]:
    if isinstance(tree, dict):
        own = [tree["_target_"]] if isinstance(tree.get("_target_"), str) else []
        return own + [t for value in tree.values() for t in targets(value)]
    if isinstance(tree, list):
        return [t for value in tree for t in targets(value)]
    return []


def test_every_config_target_imports():
    found = {t for path in (ROOT / "conf").rglob("*.yaml") for t in targets(yaml.safe_load(path.read_text()) or {})}
    assert found
    for target in sorted(found):
        assert get_object(target) is not None, target
        if target.startswith("phasesgd."):
            assert target.count(".") == 1, f"{target}: configs name classes through the public API (phasesgd.Name)"


def test_the_checker_sees_a_bad_import(tmp_path):
    """Negative control: an upward import in a scratch module is found by :func:`imported`."""
    path = PACKAGE / "theory" / "scaling.py"
    fake = tmp_path / "probe.py"
    fake.write_text("from ..training.module import OnlineSGD\n")
    # resolve as if the file were phasesgd/theory/probe.py
    tree_targets = imported("phasesgd.theory.probe", fake)
    assert "phasesgd.training.module" in tree_targets
    assert path.is_file()
