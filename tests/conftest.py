"""Shared fixtures: real photographs from the scikit-image and scikit-learn wheels."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.ray_cluster import ray_cluster  # noqa: F401 - the session fixture, shared

SKIMAGE_DATA = Path(__import__("skimage").__file__).parent / "data"
SKLEARN_IMAGES = Path(__import__("sklearn").__file__).parent / "datasets" / "images"
PEERDATA = Path(__file__).resolve().parents[1].parent / "shared" / "peerdata"


def photo(name: str) -> Image.Image:
    """A real photo by name: skimage's data files, or sklearn's china/flower."""
    for folder in (SKIMAGE_DATA, SKLEARN_IMAGES):
        for suffix in (".png", ".jpg"):
            path = folder / f"{name}{suffix}"
            if path.is_file():
                with Image.open(path) as im:
                    return im.convert("RGB") if im.mode not in ("RGB", "L") else im.copy()
    raise FileNotFoundError(name)


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


@pytest.fixture
def astronaut() -> Image.Image:
    return photo("astronaut")


class AuditLog:
    """Opens and connections seen while recording, from ``sys.addaudithook``.

    A hook cannot be removed once added, so one is installed for the session and records only
    while a test's ``audit`` fixture is active. ``opens`` holds the paths as they resolved at
    the moment of opening;
    ``connects`` holds the addresses handed to ``socket.connect``.
    """

    def __init__(self) -> None:
        self.recording = False
        self.opens: list[str] = []
        self.connects: list[object] = []

    def __call__(self, event: str, args: tuple) -> None:
        if not self.recording:
            return
        if event == "open" and args and isinstance(args[0], (str, bytes, Path)):
            # Resolved now: a path swapped for a symlink later must count as what was opened.
            self.opens.append(os.path.realpath(os.fsdecode(args[0])))
        elif event == "socket.connect" and len(args) >= 2:
            self.connects.append(args[1])

    def opened_outside(self, *roots: Path) -> list[str]:
        """Opened paths under none of ``roots`` that are not Python's own library files."""
        allowed = [str(r.resolve()) for r in roots] + _LIBRARY_ROOTS
        outside = []
        for real in self.opens:
            if not any(real == a or real.startswith(a.rstrip("/") + "/") for a in allowed):
                outside.append(real)
        return outside


# Imports that a code path does lazily open module files below these; they are not input.
_LIBRARY_ROOTS = sorted(
    {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    | {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
)
_AUDIT = AuditLog()
sys.addaudithook(_AUDIT)


@pytest.fixture
def audit():
    """Record every open and connection the test's code makes while the fixture is active."""
    _AUDIT.opens.clear()
    _AUDIT.connects.clear()
    _AUDIT.recording = True
    try:
        yield _AUDIT
    finally:
        _AUDIT.recording = False


@pytest.fixture(autouse=True)
def _no_dead_dagster_state_storage(monkeypatch: pytest.MonkeyPatch):
    """No test loads definitions through another test's disposed Dagster instance.

    ``with dg.instance_for_test()`` makes the instance's defs state store current in a context
    variable, and in some sequences (test_automation's, then a later ``dg.materialize`` on an
    ephemeral instance) the store outlives its instance: loading definitions then fails with
    "Attempted to resolve undefined DagsterInstance weakref" (Dagster 1.13.27). A store whose
    instance is gone is treated as no store, which is what a fresh process would have.
    """
    from dagster._core.storage.defs_state.base import DefsStateStorage

    current = DefsStateStorage.get.__func__

    def live_only(cls):
        storage = current(cls)
        ref = getattr(storage, "_instance_weakref", None)
        return None if ref is not None and ref() is None else storage

    monkeypatch.setattr(DefsStateStorage, "get", classmethod(live_only))
    yield


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves ``os.environ`` as it found it.

    ``dataplatform.cli.main`` exports the home it resolved (its steps read it), so a test that
    calls it in process would hand its home, long deleted, to every later test and to the
    Ray jobs they start.
    """
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)
