"""The house: the package's import graph, read from the source with `ast` (nothing is imported),
has no cycle, and its layers import downwards only: the engine (fields, solvers, observables,
theory) imports none of `pretrained`, `experiment` or `cli`; `pretrained` imports neither
`experiment` nor `cli`; `experiment` does not import `cli`.

Every import counts, also one inside a function (a lazy import still ties the two modules
together: a cycle made of lazy imports is a cycle of the design, and fails at import time as
soon as one side is made eager)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "transformer_flows"

# Higher layers may import lower ones, never the reverse; a module belongs to the layer of the
# longest prefix listed (everything else is the engine, layer 0).
LAYERS = {
    "transformer_flows.pretrained": 1,
    "transformer_flows.experiment": 2,
    "transformer_flows.cli": 3,
}


def _modules() -> dict[str, tuple[Path, list[str]]]:
    """Module name -> (file, the package its relative imports start from)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = parts
        else:
            package = parts[:-1]
        modules[".".join(parts)] = (path, package)
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its source)."""
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, (path, package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from package import module` imports the module; `from module import name`
                # the module.
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    for alias in node.names
                ]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], set()
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def _layer(module: str) -> int:
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return LAYERS[max(matches, key=len)] if matches else 0


def test_the_graph_sees_imports_at_any_depth(graph):
    experiment = "transformer_flows.experiment"
    # A module-level, a relative-package and a function-level import.
    assert f"{experiment}._yaml" in graph[f"{experiment}._schema"]
    assert "transformer_flows.experiment" in graph["transformer_flows.cli"]
    assert f"{experiment}._fit_run" in graph[f"{experiment}._run"]  # inside run_experiment
    assert len(graph) > 60


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == {frozenset("abc")}


def test_the_old_cycles_would_be_found(graph):
    # Issue 21's two cycles: _schema imports _overrides (and _run imports _pretrained_run);
    # the import back that closed each cycle would fail test_no_import_cycle.
    experiment = "transformer_flows.experiment"
    for low, high in (("_overrides", "_schema"), ("_pretrained_run", "_run")):
        assert f"{experiment}.{low}" in graph[f"{experiment}.{high}"]
        closed = {
            **graph,
            f"{experiment}.{low}": graph[f"{experiment}.{low}"] | {f"{experiment}.{high}"},
        }
        assert frozenset({f"{experiment}.{low}", f"{experiment}.{high}"}) in cycles(closed)


def test_no_import_cycle(graph):
    found = sorted(sorted(cycle) for cycle in cycles(graph))
    assert not found, (
        f"import cycles: {found}; break them (move the shared part into a lower module)"
    )


def test_layers_import_downwards_only(graph):
    upward = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert not upward, upward
