"""Each asset's code version: a digest of the source that decides what the asset writes.

A fixed ``code_version="1"`` never changes, so Dagster never says "code version changed" after
a threshold default or a dedup rule moves. The digest covers the asset's own module and every
``dataplatform.core`` module it imports, directly or through other core modules (found by
parsing the source, not by importing it, so it costs a few milliseconds when the code location
loads and imports no torch). Other asset modules it imports are not followed: ``phash_deduped``
imports ``exact_deduped`` for its key, and a change there is ``exact_deduped``'s. Shared Dagster
glue (``reporting``, the resources) is left out too: it reports and wires, and a change to a
Markdown summary must not make two years of partitions stale.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

CORE = "dataplatform.core"
PACKAGE = Path(__file__).resolve().parents[1]
VERSION_CHARS = 12


def code_version(module: str) -> str:
    """The version of the asset defined in ``module`` (its ``__name__``)."""
    digest = hashlib.sha256()
    for name in sorted({module, *_core_closure(module)}):
        digest.update(name.encode() + b"\0" + _source(name) + b"\0")
    return digest.hexdigest()[:VERSION_CHARS]


def _core_closure(module: str) -> set[str]:
    """Every core module reachable from ``module`` through imports of core modules."""
    seen: set[str] = set()
    pending = [m for m in _imports(module) if _is_core(m)]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(m for m in _imports(name) if _is_core(m) and m not in seen)
    return seen


def _is_core(name: str) -> bool:
    return name == CORE or name.startswith(CORE + ".")


@cache
def _path(module: str) -> Path | None:
    """The source file of a ``dataplatform`` module, found without importing anything."""
    parts = module.split(".")
    if parts[0] != PACKAGE.name:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _source(module: str) -> bytes:
    path = _path(module)
    return path.read_bytes() if path is not None else b""


@cache
def _imports(module: str) -> tuple[str, ...]:
    """The modules ``module`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    source = _source(module)
    if not source:
        return ()
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from package import module` imports a module; `from module import name` not.
            names.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if _is_core(node.module) and _path(f"{node.module}.{alias.name}") is not None
            )
    return tuple(sorted(n for n in names if _path(n) is not None))
