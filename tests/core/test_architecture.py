"""The folder layout is the architecture: core is pure, grouped by concern, and acyclic by layer."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "dataplatform" / "core"
PACKAGES = {"store", "engine", "ingest", "dedup", "scoring", "tokens", "records", "samples"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_never_imports_dagster():
    offenders = {
        str(path.relative_to(CORE)): sorted(
            n for n in _imports(path) if n.split(".")[0] == "dagster"
        )
        for path in CORE.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_core_modules_live_in_their_concern_packages():
    top_level = sorted(p.name for p in CORE.glob("*.py") if p.name != "__init__.py")
    assert top_level == []
    assert {p.name for p in CORE.iterdir() if p.is_dir() and p.name != "__pycache__"} == PACKAGES
    for package in PACKAGES:
        assert (CORE / package / "__init__.py").read_text().startswith('"""'), package


def test_the_store_depends_on_no_other_concern():
    """store/ is the bottom layer: everything may use it, it uses nothing above it."""
    above = {f"dataplatform.core.{p}" for p in PACKAGES - {"store"}}
    uses = {
        str(path.relative_to(CORE)): sorted(
            n for n in _imports(path) if any(n == a or n.startswith(a + ".") for a in above)
        )
        for path in (CORE / "store").rglob("*.py")
    }
    assert {k: v for k, v in uses.items() if v} == {}
