"""Takedowns: remove every pair a request names from every table and export, provably.

Requests are files under ``landing/takedowns/`` (JSONL or CSV), one request a line::

    {"id": "TD-17", "kind": "url", "value": "https://example.com/a.jpg",
     "filed": "2026-11-20", "reason": "DMCA notice 4411"}

``kind`` is one of ``url``, ``pair_id``, ``image_sha256``, ``image`` (a file under the
takedowns folder: every pair whose pHash is within ``max_distance`` bits of it, default the
pHash dedup threshold) or ``phash`` (16 hex digits, same rule). Matching is one function,
:func:`match_pairs`, used in three places: at ingest (``raw_pairs`` keeps future matches out,
ledger reason ``takedown``), at the data-card gate, and by :func:`apply_takedowns`, which
rewrites the partitions already written, records a ledger row per removed pair (stage
``takedown``, with the request and its date), strips the pairs from registered WebDataset
exports, verifies that nothing is left and writes a receipt.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import hashlib
import json
import re
import tarfile
import urllib.parse
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataplatform.core.dedup.phash import from_hex
from dataplatform.core.dedup.phash_index import DEFAULT_PHASH_THRESHOLD
from dataplatform.core.ingest.image_decode import ImageRejected, inspect_image_bytes
from dataplatform.core.store.home import Home
from dataplatform.core.store.schema import LEDGER_SCHEMA, ledger_row, ledger_table
from dataplatform.core.store.warehouse import (
    LEDGER_TABLE,
    commit_stage,
    connect,
    has_ledger,
    read_ledger,
    read_partition,
    warehouse_tables,
    write_document,
)
from dataplatform.core.tokens.webdataset_export import remove_samples, sample_key

TAKEDOWN_STAGE = "takedown"
TAKEDOWN_REASON = "takedown"
TAKEDOWN_FOLDER = "takedowns"
KINDS = ("url", "pair_id", "image_sha256", "image", "phash")
_EXPORTS_FILE = "exports.json"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PHASH = re.compile(r"[0-9a-f]{16}")
# Columns a pair needs to be matched and to get a ledger row.
MATCH_COLUMNS = ("pair_id", "date", "url", "image_sha256", "phash")
# Ledger rows that are not themselves takedown records.
_NOT_TAKEDOWN = f"l.stage <> '{TAKEDOWN_STAGE}' AND l.reason <> '{TAKEDOWN_REASON}'"


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
    return home.landing / TAKEDOWN_FOLDER


def load_requests(folder: Path) -> list[TakedownRequest]:
    """Every request under ``folder`` (``*.jsonl``, ``*.csv``), in file and line order.

    Raises :class:`TakedownRequestError` naming every bad line: a takedown is a legal request,
    so a typo must stop the run loudly rather than leave a pair in the training set.
    """
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
            f"{len(problems)} bad takedown request(s) under {folder}:\n  " + "\n  ".join(problems)
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


# --- applying requests to what is already written -------------------------------------------


@dataclass
class TakedownReport:
    requests: int
    matches: list[TakedownMatch]
    partitions: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> date -> rows
    shards: dict[str, int] = field(default_factory=dict)  # shard path -> samples removed
    remaining: list[str] = field(default_factory=list)  # anything verification still found
    receipt: Path | None = None

    @property
    def dates(self) -> list[str]:
        return sorted({m.date for m in self.matches})

    @property
    def verified(self) -> bool:
        return not self.remaining


def apply_takedowns(
    home: Home,
    requests: Sequence[TakedownRequest],
    export_dirs: Sequence[Path] = (),
    now: dt.datetime | None = None,
) -> TakedownReport:
    """Remove every matching pair from every warehouse table and export, and prove it.

    Matches come from ``raw_pairs`` (every pair that was ever ingested and not since taken
    down). Each partition holding a matched pair is rewritten without it (atomically), each
    removed pair gets a ``takedown`` ledger row under its ingest date, export shards are
    rewritten without its samples, and a final scan of every table and shard must find none of
    them; the receipt under ``warehouse/takedowns/`` records all of it.
    """
    now = now or dt.datetime.now(dt.UTC)
    report = TakedownReport(requests=len(requests), matches=[])
    con = connect(home)
    try:
        tables = warehouse_tables(home)
        if "raw_pairs" not in tables or not requests:
            return _finish(home, report, requests, export_dirs, now)
        candidates = con.sql(f"SELECT {', '.join(MATCH_COLUMNS)} FROM raw_pairs").arrow()
        report.matches = match_pairs(_as_table(candidates), requests)
        if not report.matches:
            return _finish(home, report, requests, export_dirs, now)
        removed = pa.table(
            {
                "pair_id": pa.array([m.pair_id for m in report.matches], pa.string()),
                "date": pa.array([m.date for m in report.matches], pa.string()),
            }
        )
        con.register("removed_ids", removed)
        pairs = _as_table(
            con.sql("SELECT r.* FROM raw_pairs r JOIN removed_ids USING (pair_id, date)").arrow()
        )
        # The pair's earlier ledger rows (a duplicate, a low score) move into its takedown row,
        # so that each stage's rows in = kept + ledger still holds after the removal.
        earlier = (
            con.execute(
                f"SELECT l.stage, l.date, l.pair_id, l.reason FROM {LEDGER_TABLE} l "
                f"JOIN removed_ids USING (pair_id, date) WHERE {_NOT_TAKEDOWN} ORDER BY 1, 2, 3"
            ).fetchall()
            if LEDGER_TABLE in tables
            else []
        )
        previously = {pair_id: f"{stage}: {reason}" for stage, _, pair_id, reason in earlier}
        ledger_stages = sorted({(st, d) for st, d, _, _ in earlier})
        table_dates = {
            table: {
                r[0]
                for r in con.execute(
                    f'SELECT DISTINCT t.date FROM "{table}" t '
                    "JOIN removed_ids USING (pair_id, date)"
                ).fetchall()
            }
            for table in tables
            if table != LEDGER_TABLE and "pair_id" in _columns(con, table)
        }
        rows = ledger_rows(pairs, report.matches, TAKEDOWN_STAGE, previously=previously)
        # Every rewrite of one ingest date, with its takedown rows, is one commit: a reader sees
        # the date before the takedown or after it, never a table without its ledger rows.
        for date in sorted({m.date for m in report.matches}):
            ids = [m.pair_id for m in report.matches if m.date == date]
            rewrite = _DateRewrite()
            for stage in (st for st, d in ledger_stages if d == date):
                stage_ids = [p for st, d, p, _ in earlier if (st, d) == (stage, date)]
                rewrite.ledgers[stage], count = _rewrite_ledger(home, stage, date, stage_ids)
                report.partitions.setdefault(f"{LEDGER_TABLE} stage={stage}", {})[date] = count
            for table in (t for t, dates in table_dates.items() if date in dates):
                rewrite.tables[table], count = _rewrite(home, table, date, ids)
                report.partitions.setdefault(table, {})[date] = count
            _commit_rewrite(home, date, rows.filter(pc.equal(rows.column("date"), date)), rewrite)
    finally:
        con.close()
    keys = {sample_key(m.pair_id) for m in report.matches}
    for shard in _shards(home, export_dirs):
        count = remove_samples(shard, keys)
        if count:
            report.shards[str(shard)] = count
    return _finish(home, report, requests, export_dirs, now)


def _finish(
    home: Home,
    report: TakedownReport,
    requests: Sequence[TakedownRequest],
    export_dirs: Sequence[Path],
    now: dt.datetime,
) -> TakedownReport:
    report.remaining = verify_removed(
        home, [(m.pair_id, m.date) for m in report.matches], export_dirs
    )
    receipt = {
        "applied_at": now.isoformat(timespec="seconds"),
        "requests": [asdict(r) for r in requests],
        "removed": [
            {
                "pair_id": m.pair_id,
                "date": m.date,
                "request": m.request.request_id,
                "distance": m.distance,
                "also": list(m.also),
            }
            for m in report.matches
        ],
        "partitions_rewritten": report.partitions,
        "shards_rewritten": report.shards,
        "verification": {"remaining": report.remaining, "passed": report.verified},
    }
    body = json.dumps(receipt, indent=2, sort_keys=True)
    digest = hashlib.sha256(body.encode()).hexdigest()[:12]
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    report.receipt = write_document(home, f"takedowns/receipt-{stamp}-{digest}.json", body)
    return report


def verify_removed(
    home: Home, pairs: Sequence[tuple[str, str]], export_dirs: Sequence[Path] = ()
) -> list[str]:
    """Every place (table and date, or shard) where one of ``pairs`` (pair_id, ingest date)
    is still present. Keyed by date too: a pair_id may recur in a later day's raw rows (as a
    reused id that dedup later drops), and that is a different pair."""
    if not pairs:
        return []
    remaining = []
    con = connect(home)
    try:
        con.register(
            "removed_ids",
            pa.table(
                {
                    "pair_id": pa.array([p for p, _ in pairs], pa.string()),
                    "date": pa.array([d for _, d in pairs], pa.string()),
                }
            ),
        )
        for table in warehouse_tables(home):
            if table == LEDGER_TABLE or "pair_id" not in _columns(con, table):
                continue
            for date, n in con.execute(
                f'SELECT t.date, count(*) FROM "{table}" t '
                "JOIN removed_ids USING (pair_id, date) GROUP BY 1 ORDER BY 1"
            ).fetchall():
                remaining.append(f"{table} date={date}: {n} row(s)")
        if LEDGER_TABLE in warehouse_tables(home):
            for stage, date, n in con.execute(
                f"SELECT l.stage, l.date, count(*) FROM {LEDGER_TABLE} l "
                f"JOIN removed_ids USING (pair_id, date) WHERE {_NOT_TAKEDOWN} "
                "GROUP BY 1, 2 ORDER BY 1, 2"
            ).fetchall():
                remaining.append(f"{LEDGER_TABLE} stage={stage} date={date}: {n} row(s)")
    finally:
        con.close()
    keys = {sample_key(p) for p, _ in pairs}
    for shard in _shards(home, export_dirs):
        with tarfile.open(shard) as tar:
            left = {m.name.partition(".")[0] for m in tar} & keys
        if left:
            remaining.append(f"{shard}: {len(left)} sample(s)")
    return remaining


@dataclass
class _DateRewrite:
    """One ingest date's partitions and ledgers without the removed pairs, committed together."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    ledgers: dict[str, pa.Table] = field(default_factory=dict)


