"""Downloading a landing day's image URLs once, into WebDataset shards inside the day.

A URL manifest (LAION, DataComp's CommonPool, COYO, a team's own crawl) names images on other
people's servers. Fetching them at every stage that reads pixels costs four or five requests per
image, and an image that changes between them breaks the lineage (its SHA-256 no longer matches
what was scored). So the day's URLs are fetched here, once, and stored beside the manifest in
``<day>/_downloads/`` in img2dataset's layout, which WebDataset and img2dataset users already
read:

- ``NNNNN.tar``: members ``<key>.<ext>`` (the image as served, or resized when asked),
  ``<key>.txt`` (the caption) and ``<key>.json`` (what the status row says);
- ``NNNNN.parquet``: one status row per URL of the shard, successes and failures, with
  img2dataset's columns (``key``, ``url``, ``caption``, ``status``, ``error_message``,
  ``width``, ``height``, ``original_width``, ``original_height``, ``sha256``) and the platform's
  (the ledger ``reason`` and ``detail``, the member's byte range, HTTP status, final URL after
  redirects, content type, attempts, when it was fetched);
- ``NNNNN_stats.json``: the shard's counts.

``raw_pairs`` then reads each URL row's image from its shard member, and a failed URL is that
row's ledger entry with the downloader's reason, so every manifest row is accounted for. The
``_`` prefix keeps the folder out of landing discovery (it is not new input).

Why not img2dataset itself: it fetches with ``urllib.request.urlopen``, which follows redirects
without checking where they lead, honours proxy variables, has no overall deadline and reads a
body of any size, so one hostile manifest row could make it fetch cloud metadata or fill the
disk; and its pins (``albumentations<2``, ``wandb``, ``opencv``, ``webdataset<0.3``) would enter
the project. Every request here goes through ``remote_fetch`` (each hop's address checked, one
deadline, a size cap), with the shard format kept.

Politeness and resumption:

- a user agent naming the platform; ``X-Robots-Tag`` opt-outs (``noai``, ``noimageai``,
  ``noindex``, ``noimageindex`` by default, as img2dataset) refuse the image before its body is
  read;
- at most ``per_host`` requests in flight per host, ``threads`` in all; a timeout, a refused
  connection, 429 or 5xx is retried after an exponential backoff (or the server's
  ``Retry-After``, capped), without holding a thread while it waits;
- a shard is committed by its status table (written last, by rename), so a run that dies leaves
  whole shards or none; a re-run fetches only URLs that no committed status row covers, and
  ``refetch`` fetches failed ones again into new shards (the newest row of a URL counts).

Memory follows what is in flight, not the day: images are appended to their shard's tar as
they arrive and only the status rows are kept until the shard is committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import json
import os
import random
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dataplatform.core.engine.chunk_map import ChunkRun, map_chunks
from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.engine.progress import Progress
from dataplatform.core.ingest.image_decode import ImageRejected
from dataplatform.core.ingest.landing import ImageRef, LandingRecord
from dataplatform.core.ingest.remote_fetch import (
    DEFAULT_FETCH_DEADLINE_S,
    FAILED,
    MAX_REMOTE_BYTES,
    NOT_AN_IMAGE,
    NOT_DOWNLOADED,
    OPTED_OUT,
    TIMEOUT,
    USER_AGENT,
    Fetched,
    HTTPStatusRejected,
    IPNetwork,
    allowed_networks,
    fetch_response,
)
from dataplatform.core.store.home import is_object_url

DOWNLOADS_FOLDER = "_downloads"
STAGE_LABEL = "download"
# img2dataset's default opt-out directives: the noai pair, and the search-engine ones it reads
# as a wish not to be collected.
DEFAULT_OPT_OUT = ("noai", "noimageai", "noindex", "noimageindex")
USER_AGENT_TOKEN = "dataplatform"
# img2dataset's key shape: 5 digits of shard, 4 of sample (so at most 10,000 per shard).
_SAMPLE_DIGITS = 4
MAX_SHARD_URLS = 10**_SAMPLE_DIGITS
# Server answers worth another try: it was busy or broken, not refusing this URL.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRY_REASONS = frozenset({TIMEOUT, FAILED})
RESIZE_FAILED = "resize_failed"
_EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
    "MPO": "jpg",
}

STATUS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),  # img2dataset's: success / failed_to_download / failed_to_resize
        ("error_message", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),
        ("reason", pa.string()),  # the ledger reason of a failure
        ("detail", pa.string()),
        ("member", pa.string()),  # the image member's name in the shard
        ("offset", pa.int64()),  # its body's byte range in the shard
        ("size", pa.int64()),
        ("format", pa.string()),
        ("http_status", pa.int32()),
        ("final_url", pa.string()),
        ("content_type", pa.string()),
        ("attempts", pa.int32()),
        ("fetched_at", pa.string()),
    ]
)


@dataclass(frozen=True)
class DownloadOptions:
    """How a day's URLs are fetched; the defaults suit a public crawl from one node."""

    threads: int = 64
    per_host: int = 8
    retries: int = 2
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    deadline_s: float = DEFAULT_FETCH_DEADLINE_S
    max_bytes: int = MAX_REMOTE_BYTES
    shard_urls: int = 1000
    resize_max_side: int = 0  # 0 stores the originals (hashes and scores see what is stored)
    honour_opt_out: bool = True
    opt_out_directives: tuple[str, ...] = DEFAULT_OPT_OUT
    user_agent: str = USER_AGENT

    def __post_init__(self) -> None:
        if not 1 <= self.shard_urls <= MAX_SHARD_URLS:
            raise ValueError(f"shard_urls must be 1 to {MAX_SHARD_URLS}, not {self.shard_urls}")
        if self.threads < 1 or self.per_host < 1 or self.retries < 0:
            raise ValueError("threads and per_host must be at least 1, retries at least 0")


