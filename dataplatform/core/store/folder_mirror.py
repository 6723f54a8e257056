"""A local folder kept as a cache of a folder on the object store (the dedup state's mirror).

The dedup state is searched with ``pread`` and memory maps, which an object store cannot give,
so each machine works on a local copy and the object store holds the copy every machine
shares, beside the warehouse. The state's layout makes the mirror simple:

- every file below a segment folder is written once under a fresh name and never changed;
- ``manifest.json`` at the top is the commit point: it names the live segments;
- small ``.json`` files are compared by content (cheap, and safe should one ever change).

Files travel streamed (``ObjectStore.download`` / ``upload``), never whole in memory: a
semantic segment's vectors are gigabytes. ``push`` uploads what the remote lacks, the top
manifest last, then deletes remote files that the local folder no longer has and that are
older than ``DELETE_GRACE_S`` (the state removes a retired segment only after its own grace
period, so a reader that read the old manifest can still fetch it; and a segment another
machine uploaded a moment ago, which this machine has not pulled, is never taken for a retired
one), or at once for the folders a takedown purged. ``pull`` fetches the remote manifest and,
when it differs from the local one, the files the local copy lacks, checks that the manifest
did not change meanwhile (else it starts again), then replaces the local manifest last. A
reader therefore sees the old state or the new one, never a manifest naming files it does not
have. Writers on different machines are not serialized, as with the warehouse itself
(``object_store``): S3 has no lock.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from dataplatform.core.store.durable import fsync_path
from dataplatform.core.store.object_store import ObjectStore, open_store

TOP_MANIFEST = "manifest.json"
DELETE_GRACE_S = 3600.0
_PULL_ATTEMPTS = 3


class MirrorChanged(RuntimeError):
    """The remote copy kept changing while it was pulled (another machine writing it)."""


# Files that are rewritten in place: compared by content, not by size.
_MUTABLE_SUFFIX = ".json"


class FolderMirror:
    """``local`` (a folder of this machine) mirrored at ``remote_url`` (s3://bucket/prefix)."""

    def __init__(self, local: Path, remote_url: str, store: ObjectStore | None = None) -> None:
        self.local = Path(local)
        self.remote_url = remote_url.rstrip("/")
        self._store = store

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = open_store(self.remote_url)
        return self._store

    def pull(self) -> int:
        """Bring the local copy to the remote's state; returns the files fetched.

        One GET when nothing changed (the manifests agree); a listing and the missing files
        otherwise, each streamed to a temp file and renamed. The local manifest is replaced
        last, so a local reader never sees it name a file that is not there yet; a file that
        vanishes meanwhile (another machine's push) starts the pull again from the manifest.
        Local files the new manifest no longer names are the state's to remove.
        """
        for _ in range(_PULL_ATTEMPTS):
            fetched = self._pull_once()
            if fetched is not None:
                return fetched
        raise MirrorChanged(
            f"{self.remote_url} changed while it was read, {_PULL_ATTEMPTS} times: another "
            "machine is writing it; run again"
        )

    def _pull_once(self) -> int | None:
        top = self._remote(TOP_MANIFEST)
        try:
            manifest = self.store.get(top)
        except FileNotFoundError:
            return 0
        local_top = self.local / TOP_MANIFEST
        if local_top.is_file() and local_top.read_bytes() == manifest:
            return 0
        fetched = 0
        for url, relative, _ in self._remote_files():
            if relative == TOP_MANIFEST:
                continue
            path = self.local / relative
            if path.is_file() and not relative.endswith(_MUTABLE_SUFFIX):
                continue  # written once under its name: the same bytes
            try:
                if relative.endswith(_MUTABLE_SUFFIX):
                    data = self.store.get(url)
                    if path.is_file() and path.read_bytes() == data:
                        continue
                    _write_atomically(path, data)
                else:
                    _download_atomically(self.store, url, path)
            except FileNotFoundError:
                return None  # removed since the listing: read the manifest again
            fetched += 1
        if self.store.get(top) != manifest:
            return None  # a push landed meanwhile: its files may not all be here
        _write_atomically(local_top, manifest)
        return fetched + 1

    def push(self, delete_now: Iterable[str] = ()) -> int:
        """Publish the local copy; returns the files uploaded (the top manifest included).

        Files are streamed, the top manifest last. Remote files the local copy no longer has
        are deleted once older than ``DELETE_GRACE_S``; those below the folders ``delete_now``
        names (a takedown's purged segments) at once."""
        listed = self._remote_files()
        remote = {relative: url for url, relative, _ in listed}
        uploaded = 0
        local = dict(self._local_files())
        for relative, path in sorted(local.items()):
            if relative == TOP_MANIFEST:
                continue
            if relative in remote and not relative.endswith(_MUTABLE_SUFFIX):
                continue
            if relative.endswith(_MUTABLE_SUFFIX):
                data = path.read_bytes()
                if relative in remote and _same(self.store.get(remote[relative]), data):
                    continue
                self.store.put(self._remote(relative), data)
            else:
                self.store.upload(path, self._remote(relative))
            uploaded += 1
        if TOP_MANIFEST in local:
            self.store.put(self._remote(TOP_MANIFEST), local[TOP_MANIFEST].read_bytes())
            uploaded += 1
        now = time.time()
        purged = tuple(f"{name}/" for name in delete_now)
        gone = [
            url
            for url, relative, modified in listed
            if relative not in local
            and (now - modified > DELETE_GRACE_S or relative.startswith(purged))
        ]
        self.store.delete(gone)
        return uploaded

    def _remote(self, relative: str) -> str:
        return f"{self.remote_url}/{relative}"

    def _remote_files(self) -> list[tuple[str, str, float]]:
        """(url, path below the mirror, last-modified time) of every remote file."""
        prefix = self.remote_url + "/"
        return [
            (url, url[len(prefix) :], modified)
            for url, modified in self.store.listing_times(self.remote_url)
        ]

    def _local_files(self) -> list[tuple[str, Path]]:
        """Every file below ``local`` except hidden ones (the lock, temp folders)."""
        found = []
        if not self.local.is_dir():
            return found
        for folder, dirs, files in os.walk(self.local):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                path = Path(folder) / name
                found.append((path.relative_to(self.local).as_posix(), path))
        return found


def _same(a: bytes, b: bytes) -> bool:
    return len(a) == len(b) and hashlib.sha256(a).digest() == hashlib.sha256(b).digest()


def _download_atomically(store: ObjectStore, url: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        store.download(url, temp)
        fsync_path(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_path(path.parent)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    fsync_path(path.parent)
