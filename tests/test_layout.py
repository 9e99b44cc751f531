"""The shape DESIGN.md and STYLE.md ask of the code, checked on the source itself: data flows
one way (the engine imports neither the API, the worker nor the evaluation, except the `rag`
command), no module-level import cycle, no private name imported from another module, no HTTP
status inside the engine, and modules small enough to read."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rag", "api", "ingest", "eval")
MAX_LINES = 450


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the four packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = modules()


def imports(path: Path, top_level_only: bool) -> Iterator[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for each import in `path`.

    `top_level_only` skips imports inside functions and `if TYPE_CHECKING:` blocks, which
    run later or never (what a module-level cycle is made of).
    """
    tree = ast.parse(path.read_text(), str(path))
    nodes: list[ast.AST] = list(tree.body) if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names], node.lineno


def resolve(module: str, names: list[str]) -> list[str]:
    """The project modules an import loads: the module, and any names that are submodules."""
    if module not in MODULES:
        return []
    return [module, *(f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES)]


def test_the_engine_imports_neither_api_nor_ingest_nor_eval() -> None:
    wrong = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {target}"
             for m in MODULES if m.startswith("rag") and m != "rag.cli"
             for target, _, line in imports(MODULES[m], top_level_only=False)
             if target.split(".")[0] in ("api", "ingest", "eval")]
    assert wrong == []


def test_no_module_level_import_cycle() -> None:
    graph = {m: {dep for target, names, _ in imports(path, top_level_only=True)
                 for dep in resolve(target, names) if dep != m}
             for m, path in MODULES.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_private_name_is_imported_from_another_module() -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name} from {target}"
             for path in [*MODULES.values(), *sorted((ROOT / "tests").rglob("*.py"))]
             for target, names, line in imports(path, top_level_only=False)
             if target.split(".")[0] in PACKAGES
             for name in names if name.startswith("_") and not name.startswith("__")]
    assert wrong == []


def test_no_http_status_inside_the_engine() -> None:
    status = re.compile(r"\bstatus(_code)?\s*=\s*[1-5]\d\d\b|\bHTTPException\b|\blitestar\b")
    wrong = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for m, path in MODULES.items() if m.startswith("rag")
             for n, line in enumerate(path.read_text().splitlines(), start=1)
             if status.search(line)]
    assert wrong == []


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_stay_small(package: str) -> None:
    long = {str(path.relative_to(ROOT)): n for m, path in MODULES.items()
            if m.split(".")[0] == package
            and (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_engine_is_laid_out_in_rooms() -> None:
    """Subpackages at its seams, few loose modules, and faces for `__init__.py`."""
    rag = ROOT / "rag"
    rooms = sorted(p.name for p in rag.iterdir() if (p / "__init__.py").exists())
    assert {"ask", "documents", "index", "generation", "stores"} <= set(rooms)
    loose = sorted(p.name for p in rag.glob("*.py"))
    assert len(loose) <= 12, loose
    for init in rag.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        logic = [n for n in tree.body if not isinstance(
            n, ast.Expr | ast.Import | ast.ImportFrom | ast.Assign)]
        assert logic == [], f"{init} holds code; a subpackage's __init__ is a face"


def test_the_service_only_wires() -> None:
    source = (ROOT / "rag" / "service.py").read_text()
    tree = ast.parse(source)
    [service] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RagService"]
    assert service.end_lineno is not None
    assert service.end_lineno - service.lineno + 1 <= 200
