"""The repository's layout: the package imports itself without cycles, and the tests import no
other test file and no benchmark code but the tools they test (shared test code lives in
helpers.py, conftest.py and support/)."""

import ast
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "mask_rcnn_ext"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, modules: set[str]) -> set[str]:
    """The plain modules (not packages) of ``modules`` that ``path`` imports, anywhere in it
    (function-level imports included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found & modules


def test_the_package_has_no_import_cycle_between_its_modules():
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    graph = {name: _imported(path, set(paths)) - {name} for name, path in paths.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            assert state.get(other) != "open", " -> ".join([*trail, name, other])
            if other not in state:
                visit(other, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_no_test_imports_another_test_file():
    tests = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    for path in (ROOT / "tests").glob("*.py"):
        imported = {name.split(".")[0] for name in _imported(path, tests)}
        assert not imported, f"{path.name} imports {sorted(imported)}"


# The tests of benchmark tools import the tool they test (its functions are their subject), and
# no test imports benchmark code as a fixture: what tests and benchmarks share is in support/.
BENCHMARK_TOOL_TESTS = {"test_ablation_report.py": {"benchmarks.ablation"},
                        "test_gpu_bundle.py": {"benchmarks.gpu_bundle"}}


def test_tests_import_from_benchmarks_only_the_tool_they_test():
    benchmarks = {_module_name(p) for p in (ROOT / "benchmarks").glob("*.py")}
    for path in (ROOT / "tests").glob("*.py"):
        imported = _imported(path, benchmarks | {"benchmarks"}) - {"benchmarks"}
        assert imported == BENCHMARK_TOOL_TESTS.get(path.name, set()), path.name
