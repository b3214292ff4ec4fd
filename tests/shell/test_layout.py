"""The repository's layout rules: tests import nothing from benchmarks, ``__all__`` lists one
name per line, and every package module is in the README's layout section."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "numpyro_gflow"
TESTS = ROOT / "tests"


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(TESTS.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(TESTS)))
def test_tests_import_nothing_from_benchmarks(path):
    assert not [m for m in _imported_modules(path) if m.split(".")[0] == "benchmarks"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_all_lists_one_name_per_line(path):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if (isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "__all__" for t in node.targets)
                and isinstance(node.value, (ast.List, ast.Tuple)) and len(node.value.elts) > 1):
            lines = [e.lineno for e in node.value.elts]
            assert len(set(lines)) == len(lines), (
                f"{path.name}: __all__ has several names on a line")


def test_readme_layout_names_every_package_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    for path in PACKAGE.rglob("*.py"):
        if path.name.startswith("_"):
            continue
        assert path.name in layout, f"README's layout section misses {path.relative_to(ROOT)}"
