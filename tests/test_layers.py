"""The package's layers, read from the source: no module imports one that imports it back,
every module imports only its own room and the rooms before it (README.md's layout: config ->
data -> engine + kernels -> runs -> experiments -> analysis, the CLI on top), the model never
imports a kernel, analysis never imports experiments, and nothing test-only ships in the
package. Every import counts, also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import mamlpp

PACKAGE = Path(mamlpp.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the mamlpp modules it imports (a `from package import name` counts as the
    submodule `package.name` where that is a module, else as the package)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "mamlpp"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                if base.split(".")[0] != "mamlpp":
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_known_imports() -> None:
    graph = _import_graph()
    assert "mamlpp.engine.model" in graph["mamlpp.engine.learner"]
    assert "mamlpp.kernels.cpu" in graph["mamlpp.kernels"]
    assert "mamlpp.analysis.report" in graph["mamlpp.analysis.cli"]  # an import inside a function


def test_no_import_cycles() -> None:
    assert _cycles(_import_graph()) == []


def test_a_cycle_is_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_lower_layers_do_not_import_upper_ones() -> None:
    upper = ("mamlpp.analysis", "mamlpp.experiments", "mamlpp.cli")
    lower = ("mamlpp.config", "mamlpp.presets", "mamlpp.errors", "mamlpp.data", "mamlpp.engine",
             "mamlpp.kernels", "mamlpp.runs")  # fmt: skip
    bad = [
        (module, target)
        for module, targets in _import_graph().items()
        if module.startswith(lower)
        for target in targets
        if target.startswith(upper)
    ]
    assert bad == []


# The rooms of README.md's layout, in import order: a module imports only its own room and the
# rooms before it.
ROOMS: list[tuple[str, ...]] = [
    ("mamlpp", "mamlpp.config", "mamlpp.presets", "mamlpp.errors"),
    ("mamlpp.data",),
    ("mamlpp.engine", "mamlpp.kernels"),
    ("mamlpp.runs",),
    ("mamlpp.experiments",),
    ("mamlpp.analysis",),
    ("mamlpp.cli", "mamlpp.bench"),
]


def _room(module: str) -> int:
    """Index in ROOMS of the longest prefix naming `module` or a package above it."""
    matches = [
        (len(prefix), i)
        for i, room in enumerate(ROOMS)
        for prefix in room
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} is in no room of README.md's layout"
    return max(matches)[1]


def test_each_room_imports_only_itself_and_earlier_rooms() -> None:
    bad = [
        (module, target)
        for module, targets in _import_graph().items()
        for target in targets
        if _room(target) > _room(module)
    ]
    assert bad == []


def test_the_room_check_sees_an_upward_import() -> None:
    assert _room("mamlpp.data.episodes") > _room("mamlpp.presets")
    assert _room("mamlpp.experiments.sweep") < _room("mamlpp.analysis.report")
    assert _room("mamlpp.kernels.cpu") == _room("mamlpp.engine.model")


def test_the_model_imports_no_kernel_and_analysis_no_experiment_runner() -> None:
    graph = _import_graph()
    assert not [t for t in graph["mamlpp.engine.model"] if t.startswith("mamlpp.kernels")]
    assert not [
        (m, t)
        for m, targets in graph.items()
        if m.startswith("mamlpp.analysis")
        for t in targets
        if t.startswith("mamlpp.experiments")
    ]


def test_nothing_test_only_ships() -> None:
    shipped = {p.name for p in PACKAGE.rglob("*.py")}
    assert not shipped & {"browser_support.py", "wandb_records.py", "example_runs.py", "conftest.py"}
    assert not [p for p in PACKAGE.rglob("test_*.py")]
