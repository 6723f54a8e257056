"""The warehouse on an object store (``s3://bucket/prefix``) through fsspec.

Only imported when a warehouse URL names a remote scheme: s3fs and its async stack are heavy,
and Dagster imports the code location in every step process.

- Credentials and endpoint come from the standard AWS configuration that botocore reads:
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or ``AWS_PROFILE``), ``AWS_DEFAULT_REGION``,
  and ``AWS_ENDPOINT_URL`` for an S3-compatible server (MinIO, Ceph, moto).
- Every object is uploaded whole in one ``PUT``, or above 100 MiB as a multipart upload, which
  S3 publishes only when it completes (s3fs aborts it on failure); a server-side copy is
  published whole too. A reader sees the old object or the new one.
- Commits (``warehouse.commit_stage``) run the warehouse's protocol with what S3 has instead of
  a rename: temp objects are PUT beside their final keys, the commit record object
  ``_commits/<id>.json`` is PUT (the commit point: one PUT is atomic), then each temp object is
  copied onto its final key and deleted, then the record is deleted. A writer that dies before
  the record's PUT leaves the old files whole; after it, the record names every temp object and
  ``warehouse.recover`` (run by every reader and the next writer) finishes the copies. So after
  a crash at any moment a reader that recovers first sees the old files of a commit or the new
  ones, never a mix. What S3 cannot give here: (1) a reader that reads a partition and then its
  ledger *while* a live writer is in its copy phase can see the new one and the old other, as
  it can between two renames locally (``funnel`` re-checks after recovering when commit ids
  differ); (2) two writers of the same partition on different machines are not serialized: S3
  has no lock, so their copies (and the clean-up of temp objects) can interleave. Writers on one
  machine take turns through the home's lock file, as on a local warehouse.
- Reads fetch the whole object in one GET, so a reader sees one version even mid-replace.
- Listings are never cached: another process may have written a partition since the last one.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from dataplatform.core.store.home import WAREHOUSE_URL_ENV

# Where botocore looks for an S3-compatible server's address, most specific first.
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# The tail read for a Parquet footer: enough for the footers of the tables written here.
FOOTER_READ_BYTES = 64 * 1024


class ObjectStoreError(OSError):
    """The object store cannot be used as configured (bucket, credentials, endpoint, client)."""


class ObjectStore:
    """Whole-object reads and writes, and flat listings, in one bucket.

    Paths in and out are full URLs (``s3://bucket/prefix/table/date=.../part-0.parquet``), so
    they can be shown to users and handed to DuckDB as they are.
    """

    def __init__(self, bucket_url: str, fs: Any) -> None:
        self.url = bucket_url
        self.fs = fs
        self.protocol = urlsplit(bucket_url).scheme

    def put(self, url: str, data: bytes) -> None:
        self.fs.pipe_file(self._key(url), data)

    def put_parquet(self, url: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd", write_page_checksum=True)
        self.put(url, buffer.getvalue())

    def get(self, url: str) -> bytes:
        return self.fs.cat_file(self._key(url))

    def is_file(self, url: str) -> bool:
        return self.fs.isfile(self._key(url))

    def files(self, prefix_url: str) -> list[str]:
        """Every object below ``prefix_url``, sorted, from one (paginated) listing."""
        prefix = self._key(prefix_url).rstrip("/") + "/"
        return sorted(self._url(p) for p in self.fs.find(prefix))

    def listing(self, prefix_url: str) -> list[str]:
        """Every object below ``prefix_url``, sorted: one LIST request per 1000 keys on S3.

        ``files`` goes through fsspec's ``find``, which adds a HEAD and a second LIST when the
        prefix is empty; this is for folders read on every call, such as the commit records.
        """
        if self.protocol not in ("s3", "s3a"):
            return self.files(prefix_url)
        bucket, _, key = self._key(prefix_url).partition("/")
        found: list[str] = []
        request = {"Bucket": bucket, "Prefix": key.rstrip("/") + "/"}
        while True:
            page = self.fs.call_s3("list_objects_v2", **request)
            found += [f"{self.protocol}://{bucket}/{o['Key']}" for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(found)
            request["ContinuationToken"] = page["NextContinuationToken"]

    def download(self, url: str, path: str | os.PathLike[str]) -> None:
        """Stream the object at ``url`` into the local file ``path`` (never held whole)."""
        self.fs.get_file(self._key(url), os.fspath(path))

    def upload(self, path: str | os.PathLike[str], url: str) -> None:
        """Stream the local file ``path`` to ``url`` (multipart above the client's block size,
        published only when complete)."""
        self.fs.put_file(os.fspath(path), self._key(url))

    def listing_times(self, prefix_url: str) -> list[tuple[str, float]]:
        """Every object below ``prefix_url`` with its last-modified time (epoch seconds)."""
        prefix = self._key(prefix_url).rstrip("/") + "/"
        found = []
        for key, info in sorted(self.fs.find(prefix, detail=True).items()):
            modified = info.get("LastModified") or info.get("mtime") or info.get("created")
            if hasattr(modified, "timestamp"):
                modified = modified.timestamp()
            found.append((self._url(key), float(modified or 0.0)))
        return found

    def delete(self, urls: Iterable[str]) -> None:
        keys = [self._key(u) for u in urls]
        if keys:
            self.fs.rm(keys)

    def move(self, src_url: str, dst_url: str) -> None:
        """Server-side copy onto ``dst_url`` (published whole), then delete ``src_url``.

        A missing source is not an error: a commit's temp object already moved stays moved.
        """
        try:
            self.fs.copy(self._key(src_url), self._key(dst_url))
        except FileNotFoundError:
            return
        self.delete([src_url])

    def parquet_metadata(self, url: str) -> pq.FileMetaData:
        """The footer of a Parquet object, from one suffix GET (two when the footer is large).

        A suffix range needs no HEAD first, so a writer replacing the object cannot make the
        length and the bytes disagree.
        """
        tail = self.fs.cat_file(self._key(url), start=-FOOTER_READ_BYTES)
        if len(tail) >= 8 and tail[-4:] == b"PAR1":
            needed = int.from_bytes(tail[-8:-4], "little") + 8
            if needed > len(tail):
                tail = self.fs.cat_file(self._key(url), start=-needed)
        return pq.read_metadata(pa.BufferReader(tail))

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        """Let ``con`` read this store's URLs (DuckDB's httpfs cannot be downloaded offline)."""
        con.register_filesystem(self.fs)

    def _key(self, url: str) -> str:
        return self.fs._strip_protocol(url)

    def _url(self, key: str) -> str:
        return f"{self.protocol}://{key}"


_STORES: dict[tuple[str, int, tuple[str | None, ...]], ObjectStore] = {}


def open_store(url: str) -> ObjectStore:
    """The store of ``url``'s bucket, checked once per process (a forked child opens its own)
    and per endpoint setting (a client never outlives the server address it was made for)."""
    parts = urlsplit(url)
    bucket_url = f"{parts.scheme}://{parts.netloc}"
    key = (bucket_url, os.getpid(), tuple(os.environ.get(n) for n in ENDPOINT_ENVS))
    if key not in _STORES:
        store = ObjectStore(bucket_url, _filesystem(url))
        _check_access(store)
        _STORES[key] = store
    return _STORES[key]


def filesystem_class(url: str, setting: str) -> Any:
    """fsspec's filesystem class for ``url``; an error naming ``setting`` when there is none."""
    import fsspec

    protocol = urlsplit(url).scheme
    try:
        return fsspec.get_filesystem_class(protocol)
    except ValueError as exc:
        raise ObjectStoreError(
            f"{setting}={url}: fsspec knows no filesystem for {protocol}://"
        ) from exc
    except ImportError as exc:
        package = "s3fs" if protocol in ("s3", "s3a") else f"the fsspec package for {protocol}://"
        raise ObjectStoreError(
            f"{setting}={url} needs {package}: pip install it into this environment ({exc})"
        ) from exc


