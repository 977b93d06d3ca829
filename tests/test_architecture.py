"""The shape of the house (docs/ARCHITECTURE.md): which module may import which. Imports are read
from the source (every `import`, at the top or inside a function), so a lazy import that closes a
cycle counts as much as a top-level one."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer_core", "app")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules one file imports (`from trainer_core import runs` names trainer_core.runs)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in known}
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    known = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, known) - set(PACKAGES) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (each reported once, from its smallest module)."""
    found: set[tuple[str, ...]] = set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                loop = path[path.index(nxt):]
                start = loop.index(min(loop))
                found.add(tuple(loop[start:] + loop[:start]))
            elif len(path) < 12:
                walk(nxt, [*path, nxt])

    for node in sorted(graph):
        walk(node, [node])
    return [list(c) for c in sorted(found)]


def test_no_module_imports_itself_back():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join([*c, c[0]]) for c in found)


def test_the_cycle_finder_sees_a_lazy_import_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_never_imports_the_ui():
    for module, imported in import_graph().items():
        if module.startswith("trainer_core"):
            assert not [m for m in imported if m.startswith("app")], module
    for path in (REPO / "trainer_core").rglob("*.py"):
        assert "gradio" not in {n.split(".")[0] for n in _all_import_roots(path)}, path


def test_the_training_process_never_imports_the_launcher():
    graph = import_graph()
    reach, todo = set(), ["trainer_core.train"]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in reach:
                reach.add(nxt)
                todo.append(nxt)
    assert "trainer_core.jobs" not in reach


def test_no_tab_imports_another_tab():
    """What two tabs share lives outside app/tabs (app/form.py, app/choices.py), so each tab
    module can be read, and changed, on its own."""
    for module, imported in import_graph().items():
        if module.startswith("app.tabs."):
            assert not [m for m in imported if m.startswith("app.tabs.")], module


def test_the_shared_ui_modules_are_plain_functions():
    """app/form.py and app/choices.py hold no widgets: they run (and are tested) without gradio."""
    for name in ("form", "choices"):
        assert "gradio" not in _all_import_roots(REPO / "app" / f"{name}.py"), name


def _all_import_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module)
    return roots
