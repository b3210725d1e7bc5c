"""The import graph runs one way: cli -> engine -> report -> models -> backbones -> base."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "defectscope"

#: higher layers may import lower ones, never the reverse (lazy imports inside functions count)
LAYERS = {
    "cli": 6,
    "serve": 5,
    "cluster": 5,
    # auto: a workflow over the estimators (it names the detectors it tries; the engine does not)
    "auto": 5,
    "engine": 4,
    "report": 3,
    "models": 2,
    "backbones": 1,
    # the base: pure functions and types
    "ops": 0,
    "data": 0,
    "metrics": 0,
    "results": 0,
    "config": 0,
    "errors": 0,
    "progress": 0,
    "memory": 0,
    "runs": 0,
    "digest": 0,
    "atomic": 0,
    "regions": 0,
    "verdict": 0,
    "version": 0,
}


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "defectscope" else None


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name.startswith("defectscope.")]


def upward_imports(src: Path) -> list[str]:
    problems = []
    for path in sorted(src.rglob("*.py")):
        here = layer_of(module_name(path, src))
        if here is None:  # defectscope/__init__.py: the public facade, lazy
            continue
        if here not in LAYERS:
            problems.append(f"{path}: module {here} has no layer in LAYERS")
            continue
        for line, name in imports(path):
            there = layer_of(name)
            if there in LAYERS and LAYERS[there] > LAYERS[here]:
                problems.append(f"{path.relative_to(src.parent)}:{line} ({here}) imports {name}")
    return problems


def test_imports_point_down_only():
    assert upward_imports(SRC) == []


def package_cycles(src: Path) -> list[list[str]]:
    """Cycles in the graph of top-level modules (``data -> errors`` and so on)."""
    graph: dict[str, set[str]] = {}
    for path in src.rglob("*.py"):
        here = layer_of(module_name(path, src))
        if here is None:
            continue
        for _, name in imports(path):
            there = layer_of(name)
            if there in LAYERS and there != here:
                graph.setdefault(here, set()).add(there)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def module_graph(src: Path) -> dict[str, set[str]]:
    """``module -> modules it imports`` over every module under ``src`` (imports inside
    functions included): ``from defectscope.a import b`` is an import of ``defectscope.a.b``
    when that is a module, else of ``defectscope.a``."""
    modules = {module_name(path, src): path for path in src.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for _, name in imports(path):
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def module_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(out)


def test_no_import_cycles_between_modules():
    """No module imports, at any depth, a module that imports it back, not even inside a
    function (such an import hides the cycle, it does not remove it)."""
    assert module_cycles(module_graph(SRC)) == []


def test_the_cycle_check_finds_a_planted_cycle(tmp_path):
    fake = tmp_path / "defectscope"
    (fake / "engine").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "engine" / "__init__.py").write_text("")
    (fake / "engine" / "a.py").write_text("from defectscope.engine.b import g\n")
    (fake / "engine" / "b.py").write_text("def g():\n    from defectscope.engine import a\n")
    (fake / "engine" / "c.py").write_text("from defectscope.engine import a\n")
    assert module_cycles(module_graph(fake)) == [["defectscope.engine.a", "defectscope.engine.b"]]


def test_no_import_cycles_between_packages():
    assert package_cycles(SRC) == []


def test_the_check_finds_an_upward_import(tmp_path):
    """The checker itself can fail: a models module importing the engine is reported."""
    fake = tmp_path / "defectscope"
    (fake / "models").mkdir(parents=True)
    (fake / "engine").mkdir()
    (fake / "models" / "bad.py").write_text("def f():\n    from defectscope.engine import x\n")
    (fake / "engine" / "ok.py").write_text("from defectscope.models import bad\n")
    found = upward_imports(fake)
    assert found and all("models/bad.py:2 (models) imports defectscope.engine" in f for f in found)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        "import defectscope",
        "from defectscope.cli import build_parser; build_parser()",
        "import defectscope.models, defectscope.engine.fitting.options",
    ],
)
def test_light_paths_do_not_import_torch(code):
    assert "torch" not in _modules_after(code)


def test_the_engine_names_no_detector():
    """Each detector's folder owns its code, its torch-free path included (``DetectorInfo.lean``,
    the ``LeanPath`` protocol): no engine module compares against a detector's name, so adding
    a detector never means editing the engine."""
    from defectscope.models import DETECTORS

    found = []
    for path in sorted((SRC / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in DETECTORS:
                found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert found == []


def test_every_declared_lean_path_keeps_the_contract():
    import inspect

    from defectscope.models import DETECTORS
    from defectscope.models.lean import LeanPath

    declared = [info for info in DETECTORS.values() if info.lean]
    assert {info.name for info in declared} == {"padim", "patchcore"}
    for info in declared:
        module = info.load_lean()
        for name in ("lean_key", "lean_fitter", "lean_restore"):
            wanted = list(inspect.signature(getattr(LeanPath, name)).parameters)[1:]
            assert list(inspect.signature(getattr(module, name)).parameters) == wanted, name


#: the engine's folders, top to bottom: an import between two of them points down
ENGINE_LAYERS = {
    "workflows": 4,
    "fitting": 3,
    "persistence": 2,
    "runtimes": 2,
    "scoring": 1,
    "rules": 0,
}


def engine_upward_imports(engine: Path) -> list[str]:
    problems = []
    for path in sorted(engine.rglob("*.py")):
        parts = path.relative_to(engine).parts
        if len(parts) == 1:
            if parts[0] != "__init__.py":
                problems.append(f"{path.name}: a module outside the engine's folders")
            continue
        here = parts[0]
        if here not in ENGINE_LAYERS:
            problems.append(f"{here}/: a folder without a layer in ENGINE_LAYERS")
            continue
        for line, name in imports(path):
            bits = name.split(".")
            if bits[:2] != ["defectscope", "engine"] or len(bits) < 3:
                continue
            there = bits[2]
            if there != here and ENGINE_LAYERS.get(there, -1) >= ENGINE_LAYERS[here]:
                problems.append(f"{here}/{path.name}:{line} imports {name}")
    return problems


def test_the_engine_s_folders_are_layers():
    """The engine's folders show its architecture: workflows on fitting, fitting on files and
    runtimes, those on scoring, everything on the shared rules; never back up or sideways."""
    assert engine_upward_imports(SRC / "engine") == []


def test_the_engine_layer_check_finds_an_upward_import(tmp_path):
    engine = tmp_path / "engine"
    (engine / "rules").mkdir(parents=True)
    (engine / "scoring").mkdir()
    (engine / "rules" / "bad.py").write_text(
        "def f():\n    from defectscope.engine.scoring.scorer import Scorer\n"
    )
    (engine / "scoring" / "ok.py").write_text("from defectscope.engine.rules import bad\n")
    found = engine_upward_imports(engine)
    assert found and all(
        f.startswith("rules/bad.py:2 imports defectscope.engine.scoring") for f in found
    )
