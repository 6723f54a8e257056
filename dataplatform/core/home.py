"""Where a deployment keeps what it writes: one root folder, laid out as DESIGN.md says."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "DATAPLATFORM_HOME"
DEFAULT_HOME = ".dataplatform"


@dataclass(frozen=True)
class Home:
    """The folders of one platform home.

    Everything a run writes lives below ``root`` so that a deployment can be moved, backed up
    or wiped as one folder.
    """

    root: Path

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse"

    @property
    def catalog_path(self) -> Path:
        return self.warehouse / "catalog.duckdb"

    def landing_date(self, date: str) -> Path:
        return self.landing / date

    def landing_dates(self) -> list[str]:
        """Dates that have a landing folder, oldest first."""
        if not self.landing.is_dir():
            return []
        return sorted(
            p.name for p in self.landing.iterdir() if p.is_dir() and _looks_like_date(p.name)
        )


def _looks_like_date(name: str) -> bool:
    parts = name.split("-")
    return (
        len(parts) == 3 and [len(p) for p in parts] == [4, 2, 2] and name.replace("-", "").isdigit()
    )


def resolve_home(root: str | os.PathLike[str] | None = None) -> Home:
    """The home named explicitly, else by ``DATAPLATFORM_HOME``, else ``./.dataplatform``."""
    chosen = root if root is not None else os.environ.get(HOME_ENV, DEFAULT_HOME)
    return Home(Path(chosen).expanduser().resolve())
