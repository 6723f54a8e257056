"""Where a deployment keeps what it writes: one root folder, laid out as DESIGN.md says."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "DATAPLATFORM_HOME"
WAREHOUSE_URL_ENV = "DATAPLATFORM_WAREHOUSE_URL"
DEFAULT_HOME = ".dataplatform"


@dataclass(frozen=True)
class Home:
    """The folders of one platform home.

    Everything a run writes lives below ``root`` so that a deployment can be moved, backed up
    or wiped as one folder, except the warehouse when ``warehouse_url`` puts it on an object
    store (``s3://bucket/prefix``). Landing folders and models stay below ``root`` either way.
    """

    root: Path
    warehouse_url: str = ""

    def __post_init__(self) -> None:
        if self.warehouse_url and not _is_url(self.warehouse_url):
            raise ValueError(
                f"{WAREHOUSE_URL_ENV}={self.warehouse_url!r} is not an object-store URL such as "
                f"s3://bucket/prefix; a local warehouse lives under {HOME_ENV}"
            )
        object.__setattr__(self, "warehouse_url", self.warehouse_url.rstrip("/"))

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def warehouse(self) -> Path | str:
        """The warehouse root: a local folder, or the object-store URL (a ``str``)."""
        return self.warehouse_url or self.root / "warehouse"

    @property
    def catalog_path(self) -> Path:
        """The DuckDB catalog file; always local, and only written for a local warehouse."""
        return self.root / "warehouse" / "catalog.duckdb"

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


def _is_url(location: str) -> bool:
    # A one-letter scheme is a Windows drive letter, and file:// is a local folder.
    scheme, sep, _ = location.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.isalnum() and scheme != "file"


def resolve_home(
    root: str | os.PathLike[str] | None = None, warehouse_url: str | None = None
) -> Home:
    """The home named explicitly, else by ``DATAPLATFORM_HOME``, else ``./.dataplatform``.

    The warehouse is below it unless ``warehouse_url`` (else ``DATAPLATFORM_WAREHOUSE_URL``)
    names an object store.
    """
    chosen = root if root is not None else os.environ.get(HOME_ENV, DEFAULT_HOME)
    url = warehouse_url if warehouse_url is not None else os.environ.get(WAREHOUSE_URL_ENV, "")
    return Home(Path(chosen).expanduser().resolve(), url.strip())