@dataclass(frozen=True)
class UrlItem:
    """One distinct URL of the day, with the first caption that names it and its shard key."""

    url: str
    caption: str
    shard: int
    key: str


@dataclass(frozen=True)
class Downloaded:
    """The committed status of one URL: where its image lies, or why there is none."""

    ok: bool
    shard: str = ""  # the shard's name, "00000.tar"
    offset: int = 0
    size: int = 0
    reason: str = ""
    detail: str = ""
    key: str = ""
    sha256: str = ""
    fetched_at: str = ""
    final_url: str = ""


@dataclass
class DownloadReport:
    """What one run of the download step did, for the step's metadata and the CLI."""

    rows_with_urls: int = 0
    distinct_urls: int = 0
    already_done: int = 0
    fetched: int = 0
    succeeded: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    shards: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    engine_run: ChunkRun = field(default_factory=lambda: ChunkRun("local", 1, 0, 0.0))

    def metadata(self) -> dict[str, Any]:
        return {
            "rows_with_urls": self.rows_with_urls,
            "distinct_urls": self.distinct_urls,
            "already_downloaded": self.already_done,
            "fetched_now": self.fetched,
            "succeeded_now": self.succeeded,
            "failed_now": sum(self.failures.values()),
            "failures_by_reason": dict(sorted(self.failures.items())),
            "requests": self.requests,
            "shards_written": len(self.shards),
            "download_wall_s": round(self.wall_s, 3),
            "images_per_s": round(self.fetched / self.wall_s, 1) if self.wall_s > 0 else 0.0,
            **self.engine_run.metadata(),
        }


# --- which URLs a day has, and which are done ---------------------------------------------


def day_urls(records: Iterable[LandingRecord]) -> tuple[list[tuple[str, str]], int]:
    """The day's distinct remote URLs in manifest order, each with its first caption; and how
    many rows name one (a URL named twice is fetched once and read by both rows)."""
    first: dict[str, str] = {}
    rows = 0
    for record in records:
        if record.error is None and record.image is not None and record.image.kind == "remote":
            rows += 1
            caption = record.text if isinstance(record.text, str) else ""
            first.setdefault(record.image.uri, caption)
    return list(first.items()), rows