def _rewrite(home: Home, table: str, date: str, pair_ids: list[str]) -> tuple[pa.Table, int]:
    """One partition (pairs of one ingest date) without ``pair_ids``, and how many left."""
    current = read_partition(home, table, date)
    removed = pa.array(pair_ids, pa.string())
    keep = pc.invert(pc.is_in(current.column("pair_id"), value_set=removed))
    kept = current.filter(keep)
    return kept, current.num_rows - kept.num_rows


def _rewrite_ledger(home: Home, stage: str, date: str, pair_ids: list[str]) -> tuple[pa.Table, int]:
    """One ledger partition without the non-takedown rows of ``pair_ids``, and how many left."""
    current = read_ledger(home, stage, date)
    named = pc.is_in(current.column("pair_id"), value_set=pa.array(pair_ids, pa.string()))
    keep = pc.or_(pc.invert(named), pc.equal(current.column("reason"), TAKEDOWN_REASON))
    kept = current.filter(keep)
    return kept, current.num_rows - kept.num_rows


def _commit_rewrite(home: Home, date: str, new: pa.Table, rewrite: _DateRewrite) -> None:
    """Commit one date's rewrites with ``new`` added to its takedown ledger (rows already
    recorded are kept)."""
    with _locked(home, date):
        if has_ledger(home, TAKEDOWN_STAGE, date):
            old = read_ledger(home, TAKEDOWN_STAGE, date).cast(LEDGER_SCHEMA)
            known = pc.is_in(new.column("pair_id"), value_set=old.column("pair_id"))
            new = pa.concat_tables([old, new.filter(pc.invert(known))])
        commit_stage(home, date, rewrite.tables, {**rewrite.ledgers, TAKEDOWN_STAGE: new})


