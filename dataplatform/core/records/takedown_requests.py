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


def match_pairs(
    pairs: pa.Table | pa.RecordBatch, requests: Sequence[TakedownRequest]
) -> list[TakedownMatch]:
    """The pairs of ``pairs`` (needs MATCH_COLUMNS) that a request names, in table order.

    A pair named by several requests is matched once, by the first request in file order; the
    others are listed in ``also``. Each row is decided on its own, so a table matched a batch
    at a time (:func:`match_batches`) gives the same matches in the same order. The columns
    are compared vectorized; only urls that can normalize to a requested one pay for parsing.
    """
    if not requests or pairs.num_rows == 0:
        return []
    found: dict[int, list[tuple[TakedownRequest, int | None]]] = {}

    def add(rows: np.ndarray, request: TakedownRequest, distances=None) -> None:
        for n, k in enumerate(rows.tolist()):
            found.setdefault(k, []).append(
                (request, None if distances is None else int(distances[n]))
            )

    hashes: np.ndarray | None = None
    for request in requests:
        if request.kind == "pair_id":
            add(_equal_rows(pairs.column("pair_id"), request.value), request)
        elif request.kind == "url":
            add(_url_rows(pairs.column("url"), request.value), request)
        elif request.kind == "image_sha256":
            add(_equal_rows(pairs.column("image_sha256"), request.value), request)
        else:
            if hashes is None:
                hashes, valid = _hash_array(pairs.column("phash"))
            distance = _popcount(hashes ^ np.uint64(from_hex(request.phash)))
            rows = np.flatnonzero(valid & (distance <= request.max_distance))
            add(rows, request, distance[rows])
    rows = sorted(found)
    taken = pa.array(rows, pa.int64())
    ids = pairs.column("pair_id").take(taken).to_pylist()
    dates = pairs.column("date").take(taken).to_pylist()
    return [
        TakedownMatch(
            pair_id=ids[n],
            date=dates[n],
            request=found[k][0][0],
            distance=found[k][0][1],
            also=tuple(r.request_id for r, _ in found[k][1:]),
        )
        for n, k in enumerate(rows)
    ]


def match_batches(
    batches: Iterable[pa.RecordBatch | pa.Table], requests: Sequence[TakedownRequest]
) -> list[TakedownMatch]:
    """:func:`match_pairs` over a stream of batches, in stream order: memory holds one batch
    and the matches, whatever the stream's length."""
    matches: list[TakedownMatch] = []
    for batch in batches:
        matches.extend(match_pairs(batch, requests))
    return matches


def _equal_rows(column: pa.Array | pa.ChunkedArray, value: str) -> np.ndarray:
    return np.flatnonzero(np.asarray(pc.fill_null(pc.equal(column, value), False)))


def _url_rows(column: pa.Array | pa.ChunkedArray, wanted: str) -> np.ndarray:
    """Rows whose url normalizes to ``wanted``'s normal form.

    Normalizing parses the url, too slow for every row of a history, so the rows are first
    narrowed by a test that no match can fail: an ASCII url without tab, CR or LF (which
    ``urlsplit`` would remove) contains the wanted host in any case, and its path and query
    verbatim, since ``normalize_url`` lowercases only scheme and host and drops the fragment.
    Any other url is parsed.
    """
    target = normalize_url(wanted)
    if target is None:
        return np.zeros(0, np.int64)
    parts = urllib.parse.urlsplit(target)
    candidates = pc.is_valid(column)
    if parts.netloc:
        odd = pc.or_(
            pc.invert(pc.string_is_ascii(column)), pc.match_substring_regex(column, "[\t\r\n]")
        )
        rest = parts.path + (f"?{parts.query}" if parts.query else "")
        near = pc.and_(
            pc.match_substring(column, parts.netloc, ignore_case=True),
            pc.match_substring(column, rest),
        )
        candidates = pc.and_(candidates, pc.or_(odd, near))
    rows = np.flatnonzero(np.asarray(pc.fill_null(candidates, False)))
    urls = column.take(pa.array(rows, pa.int64())).to_pylist()
    return rows[np.array([normalize_url(u) == target for u in urls], dtype=bool)]


# Each byte's hex digit value, 255 where it is not one.
_HEX_DIGIT = np.full(256, 255, dtype=np.uint8)
for _value, _digit in enumerate("0123456789abcdef"):
    _HEX_DIGIT[ord(_digit)] = _HEX_DIGIT[ord(_digit.upper())] = _value
_NIBBLE_SHIFTS = np.arange(60, -4, -4, dtype=np.uint64)


def _hash_array(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's pHash as a uint64, and whether it has one (null or empty: none).

    Parsed from the column's bytes at once; any value that is not 16 hex digits raises
    ``from_hex``'s error naming it.
    """
    text = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    text = text.cast(pa.string())
    valid = np.asarray(pc.fill_null(pc.greater(pc.utf8_length(text), 0), False))
    filled = pc.if_else(pa.array(valid), text, "0" * 16)
    lengths = np.asarray(pc.binary_length(filled))
    digits = np.zeros((len(filled), 16), dtype=np.uint8)
    if (lengths == 16).all():
        data = filled.cast(pa.binary(16)).buffers()[1]
        digits = _HEX_DIGIT[np.frombuffer(data, np.uint8, count=16 * len(filled), offset=0)]
        digits = digits.reshape(-1, 16)
    bad = np.flatnonzero((lengths != 16) | (digits == 255).any(axis=1))
    if bad.size:
        from_hex(filled[int(bad[0])].as_py())  # raises, naming the value
    hashes = np.bitwise_or.reduce(digits.astype(np.uint64) << _NIBBLE_SHIFTS, axis=1)
    return hashes.astype(np.uint64), valid


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
    "match_batches",
    "match_pairs",
    "normalize_url",
    "requests_digest",
    "takedown_dir",
]