def downloads_folder(date_dir: Path | str) -> str:
    """Where ``date_dir``'s shards lie: a local path or an object-store URL."""
    return f"{str(date_dir).rstrip('/')}/{DOWNLOADS_FOLDER}"


def load_index(date_dir: Path | str) -> dict[str, Downloaded]:
    """Every URL with a committed status row in ``date_dir``'s downloads; the newest wins.

    A status table that cannot be read is skipped (its URLs count as not yet downloaded, so a
    re-run fetches them again) rather than failing the day.
    """
    index: dict[str, Downloaded] = {}
    for name, table in _status_tables(downloads_folder(date_dir)):
        shard = name.removesuffix(".parquet") + ".tar"
        for row in table.to_pylist():
            url = row.get("url")
            if not isinstance(url, str):
                continue
            ok = row.get("status") == "success" and row.get("size") is not None
            index[url] = Downloaded(
                ok=ok,
                shard=shard,
                offset=int(row.get("offset") or 0),
                size=int(row.get("size") or 0),
                reason="" if ok else str(row.get("reason") or FAILED),
                detail="" if ok else str(row.get("detail") or row.get("error_message") or ""),
                key=str(row.get("key") or ""),
                sha256=str(row.get("sha256") or ""),
                fetched_at=str(row.get("fetched_at") or ""),
                final_url=str(row.get("final_url") or ""),
            )
    return index


def resolve_downloads(
    records: list[LandingRecord], date_dir: Path | str, index: dict[str, Downloaded] | None = None
) -> None:
    """Point every remote record at its downloaded shard member, in place.

    A URL that failed makes its row a ledger row with the downloader's reason and detail; one
    with no status yet is ``not_downloaded`` (the download step has not run since it landed).
    No record is left pointing at a URL, so ingest never fetches.
    """
    remote = [r for r in records if r.error is None and r.image and r.image.kind == "remote"]
    if not remote:
        return
    index = load_index(date_dir) if index is None else index
    folder = downloads_folder(date_dir)
    on_object_store = is_object_url(str(date_dir))
    root = str(date_dir).rstrip("/") if on_object_store else str(Path(date_dir).resolve())
    for record in remote:
        assert record.image is not None
        done = index.get(record.image.uri)
        if done is None:
            record.error = (
                NOT_DOWNLOADED,
                f"{_short(record.image.uri)} has not been downloaded: materialize url_downloads "
                "for this day, then raw_pairs",
            )
        elif not done.ok:
            record.error = (done.reason, done.detail)
        else:
            asked = record.image.uri
            shard = f"{folder}/{done.shard}"
            kind = "object_range" if on_object_store else "tar"
            where = {"uri": shard} if on_object_store else {"path": shard}
            record.image = ImageRef(
                kind=kind, offset=done.offset, size=done.size, root=root, **where
            )
            record.extra["download"] = {
                "shard": f"{DOWNLOADS_FOLDER}/{done.shard}",
                "key": done.key,
                "fetched_at": done.fetched_at,
                # Where the image came from after redirects, when that is not the URL asked.
                **({"final_url": done.final_url} if done.final_url != asked else {}),
            }


# --- the download step ----------------------------------------------------------------------


