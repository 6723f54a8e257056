"""A local folder kept as a cache of a folder on the object store (the dedup state's mirror).

The dedup state is searched with ``pread`` and memory maps, which an object store cannot give,
so each machine works on a local copy and the object store holds the copy every machine
shares, beside the warehouse. The state's layout makes the mirror simple:

- every file below a segment folder is written once under a fresh name and never changed;
- ``manifest.json`` at the top is the commit point: it names the live segments;
- the few other small files that do change (a segment's own manifest in the semantic state)
  are compared by content.

``push`` uploads what the remote lacks or holds differently, the top manifest last, then
deletes remote files that the local folder no longer has and that are older than
``DELETE_GRACE_S`` (the state removes a retired segment only after its own grace period, so a
reader that read the old manifest can still fetch it; and a segment another machine uploaded a
moment ago, which this machine has not pulled, is never taken for a retired one).
``pull`` fetches the remote manifest and, when it differs from the local one, the files the
local copy lacks, then replaces the local manifest last. A reader therefore sees the old state
or the new one, never a manifest naming files it does not have. Writers on different machines
are not serialized, as with the warehouse itself (``object_store``): S3 has no lock.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

from dataplatform.core.store.durable import fsync_path
from dataplatform.core.store.object_store import ObjectStore, open_store

TOP_MANIFEST = "manifest.json"
DELETE_GRACE_S = 3600.0
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
        otherwise. The local manifest is replaced last, so a local reader never sees it name a
        file that is not there yet.
        """
        top = self._remote(TOP_MANIFEST)
        if not self.store.is_file(top):
            return 0
        manifest = self.store.get(top)
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
                data = self.store.get(url)
            except FileNotFoundError:
                continue  # removed since the listing: the manifest read above no longer names it
            if path.is_file() and path.read_bytes() == data:
                continue
            _write_atomically(path, data)
            fetched += 1
        _write_atomically(local_top, manifest)
        return fetched + 1

    def push(self) -> int:
        """Publish the local copy; returns the files uploaded (the top manifest included)."""
        listed = self._remote_files()
        remote = {relative: url for url, relative, _ in listed}
        uploaded = 0
        local = dict(self._local_files())
        for relative, path in sorted(local.items()):
            if relative == TOP_MANIFEST:
                continue
            if relative in remote and not relative.endswith(_MUTABLE_SUFFIX):
                continue
            data = path.read_bytes()
            if relative in remote and _same(self.store.get(remote[relative]), data):
                continue
            self.store.put(self._remote(relative), data)
            uploaded += 1
        if TOP_MANIFEST in local:
            self.store.put(self._remote(TOP_MANIFEST), local[TOP_MANIFEST].read_bytes())
            uploaded += 1
        now = time.time()
        gone = [
            url
            for url, relative, modified in listed
            if relative not in local and now - modified > DELETE_GRACE_S
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


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    fsync_path(path.parent)
