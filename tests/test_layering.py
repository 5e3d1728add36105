"""The package layering of docs/architecture.md holds: no module imports from a package
above its own, and packages form no import cycle.

Every `import crispy...` and `from crispy... import` in src/crispy (function-level ones
too) is read with `ast`, so a new upward import fails here before it becomes a habit.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first. A package may import from its own layer's other packages only where that
# makes no cycle (checked below), and from any layer beneath.
LAYERS: list[set[str]] = [
    {"crispy", "errors", "api", "config", "events", "testhook"},
    {"system", "store", "shim"},
    {"oci", "snapshots"},
    {"images"},
    {"sandbox"},
    {"containers"},
    {"stats", "runtime_status"},
    {"metrics"},
    {"streaming"},
    {"cri"},
    {"cli", "daemon"},
]
LAYER_OF = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def package_of(module: str) -> str:
    """crispy.images.pull -> images; crispy.errors -> errors; crispy -> crispy."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports() -> dict[str, set[tuple[str, str]]]:
    """module file -> {(the crispy module it imports, the package of that module)}."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in sorted((SRC / "crispy").rglob("*.py")):
        rel = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from crispy import errors` imports crispy.errors, a package of its own
                names = (
                    [f"crispy.{a.name}" for a in node.names]
                    if node.module == "crispy"
                    else [node.module]
                )
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name == "crispy" or name.startswith("crispy."):
                    target = package_of(name)
                    if target not in LAYER_OF and name.count(".") == 1:
                        target = "crispy"  # a name defined in crispy/__init__.py
                    found[rel].add((name, target))
    return found


def test_every_package_has_a_layer() -> None:
    packages = {
        p.stem if p.is_file() else p.name
        for p in (SRC / "crispy").iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.name != "__pycache__"
    }
    packages = {"crispy" if p == "__init__" else p for p in packages}
    assert packages - set(LAYER_OF) == set(), "give each new package a layer in LAYERS"


def test_no_import_goes_upward() -> None:
    upward = []
    for module, targets in imports().items():
        mine = LAYER_OF[package_of(module)]
        for name, target in sorted(targets):
            if LAYER_OF[target] > mine:
                upward.append(f"{module} imports {name} (layer {LAYER_OF[target]} > {mine})")
    assert upward == []


def test_packages_form_no_cycle() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, targets in imports().items():
        src = package_of(module)
        for _, target in targets:
            if target != src and target != "crispy":
                graph[src].add(target)

    def reach(node: str) -> set[str]:
        seen, todo = set(), [node]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    # An edge a -> b is in a cycle when b leads back to a.
    cycles = sorted(
        f"{a} -> {b} -> ... -> {a}" for a in list(graph) for b in graph[a] if a in reach(b)
    )
    assert cycles == []
