"""Where a deployment keeps what it writes: one root folder, laid out as DESIGN.md says."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HOME_ENV = "DATAPLATFORM_HOME"
WAREHOUSE_URL_ENV = "DATAPLATFORM_WAREHOUSE_URL"
LANDING_URL_ENV = "DATAPLATFORM_LANDING_URL"
DEFAULT_HOME = ".dataplatform"


@dataclass(frozen=True)
class Home:
    """The folders of one platform home.

    Everything a run writes lives below ``root`` so that a deployment can be moved, backed up
    or wiped as one folder, except the warehouse when ``warehouse_url`` puts it on an object
    store (``s3://bucket/prefix``). The day folders that arrive are ``landing/<date>/`` below
    ``root``, or ``<landing_url>/<date>/`` when ``landing_url`` puts them on an object store;
    takedown requests and models stay below ``root`` either way.
    """

    root: Path
    warehouse_url: str = ""
    landing_url: str = ""

    def __post_init__(self) -> None:
        if self.warehouse_url and not _is_url(self.warehouse_url):
            raise ValueError(
                f"{WAREHOUSE_URL_ENV}={self.warehouse_url!r} is not an object-store URL such as "
                f"s3://bucket/prefix; a local warehouse lives under {HOME_ENV}"
            )
        if self.landing_url and not is_object_url(self.landing_url):
            raise ValueError(
                f"{LANDING_URL_ENV}={self.landing_url!r} is not an object-store URL such as "
                f"s3://bucket/prefix; a local landing lives under {HOME_ENV}"
            )
        object.__setattr__(self, "warehouse_url", self.warehouse_url.rstrip("/"))
        object.__setattr__(self, "landing_url", self.landing_url.rstrip("/"))
        if self.landing_url:
            _OBJECT_LANDINGS.setdefault(_folder_key(self.landing), set()).add(self.landing_url)

    @property
    def landing(self) -> Path:
        """The local landing folder: takedown requests, and the day folders unless
        ``landing_url`` is set. Later stages pass it to ``image_store.read_location``."""
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
        """The day's folder in the local landing folder."""
        return self.landing / date

    def landing_day(self, date: str) -> Path | str:
        """The day's folder that ingest reads: ``<landing_url>/<date>`` or ``landing/<date>``."""
        return f"{self.landing_url}/{date}" if self.landing_url else self.landing / date

    def has_landing_day(self, date: str) -> bool:
        """Whether anything arrived for ``date`` (one short listing on an object store)."""
        if not self.landing_url:
            return self.landing_date(date).is_dir()
        return bool(_object_listing(f"{self.landing_url}/{date}"))

    def landing_dates(self) -> list[str]:
        """Dates that have a landing folder, oldest first."""
        if self.landing_url:
            listing = _object_listing(self.landing_url)
            names = [e["name"].rstrip("/").rpartition("/")[2] for e in listing]
            kinds = [e.get("type") for e in listing]
            return sorted(
                n
                for n, k in zip(names, kinds, strict=True)
                if k == "directory" and _looks_like_date(n)
            )
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


def is_object_url(location: str) -> bool:
    """Whether ``location`` names an object store (``s3://bucket/key``), not a local path or a
    web address: http(s) image URLs are fetched by ``remote_fetch``, never listed as a landing."""
    return _is_url(location) and location.partition("://")[0].lower() not in ("http", "https")


def resolve_home(
    root: str | os.PathLike[str] | None = None,
    warehouse_url: str | None = None,
    landing_url: str | None = None,
) -> Home:
    """The home named explicitly, else by ``DATAPLATFORM_HOME``, else ``./.dataplatform``.

    The warehouse is below it unless ``warehouse_url`` (else ``DATAPLATFORM_WAREHOUSE_URL``)
    names an object store, and the day folders likewise with ``landing_url`` (else
    ``DATAPLATFORM_LANDING_URL``).
    """
    chosen = root if root is not None else os.environ.get(HOME_ENV, DEFAULT_HOME)
    url = warehouse_url if warehouse_url is not None else os.environ.get(WAREHOUSE_URL_ENV, "")
    landing = landing_url if landing_url is not None else os.environ.get(LANDING_URL_ENV, "")
    return Home(Path(chosen).expanduser().resolve(), url.strip(), landing.strip())


# Which object-store landings each local landing folder stands for. Later stages call
# ``read_location(location, home.landing)`` with the local folder (some re-wrap it in
# ``Path``, which would fold ``s3://`` to ``s3:/``), so the folder is the key the reader has.
_OBJECT_LANDINGS: dict[str, set[str]] = {}


def _folder_key(folder: Path | str) -> str:
    return os.path.abspath(os.fspath(folder))


def configured_object_landings() -> dict[str, list[str]]:
    """Every object-store landing the ``Home``s of this process configured, by local folder:
    what a Ray worker, which builds no ``Home``, is given with ``allow_object_landings``."""
    return {folder: sorted(urls) for folder, urls in sorted(_OBJECT_LANDINGS.items())}


def allow_object_landings(landings: dict[str, list[str]]) -> None:
    """Let this process read images from ``landings`` (``configured_object_landings`` of the
    process that configured them), as if it had built their ``Home``s."""
    for folder, urls in landings.items():
        _OBJECT_LANDINGS.setdefault(folder, set()).update(urls)


def object_landings_for(landing: Path | str) -> list[str]:
    """The object-store landing URLs that images read against the local folder ``landing`` may
    come from: ``landing`` itself when it is one, else the ``landing_url`` of every ``Home``
    built in this process with that folder, and ``DATAPLATFORM_LANDING_URL``. A Ray worker on
    another node builds no ``Home``; the engine forwards ``DATAPLATFORM_*`` to it."""
    text = os.fspath(landing)
    if is_object_url(text):
        return [text.rstrip("/")]
    found = set(_OBJECT_LANDINGS.get(_folder_key(text), ()))
    configured = os.environ.get(LANDING_URL_ENV, "").strip().rstrip("/")
    if configured and is_object_url(configured):
        found.add(configured)
    return sorted(found)


_LANDING_FILESYSTEMS: dict[tuple[str, int, tuple[str | None, ...]], Any] = {}


def landing_filesystem(url: str) -> Any:
    """The fsspec filesystem that reads the object-store landing at ``url``.

    Made and checked once per bucket, process and endpoint setting, as the warehouse's store
    is (``object_store.open_store``): a wrong bucket or missing credentials fail here, by name,
    instead of looking like a day where nothing arrived. Endpoint and credentials are botocore's
    (``AWS_ENDPOINT_URL`` for an S3-compatible server, ``AWS_ACCESS_KEY_ID`` ...); an
    ``s3://`` URL names a bucket and a key, never a host, so no other server is contacted.
    """
    from dataplatform.core.store.object_store import ENDPOINT_ENVS

    parts = urlsplit(url)
    bucket_url = f"{parts.scheme}://{parts.netloc}"
    key = (bucket_url, os.getpid(), tuple(os.environ.get(n) for n in ENDPOINT_ENVS))
    if key not in _LANDING_FILESYSTEMS:
        fs = _new_filesystem(url)
        _check_landing_access(fs, bucket_url)
        _LANDING_FILESYSTEMS[key] = fs
    return _LANDING_FILESYSTEMS[key]


def object_path(url: str) -> str:
    """``s3://bucket/key`` as fsspec names it (``bucket/key``)."""
    return url.partition("://")[2]


def _object_listing(url: str) -> list[dict[str, Any]]:
    """What lies directly below ``url`` (one delimited listing); nothing when it does not exist."""
    try:
        return landing_filesystem(url).ls(object_path(url), detail=True)
    except FileNotFoundError:
        return []


def _new_filesystem(url: str) -> Any:
    from dataplatform.core.store.object_store import filesystem_class

    cls = filesystem_class(url, LANDING_URL_ENV)
    # Not cached: a day that is still arriving must be listed afresh on every look.
    return cls(use_listings_cache=False, skip_instance_cache=True)


def _check_landing_access(fs: Any, bucket_url: str) -> None:
    from dataplatform.core.store.object_store import check_bucket

    check_bucket(fs, bucket_url, "landing", LANDING_URL_ENV)