@contextmanager
def _locked(home: Home, date: str):
    """Serialise read-merge-write of one day's takedown ledger between local processes.

    The lock file is always local (under the home), also when the warehouse is on an object
    store, which has no locks: there, concurrent appliers on several machines are not guarded.
    """
    directory = home.root / "locks" / TAKEDOWN_STAGE
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{date}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()}


def _as_table(data) -> pa.Table:
    return data.read_all() if isinstance(data, pa.RecordBatchReader) else data


# --- exports ---------------------------------------------------------------------------------


def register_export(home: Home, out_dir: Path) -> None:
    """Remember an export folder so that later takedowns reach its shards too."""
    path = home.root / _EXPORTS_FILE
    known = registered_exports(home)
    resolved = Path(out_dir).resolve()
    if resolved not in known:
        known.append(resolved)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([str(p) for p in known], indent=2) + "\n")


def registered_exports(home: Home) -> list[Path]:
    path = home.root / _EXPORTS_FILE
    if not path.is_file():
        return []
    return [Path(p) for p in json.loads(path.read_text())]


def _shards(home: Home, export_dirs: Sequence[Path]) -> list[Path]:
    folders = {Path(d).resolve() for d in export_dirs} | set(registered_exports(home))
    return sorted(s for f in folders if f.is_dir() for s in f.glob("*.tar"))


def requests_digest(folder: Path) -> str:
    """A fingerprint of the request files, for sensors that act when they change."""
    if not folder.is_dir():
        return ""
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix in (".jsonl", ".csv") and path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


__all__ = [
    "KINDS",
    "TAKEDOWN_REASON",
    "TAKEDOWN_STAGE",
    "TakedownMatch",
    "TakedownReport",
    "TakedownRequest",
    "TakedownRequestError",
    "apply_takedowns",
    "exclude_taken_down",
    "load_requests",
    "match_pairs",
    "register_export",
    "registered_exports",
    "takedown_dir",
    "verify_removed",
]
