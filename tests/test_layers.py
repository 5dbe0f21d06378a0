"""The package's folders are its layers: a module imports only from its own layer or a lower one, the
import graph has no circle, and no module inside the package goes through the `rote` facade."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"
LAYERS = ("rote", "rote.runs", "rote.interp", "rote.observations", "rote.grid", "rote.book")  # lowest first


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a subpackage's __init__ under the package's name)."""
    out = {}
    for path in sorted((LIB / "rote").rglob("*.py")):
        parts = list(path.relative_to(LIB).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(path: Path, known: dict) -> set[str]:
    """The package's modules that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "rote"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rote":
            assert node.level == 0, f"{path}: a relative import; the layout wants absolute ones"
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def layer(module: str) -> int:
    package = module if module.count(".") == 1 and module.split(".")[1] in {p.split(".")[-1] for p in LAYERS} \
        else module.rpartition(".")[0]
    return LAYERS.index(package)


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, known) - {m} for m, p in known.items() if m != "rote"}


def test_no_module_imports_a_higher_layer_or_the_facade():
    problems = []
    for module, deps in graph().items():
        for dep in deps:
            if dep == "rote":
                problems.append(f"{module} imports the facade `rote`; name the module instead")
            elif layer(dep) > layer(module):
                problems.append(f"{module} ({LAYERS[layer(module)]}) imports {dep} ({LAYERS[layer(dep)]})")
    assert not problems, "\n".join(problems)


def test_the_import_graph_has_no_circle():
    edges, state, circles = graph(), {}, []

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(edges.get(module, ())):
            if state.get(dep) == "open":
                circles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(circles)


def test_the_check_sees_an_upward_import_and_a_circle(tmp_path, monkeypatch):
    """The two checks above on a planted package: one upward import, one circle."""
    root = tmp_path / "rote"
    for folder in ("runs", "book"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "config.py").write_text("from rote.runs.data import x\n")  # upward
    (root / "runs" / "data.py").write_text("from rote.runs import model\n")
    (root / "runs" / "model.py").write_text("def f():\n    from rote.runs.data import x\n")  # a circle
    monkeypatch.setattr(sys.modules[__name__], "LIB", tmp_path)
    edges = graph()
    assert "rote.runs.data" in edges["rote.config"] and layer("rote.runs.data") > layer("rote.config")
    try:
        test_the_import_graph_has_no_circle()
    except AssertionError as err:
        assert "rote.runs.data -> rote.runs.model -> rote.runs.data" in str(err)
    else:
        raise AssertionError("the planted circle was not found")
