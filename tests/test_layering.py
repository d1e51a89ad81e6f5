"""The packages depend downwards only: biz2bricks_core imports none of the packages built on it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABOVE_CORE = (
    "biz2bricks_producer",
    "biz2bricks_consumer",
    "biz2bricks_rollup",
    "biz2bricks_fastapi",
    "biz2bricks_devtools",
)


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top, inside functions or under TYPE_CHECKING."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_core_imports_no_package_built_on_it() -> None:
    # Given every module of biz2bricks_core
    sources = sorted((ROOT / "shared_models/src/biz2bricks_core").rglob("*.py"))
    assert sources
    # When their imports are read, lazy and TYPE_CHECKING ones included
    upward = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sources
        for name in _imported_modules(path)
        if name.split(".")[0] in ABOVE_CORE
    }
    # Then none names a package above it
    assert not upward


def test_producer_imports_neither_the_consumer_nor_the_integration() -> None:
    sources = sorted((ROOT / "producer/src/biz2bricks_producer").rglob("*.py"))
    upward = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sources
        for name in _imported_modules(path)
        if name.split(".")[0] in ("biz2bricks_consumer", "biz2bricks_rollup", "biz2bricks_fastapi")
    }
    assert not upward


# Issue 20's sizes ("modules under ~400 lines, classes under ~200"), with the "~" as a margin.
MODULE_LINES = 420
CLASS_LINES = 220
PACKAGES = ("shared_models", "producer", "consumer", "rollup", "fastapi_integration")


def test_modules_and_classes_stay_small() -> None:
    # Given every module of the packages
    sources = [p for package in PACKAGES for p in sorted((ROOT / package / "src").rglob("*.py"))]
    assert len(sources) > 50
    too_long = []
    for path in sources:
        text = path.read_text()
        # When their lines and their classes' lines are counted
        if (lines := len(text.splitlines())) > MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > CLASS_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}: class {node.name} {size} lines")
    # Then none outgrows its bound
    assert too_long == []