def _filesystem(url: str) -> Any:
    cls = filesystem_class(url, WAREHOUSE_URL_ENV)
    # Listings are not cached: partitions written by other processes must show up at once.
    # Each store owns its client (open_store caches stores), so a client made under other
    # credentials is never handed back by fsspec's instance cache.
    return cls(use_listings_cache=False, skip_instance_cache=True)


def _check_access(store: ObjectStore) -> None:
    """Fail once, early and by name, when the bucket or the credentials are wrong."""
    check_bucket(store.fs, store.url, "warehouse", WAREHOUSE_URL_ENV)


def check_bucket(fs: Any, url: str, role: str, setting: str) -> None:
    """One HEAD of ``url``'s bucket: an error naming the ``role`` (warehouse, landing), the
    ``setting`` that points there, and what to fix, when the bucket or credentials are wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("s3", "s3a"):
        return
    from botocore.exceptions import BotoCoreError, NoCredentialsError

    what = f"{role} bucket {url} ({setting})"
    endpoint = next((n for n in ENDPOINT_ENVS if os.environ.get(n)), None)
    where = f"at {os.environ[endpoint]} ({endpoint})" if endpoint else "on AWS S3"
    try:
        fs.call_s3("head_bucket", Bucket=parts.netloc)
    except NoCredentialsError as exc:
        raise ObjectStoreError(
            f"{what}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE)"
        ) from exc
    except FileNotFoundError as exc:
        raise ObjectStoreError(
            f"{what}: bucket {parts.netloc!r} does not exist {where}; create it or point "
            f"{setting} at an existing bucket"
        ) from exc
    except PermissionError as exc:
        raise ObjectStoreError(
            f"{what}: access denied {where} with the configured credentials "
            "(AWS_ACCESS_KEY_ID / AWS_PROFILE)"
        ) from exc
    except (BotoCoreError, OSError) as exc:
        raise ObjectStoreError(f"{what}: cannot reach S3 {where}: {exc}") from exc
