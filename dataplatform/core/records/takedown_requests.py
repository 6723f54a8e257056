"""Takedown requests: read the request files, and find the pairs a request names.

Requests are files under ``landing/takedowns/`` (JSONL or CSV), one request a line::

    {"id": "TD-17", "kind": "url", "value": "https://example.com/a.jpg",
     "filed": "2026-11-20", "reason": "DMCA notice 4411"}

``kind`` is one of ``url``, ``pair_id``, ``image_sha256``, ``image`` (a file under the
takedowns folder: every pair whose pHash is within ``max_distance`` bits of it, default the
pHash dedup threshold) or ``phash`` (16 hex digits, same rule). Every reader goes through
:func:`load_takedowns`. Matching is one function, :func:`match_pairs`, used in three places: at
ingest (``raw_pairs`` keeps future matches out, ledger reason ``takedown``), at the data-card
gate (both through :func:`exclude_taken_down`), and by
:func:`dataplatform.core.records.takedown_apply.apply_takedowns` for what is already written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataplatform.core.dedup.phash import from_hex
from dataplatform.core.dedup.phash_index import DEFAULT_PHASH_THRESHOLD
from dataplatform.core.ingest.image_decode import ImageRejected, inspect_image_bytes
from dataplatform.core.store.home import Home
from dataplatform.core.store.schema import ledger_row, ledger_table

TAKEDOWN_STAGE = "takedown"
TAKEDOWN_REASON = "takedown"
TAKEDOWN_FOLDER = "takedowns"
KINDS = ("url", "pair_id", "image_sha256", "image", "phash")
_REQUEST_SUFFIXES = (".jsonl", ".csv")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PHASH = re.compile(r"[0-9a-f]{16}")
# Columns a pair needs to be matched and to get a ledger row.
MATCH_COLUMNS = ("pair_id", "date", "url", "image_sha256", "phash")


class TakedownRequestError(ValueError):
    """Request files that cannot be read; every problem is listed, none is half-applied."""


@dataclass(frozen=True)
class TakedownRequest:
    request_id: str
    kind: str
    value: str
    filed: str
    reason: str
    origin: str
    max_distance: int | None = None
    phash: str | None = None  # for image and phash requests: the hash matched against

    def describe(self) -> str:
        value = self.value if len(self.value) <= 80 else self.value[:77] + "..."
        rule = f" within {self.max_distance} bits" if self.max_distance is not None else ""
        return f"request {self.request_id} ({self.kind} {value}{rule}, filed {self.filed})"


@dataclass(frozen=True)
class TakedownMatch:
    pair_id: str
    date: str
    request: TakedownRequest
    distance: int | None  # Hamming distance for image / phash requests
    also: tuple[str, ...] = ()  # other requests that match the same pair


def takedown_dir(home: Home) -> Path:
    """Where the request files of ``home`` are filed: ``landing/takedowns/``."""
    return home.landing / TAKEDOWN_FOLDER


def load_takedowns(home: Home) -> list[TakedownRequest]:
    """Every request filed under ``home`` (``landing/takedowns/*.jsonl``, ``*.csv``), in file
    and line order; none when the folder does not exist.

    Raises :class:`TakedownRequestError` naming every bad line: a takedown is a legal request,
    so a typo must stop the run loudly rather than leave a pair in the training set.
    """
    folder = takedown_dir(home)
    if not folder.is_dir():
        return []
    requests: list[TakedownRequest] = []
    problems: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                origin = f"{path.name}:{number}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    problems.append(f"{origin}: not JSON ({exc.msg})")
                    continue
                if not isinstance(obj, dict):
                    problems.append(f"{origin}: a request is a JSON object")
                    continue
                _parse(obj, origin, folder, requests, problems)
        elif path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                for number, obj in enumerate(csv.DictReader(handle), start=2):
                    _parse(obj, f"{path.name}:{number}", folder, requests, problems)
    seen: dict[str, str] = {}
    for request in requests:
        if request.request_id in seen:
            problems.append(
                f"{request.origin}: request id {request.request_id!r} already used at "
                f"{seen[request.request_id]}"
            )
        seen.setdefault(request.request_id, request.origin)
    if problems:
        raise TakedownRequestError(
            f"{len(problems)} bad takedown request(s) under {folder}:\n  "
            + "\n  ".join(problems)
            + "\nNo request is applied while a line is bad: fix or remove the lines named."
        )
    return requests


def _parse(
    obj: dict,
    origin: str,
    folder: Path,
    requests: list[TakedownRequest],
    problems: list[str],
) -> None:
    def text(name: str) -> str:
        value = obj.get(name)
        return "" if value is None else str(value).strip()

    kind, value, filed = text("kind"), text("value"), text("filed")
    errors = []
    if kind not in KINDS:
        errors.append(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    if not value:
        errors.append("value is empty")
    if not _DATE.fullmatch(filed):
        errors.append(f"filed must be a YYYY-MM-DD date (got {filed!r})")
    max_distance: int | None = None
    phash: str | None = None
    if kind in ("image", "phash") and not errors:
        raw = text("max_distance")
        try:
            max_distance = int(raw) if raw else DEFAULT_PHASH_THRESHOLD
        except ValueError:
            errors.append(f"max_distance must be an integer (got {raw!r})")
        else:
            if not 0 <= max_distance <= 32:
                errors.append(f"max_distance must be 0..32 (got {max_distance})")
        if kind == "phash":
            phash = value.lower()
            if not _PHASH.fullmatch(phash):
                errors.append(f"phash must be 16 hex digits (got {value!r})")
        else:
            phash, problem = _image_phash(folder, value)
            if problem:
                errors.append(problem)
    if kind == "image_sha256" and value and not _SHA256.fullmatch(value.lower()):
        errors.append(f"image_sha256 must be 64 hex digits (got {value!r})")
    if errors:
        problems.append(f"{origin}: " + "; ".join(errors))
        return
    if kind == "image_sha256":
        value = value.lower()
    requests.append(
        TakedownRequest(
            request_id=text("id") or origin,
            kind=kind,
            value=value,
            filed=filed,
            reason=text("reason") or "no reason given",
            origin=origin,
            max_distance=max_distance,
            phash=phash,
        )
    )


def _image_phash(folder: Path, value: str) -> tuple[str | None, str | None]:
    path = (folder / value).resolve()
    if folder.resolve() not in path.parents:
        return None, f"image {value!r} must be a file inside {folder}"
    if not path.is_file():
        return None, f"image {value!r} not found under {folder}"
    try:
        # The same decode and hash as ingest, so distances compare like with like.
        return inspect_image_bytes(path.read_bytes()).phash, None
    except ImageRejected as exc:
        return None, f"image {value!r} cannot be decoded ({exc.reason}: {exc.detail})"


def normalize_url(url: str | None) -> str | None:
    """Scheme and host compare case-insensitively; the fragment never reaches a server."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url.strip())
    return urllib.parse.urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path, parts.query, "")
    )


def match_pairs(pairs: pa.Table, requests: Sequence[TakedownRequest]) -> list[TakedownMatch]:
    """The pairs of ``pairs`` (needs MATCH_COLUMNS) that a request names, in table order.

    A pair named by several requests is matched once, by the first request in file order; the
    others are listed in ``also``.
    """
    if not requests or pairs.num_rows == 0:
        return []
    ids = pairs.column("pair_id").to_pylist()
    found: dict[int, list[tuple[TakedownRequest, int | None]]] = {}

    def add(rows: Iterable[int], request: TakedownRequest, distances=None) -> None:
        for n, k in enumerate(rows):
            found.setdefault(int(k), []).append(
                (request, None if distances is None else int(distances[n]))
            )

    urls = [normalize_url(u) for u in pairs.column("url").to_pylist()]
    shas = pairs.column("image_sha256").to_pylist()
    hashes: np.ndarray | None = None
    for request in requests:
        if request.kind == "pair_id":
            add((k for k, v in enumerate(ids) if v == request.value), request)
        elif request.kind == "url":
            wanted = normalize_url(request.value)
            add((k for k, v in enumerate(urls) if v == wanted), request)
        elif request.kind == "image_sha256":
            add((k for k, v in enumerate(shas) if v == request.value), request)
        else:
            if hashes is None:
                hashes, valid = _hash_array(pairs.column("phash").to_pylist())
            distance = _popcount(hashes ^ np.uint64(from_hex(request.phash)))
            rows = np.flatnonzero(valid & (distance <= request.max_distance))
            add(rows, request, distance[rows])
    dates = pairs.column("date").to_pylist()
    return [
        TakedownMatch(
            pair_id=ids[k],
            date=dates[k],
            request=hits[0][0],
            distance=hits[0][1],
            also=tuple(r.request_id for r, _ in hits[1:]),
        )
        for k, hits in sorted(found.items())
    ]


def _hash_array(values: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    valid = np.array([bool(v) for v in values], dtype=bool)
    return np.array([from_hex(v) if v else 0 for v in values], dtype=np.uint64), valid


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def ledger_rows(
    pairs: pa.Table,
    matches: Sequence[TakedownMatch],
    stage: str,
    reason: str = TAKEDOWN_REASON,
    previously: dict[str, str] | None = None,
) -> pa.Table:
    """One ledger row per match, carrying the pair's audit columns and the request.

    ``previously`` maps a pair_id to the ledger decision it replaces ("exact_deduped:
    exact_duplicate"), so the takedown row still says what had become of the pair.
    """
    by_id = {m.pair_id: m for m in matches}
    previously = previously or {}
    rows = []
    for pair in pairs.to_pylist():
        match = by_id.get(pair["pair_id"])
        if match is None:
            continue
        request = match.request
        detail = f"{request.describe()}: {request.reason}"
        if match.also:
            detail += f"; also named by {', '.join(match.also)}"
        if pair["pair_id"] in previously:
            detail += f"; had been dropped at {previously[pair['pair_id']]}"
        rows.append(
            ledger_row(
                pair,
                stage,
                reason,
                detail,
                distance=None if match.distance is None else float(match.distance),
                threshold=None if request.max_distance is None else float(request.max_distance),
            )
        )
    return ledger_table(rows)


def exclude_taken_down(
    pairs: pa.Table, requests: Sequence[TakedownRequest], stage: str
) -> tuple[pa.Table, pa.Table]:
    """``pairs`` without the ones a request names, and a ledger row (reason takedown) each."""
    matches = match_pairs(pairs, requests)
    if not matches:
        return pairs, ledger_table([])
    removed = pa.array([m.pair_id for m in matches], pa.string())
    keep = pc.invert(pc.is_in(pairs.column("pair_id"), value_set=removed))
    return pairs.filter(keep), ledger_rows(pairs, matches, stage)


def requests_digest(home: Home) -> str:
    """A fingerprint of the request files, for sensors that act when they change; "" when none."""
    folder = takedown_dir(home)
    if not folder.is_dir():
        return ""
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix in _REQUEST_SUFFIXES and path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


__all__ = [
    "KINDS",
    "MATCH_COLUMNS",
    "TAKEDOWN_REASON",
    "TAKEDOWN_STAGE",
    "TakedownMatch",
    "TakedownRequest",
    "TakedownRequestError",
    "exclude_taken_down",
    "ledger_rows",
    "load_takedowns",
    "match_pairs",
    "normalize_url",
    "requests_digest",
    "takedown_dir",
]