def download_day(
    date_dir: Path | str,
    records: Sequence[LandingRecord],
    options: DownloadOptions | None = None,
    engine: EngineSpec | None = None,
    log: Callable[[str], None] | None = None,
    refetch_reasons: Iterable[str] | None = None,
) -> DownloadReport:
    """Fetch every URL of ``records`` that has no committed status yet, into new shards.

    ``refetch_reasons`` also fetches again the URLs whose newest status failed with one of
    those reasons (an empty collection: any failure). Runs on ``engine``: here with one pool of
    threads for the whole day, or on Ray with one shard per task, each writing its own shard to
    the day's folder (a path every node sees, or the object store).
    """
    options = options or DownloadOptions()
    engine = engine or EngineSpec()
    started = time.monotonic()
    networks = allowed_networks()  # a malformed setting fails the day here, before any request
    urls, rows = day_urls(records)
    report = DownloadReport(rows_with_urls=rows, distinct_urls=len(urls))
    if not urls:
        return report
    index = load_index(date_dir)
    again = None if refetch_reasons is None else set(refetch_reasons)
    todo = [
        (url, caption)
        for url, caption in urls
        if url not in index
        or (again is not None and not index[url].ok and (not again or index[url].reason in again))
    ]
    report.already_done = len(urls) - len(todo)
    if not todo:
        report.wall_s = time.monotonic() - started
        return report
    folder = downloads_folder(date_dir)
    first = _next_shard(folder)
    items = [
        UrlItem(
            url,
            caption,
            first + i // options.shard_urls,
            _key(first + i // options.shard_urls, i % options.shard_urls),
        )
        for i, (url, caption) in enumerate(todo)
    ]
    shards: dict[int, list[UrlItem]] = {}
    for item in items:
        shards.setdefault(item.shard, []).append(item)
    if engine.is_ray:
        results, run = map_chunks(
            engine,
            partial(_ShardTask, options, folder, networks),
            list(shards.values()),
            log=log,
        )
        summaries = results
    else:
        summaries, run = _download_here(shards, options, folder, networks, log)
    for summary in summaries:
        report.fetched += summary["fetched"]
        report.succeeded += summary["succeeded"]
        report.failures.update(summary["failures"])
        report.requests += summary["requests"]
        report.shards.append(summary["shard"])
    report.engine_run = run
    report.wall_s = time.monotonic() - started
    return report


def _download_here(
    shards: dict[int, list[UrlItem]],
    options: DownloadOptions,
    folder: str,
    networks: tuple[IPNetwork, ...],
    log: Callable[[str], None] | None,
) -> tuple[list[dict[str, Any]], ChunkRun]:
    """The local engine: one pool of threads over the whole day; each shard is committed as
    soon as its last URL is done, so a long tail in one shard never holds the others back."""
    started = time.monotonic()
    writers: dict[int, _ShardWriter] = {}
    left = {shard: len(items) for shard, items in shards.items()}
    summaries: list[dict[str, Any]] = []
    failed: Counter[str] = Counter()
    all_items = [item for items in shards.values() for item in items]

    def failures_so_far() -> str:
        total = sum(failed.values())
        return f"{total:,} failed" if total else "none failed"

    try:
        with Progress(
            f"{STAGE_LABEL} images", len(all_items), unit="images", log=log, note=failures_so_far
        ) as progress:
            for item, outcome in _Scheduler(options, networks).run(all_items):
                if item.shard not in writers:
                    writers[item.shard] = _ShardWriter(folder, item.shard)
                writers[item.shard].add(item, outcome)
                if outcome.reason:
                    failed[outcome.reason] += 1
                progress.advance()
                left[item.shard] -= 1
                if left[item.shard] == 0:
                    summaries.append(writers[item.shard].commit())
                    del writers[item.shard]
    finally:
        for writer in writers.values():
            writer.abandon()
    return summaries, ChunkRun("local", options.threads, len(shards), time.monotonic() - started)


class _ShardTask:
    """The Ray engine's worker: downloads one shard's URLs with its own threads and commits it."""

    def __init__(
        self, options: DownloadOptions, folder: str, networks: tuple[IPNetwork, ...]
    ) -> None:
        self._options = options
        self._folder = folder
        self._networks = networks

    def __call__(self, items: Sequence[UrlItem]) -> dict[str, Any]:
        writer = _ShardWriter(self._folder, items[0].shard)
        try:
            for item, outcome in _Scheduler(self._options, self._networks).run(items):
                writer.add(item, outcome)
            return writer.commit()
        finally:
            writer.abandon()


# --- fetching: per-host limits, retries with backoff ----------------------------------------


@dataclass
class Outcome:
    """One URL's result: the stored bytes and facts, or a failure reason."""

    body: bytes = b""
    reason: str = ""
    detail: str = ""
    status_word: str = "success"
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    format: str = ""
    http_status: int | None = None
    final_url: str = ""
    content_type: str = ""
    attempts: int = 0
    fetched_at: str = ""
    retry_after_s: float | None = None
    retryable: bool = False


class _Scheduler:
    """Hands URLs to a thread pool so that no host has more than ``per_host`` in flight.

    One dispatching loop (the caller's thread) keeps a queue per host and a round of hosts that
    may take one more request; a URL to retry waits in a timed heap, not in a thread.
    """

    def __init__(self, options: DownloadOptions, networks: tuple[IPNetwork, ...]) -> None:
        self._options = options
        self._networks = networks
        self._rng = random.Random(0)

    def run(self, items: Sequence[UrlItem]) -> Iterable[tuple[UrlItem, Outcome]]:
        """Yield ``(item, outcome)`` for every item, in the order they finish."""
        options = self._options
        queues: dict[str, deque[tuple[UrlItem, int]]] = {}
        for item in items:
            queues.setdefault(_host(item.url), deque()).append((item, 1))
        busy: Counter[str] = Counter()
        ready = deque(queues)
        waiting: list[tuple[float, int, UrlItem, int]] = []
        sequence = 0
        running: dict[Future[Outcome], tuple[UrlItem, int]] = {}
        with ThreadPoolExecutor(options.threads, thread_name_prefix="download") as pool:
            while ready or running or waiting:
                now = time.monotonic()
                while waiting and waiting[0][0] <= now:
                    _, _, item, attempt = heapq.heappop(waiting)
                    host = _host(item.url)
                    queue = queues.setdefault(host, deque())
                    queue.append((item, attempt))
                    if len(queue) == 1 and busy[host] < options.per_host:
                        ready.append(host)
                while ready and len(running) < options.threads:
                    host = ready.popleft()
                    queue = queues[host]
                    if not queue or busy[host] >= options.per_host:
                        continue
                    item, attempt = queue.popleft()
                    busy[host] += 1
                    future = pool.submit(_attempt, item.url, options, self._networks, attempt)
                    running[future] = (item, attempt)
                    if queue and busy[host] < options.per_host:
                        ready.append(host)
                if not running:
                    if waiting:
                        time.sleep(max(0.0, waiting[0][0] - time.monotonic()))
                    continue
                timeout = max(0.0, waiting[0][0] - time.monotonic()) if waiting else None
                done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
                for future in done:
                    item, attempt = running.pop(future)
                    host = _host(item.url)
                    busy[host] -= 1
                    if queues[host] and busy[host] == options.per_host - 1:
                        ready.append(host)
                    outcome = future.result()
                    if outcome.retryable and attempt <= options.retries:
                        delay = min(
                            options.max_backoff_s,
                            outcome.retry_after_s
                            if outcome.retry_after_s is not None
                            else options.backoff_s * 2 ** (attempt - 1) * (1 + self._rng.random()),
                        )
                        sequence += 1
                        heapq.heappush(
                            waiting, (time.monotonic() + delay, sequence, item, attempt + 1)
                        )
                        continue
                    yield item, outcome


def _attempt(
    url: str, options: DownloadOptions, networks: tuple[IPNetwork, ...], attempt: int
) -> Outcome:
    """One request for ``url`` and what to store from it; never raises."""
    fetched_at = datetime.now(UTC).isoformat(timespec="seconds")
    check = (
        partial(_opt_out, directives=options.opt_out_directives) if options.honour_opt_out else None
    )
    try:
        got = fetch_response(
            url,
            deadline_s=options.deadline_s,
            max_bytes=options.max_bytes,
            allow=networks,
            user_agent=options.user_agent,
            check_headers=check,
        )
    except HTTPStatusRejected as exc:
        return _failed(
            exc.reason,
            exc.detail,
            attempt,
            fetched_at,
            http_status=exc.status,
            retry_after_s=exc.retry_after_s,
            retryable=exc.status in RETRY_STATUSES,
        )
    except ImageRejected as exc:
        return _failed(
            exc.reason, exc.detail, attempt, fetched_at, retryable=exc.reason in RETRY_REASONS
        )
    except Exception as exc:  # noqa: BLE001 - whatever one URL raises is that URL's row
        return _failed(FAILED, f"{_short(url)}: {type(exc).__name__}: {exc}", attempt, fetched_at)
    return _stored(url, got, options, attempt, fetched_at)


def _stored(
    url: str, got: Fetched, options: DownloadOptions, attempt: int, fetched_at: str
) -> Outcome:
    """What to keep of a fetched body: the body itself (or resized), if it is an image."""
    facts = {
        "http_status": got.status,
        "final_url": got.final_url,
        "content_type": got.content_type,
        "attempts": attempt,
        "fetched_at": fetched_at,
    }
    try:
        with Image.open(io.BytesIO(got.body)) as image:
            fmt, (width, height) = image.format or "", image.size
    except Image.DecompressionBombError as exc:
        return _failed("decompression_bomb", f"{_short(url)}: {exc}", **facts)
    except Exception as exc:  # noqa: BLE001 - no decoder recognises it: not an image
        kind = f"Content-Type {got.content_type!r}, " if got.content_type else ""
        detail = f"{_short(url)}: not an image ({kind}{len(got.body)} bytes): {type(exc).__name__}"
        return _failed(NOT_AN_IMAGE, detail, **facts)
    body = got.body
    original = (width, height)
    if options.resize_max_side and max(width, height) > options.resize_max_side:
        try:
            body, fmt, (width, height) = _resized(body, options.resize_max_side)
        except Exception as exc:  # noqa: BLE001 - a body that cannot be re-encoded is its row
            failed = _failed(RESIZE_FAILED, f"{_short(url)}: {type(exc).__name__}: {exc}", **facts)
            failed.status_word = "failed_to_resize"
            return failed
    return Outcome(
        body=body,
        width=width,
        height=height,
        original_width=original[0],
        original_height=original[1],
        format=fmt,
        **facts,
    )


def _resized(body: bytes, max_side: int) -> tuple[bytes, str, tuple[int, int]]:
    """``body`` fitted inside ``max_side`` (aspect kept): JPEG at quality 95, PNG with alpha."""
    from PIL import ImageOps

    with Image.open(io.BytesIO(body)) as image:
        image.draft("RGB", (max_side, max_side))
        image = ImageOps.exif_transpose(image)
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        has_alpha = image.mode in ("RGBA", "LA") or "transparency" in image.info
        out = io.BytesIO()
        if has_alpha:
            image.convert("RGBA").save(out, "PNG")
            return out.getvalue(), "PNG", image.size
        image.convert("RGB").save(out, "JPEG", quality=95)
        return out.getvalue(), "JPEG", image.size


def _failed(reason: str, detail: str, attempts: int, fetched_at: str, **facts: Any) -> Outcome:
    return Outcome(
        reason=reason,
        detail=detail,
        status_word="failed_to_download",
        attempts=attempts,
        fetched_at=fetched_at,
        **facts,
    )


def _opt_out(headers: Any, directives: Sequence[str]) -> tuple[str, str] | None:
    """An opt-out ``X-Robots-Tag`` among ``headers``, as img2dataset reads them.

    Each header is ``directive, directive`` for every agent, or ``agent: directive, ...`` for
    one; a directive meant for another agent does not apply to this platform.
    """
    wanted = {d.strip().lower() for d in directives}
    for value in headers.get_all("X-Robots-Tag") or []:
        agent, colon, rest = str(value).partition(":")
        named = agent.strip().lower() if colon else None
        words = {w.strip().lower() for w in (rest if colon else agent).split(",")}
        if named not in (None, "*", USER_AGENT_TOKEN):
            continue
        hit = sorted(words & wanted)
        if hit:
            return OPTED_OUT, f"X-Robots-Tag {', '.join(hit)}: the server asks that it not be used"
    return None


def _host(url: str) -> str:
    try:
        return (urllib.parse.urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _short(url: str, limit: int = 200) -> str:
    return url if len(url) <= limit else url[:limit] + "..."


def _key(shard: int, sample: int) -> str:
    return f"{shard:05d}{sample:0{_SAMPLE_DIGITS}d}"


# --- shards ---------------------------------------------------------------------------------


class _ShardWriter:
    """One shard being written: a tar appended to as images arrive, committed by its table.

    Local folders get the tar under a hidden ``.NNNNN.tar.part`` name, renamed when complete;
    on an object store the tar is built in a local temporary file and uploaded whole, then the
    status table, so a reader never sees a table whose shard is not there yet. The file is
    opened for each member and closed again, so a day with many shards in progress holds no
    descriptors open.
    """

    def __init__(self, folder: str, shard: int) -> None:
        self._folder = folder
        self._name = f"{shard:05d}"
        self._remote = is_object_url(folder)
        if self._remote:
            handle, self._part = tempfile.mkstemp(suffix=".tar")
            os.close(handle)
        else:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self._part = os.path.join(folder, f".{self._name}.tar.part")
            with open(self._part, "wb"):
                pass
        self._size = 0
        self._rows: list[dict[str, Any]] = []
        self._requests = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()

    def add(self, item: UrlItem, outcome: Outcome) -> None:
        with self._lock:
            self._requests += outcome.attempts
            row: dict[str, Any] = {
                "key": item.key,
                "url": item.url,
                "caption": item.caption,
                "status": outcome.status_word,
                "error_message": f"{outcome.reason}: {outcome.detail}" if outcome.reason else None,
                "width": outcome.width,
                "height": outcome.height,
                "original_width": outcome.original_width,
                "original_height": outcome.original_height,
                "sha256": None,
                "reason": outcome.reason or None,
                "detail": outcome.detail or None,
                "member": None,
                "offset": None,
                "size": None,
                "format": outcome.format or None,
                "http_status": outcome.http_status,
                "final_url": outcome.final_url or None,
                "content_type": outcome.content_type or None,
                "attempts": outcome.attempts,
                "fetched_at": outcome.fetched_at,
            }
            members: list[tuple[str, bytes]] = []
            if not outcome.reason:
                member = f"{item.key}.{_EXTENSIONS.get(outcome.format, 'img')}"
                row["sha256"] = hashlib.sha256(outcome.body).hexdigest()
                row["member"] = member
                row["size"] = len(outcome.body)
                members += [(member, outcome.body), (f"{item.key}.txt", item.caption.encode())]
            meta = {k: v for k, v in row.items() if k not in ("offset", "size") and v is not None}
            members.append((f"{item.key}.json", json.dumps(meta, ensure_ascii=False).encode()))
            offsets = self._append(members)
            if not outcome.reason:
                row["offset"] = offsets[0]
            self._rows.append(row)

    def commit(self) -> dict[str, Any]:
        """End the tar, publish it, then its stats and status table; the summary of it."""
        # Two zero blocks end a tar; tarfile pads the archive to whole 10 KiB records.
        end = self._size + 2 * tarfile.BLOCKSIZE
        with open(self._part, "ab") as fh:
            fh.write(b"\0" * (end + (-end % tarfile.RECORDSIZE) - self._size))
        rows = sorted(self._rows, key=lambda r: r["key"])
        table = pa.Table.from_pylist(rows, schema=STATUS_SCHEMA)
        failures = Counter(r["reason"] for r in rows if r["reason"])
        stats = {
            "count": len(rows),
            "successes": len(rows) - sum(failures.values()),
            "failed_to_download": sum(1 for r in rows if r["status"] == "failed_to_download"),
            "failed_to_resize": sum(1 for r in rows if r["status"] == "failed_to_resize"),
            "duration": round(time.monotonic() - self._started, 3),
            "status_dict": dict(Counter(r["error_message"] or "success" for r in rows)),
            "requests": self._requests,
        }
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self._publish_tar()
        self._put(f"{self._name}_stats.json", json.dumps(stats, indent=1).encode("utf-8"))
        self._put(f"{self._name}.parquet", buffer.getvalue())
        return {
            "shard": f"{self._name}.tar",
            "fetched": len(rows),
            "succeeded": stats["successes"],
            "failures": dict(failures),
            "requests": self._requests,
        }

    def abandon(self) -> None:
        """Drop what a failed run left half written (a committed shard is left alone)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._part)

    def _append(self, members: list[tuple[str, bytes]]) -> list[int]:
        """Add members (header, body, padding each) in one write; the offsets of their bodies.

        Our member names are short ASCII, so plain ustar headers do; tarfile would add a PAX
        header only for a longer name.
        """
        chunks: list[bytes] = []
        offsets: list[int] = []
        at = self._size
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            fmt = tarfile.USTAR_FORMAT if len(name) < 100 and name.isascii() else tarfile.PAX_FORMAT
            header = info.tobuf(fmt, "utf-8", "surrogateescape")
            padding = b"\0" * (-len(data) % tarfile.BLOCKSIZE)
            offsets.append(at + len(header))
            chunks += [header, data, padding]
            at += len(header) + len(data) + len(padding)
        with open(self._part, "ab") as fh:
            fh.write(b"".join(chunks))
        self._size = at
        return offsets

    def _publish_tar(self) -> None:
        final = f"{self._folder}/{self._name}.tar"
        if self._remote:
            from dataplatform.core.store.object_store import open_store

            open_store(final).upload(self._part, final)
            os.unlink(self._part)
        else:
            os.replace(self._part, final)

    def _put(self, name: str, data: bytes) -> None:
        final = f"{self._folder}/{name}"
        if self._remote:
            from dataplatform.core.store.object_store import open_store

            open_store(final).put(final, data)
            return
        part = f"{self._folder}/.{name}.part"
        with open(part, "wb") as fh:
            fh.write(data)
        os.replace(part, final)


def _status_names(folder: str) -> list[str]:
    """The committed status tables' names in ``folder``, oldest shard first."""
    if is_object_url(folder):
        from dataplatform.core.store.object_store import open_store

        try:
            names = [u.rsplit("/", 1)[-1] for u in open_store(folder).files(folder)]
        except FileNotFoundError:
            return []
    else:
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
    return sorted(n for n in names if _is_status_name(n))


def _status_tables(folder: str) -> Iterable[tuple[str, pa.Table]]:
    """``(name, table)`` for every readable committed status table in ``folder``, in order."""
    remote = is_object_url(folder)
    if remote:
        from dataplatform.core.store.object_store import open_store

        store = open_store(folder)
    for name in _status_names(folder):
        try:
            if remote:
                table = pq.read_table(io.BytesIO(store.get(f"{folder}/{name}")))
            else:
                table = pq.read_table(os.path.join(folder, name))
        except Exception:  # noqa: BLE001, S112 - an unreadable table: its URLs are fetched again
            continue
        yield name, table


def _is_status_name(name: str) -> bool:
    stem, dot, ext = name.partition(".")
    return dot == "." and ext == "parquet" and stem.isdigit()


def _next_shard(folder: str) -> int:
    """One past the newest committed shard (a half-written one is overwritten)."""
    numbers = [int(name.partition(".")[0]) for name in _status_names(folder)]
    return max(numbers, default=-1) + 1
