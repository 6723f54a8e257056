"""Ingest of one landing folder into raw pair rows and ledger rows.

Decoding dominates the cost, so images are read and decoded in worker processes (one per
core) in chunks, each worker reading its own bytes from disk: the parent never ships image
bytes between processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow as pa

from dataplatform.core.engine.chunk_map import ChunkRun, Lost, map_chunks, map_isolated
from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.engine.progress import Progress
from dataplatform.core.ingest.confined_files import FileRefused
from dataplatform.core.ingest.image_decode import (
    DEFAULT_DRAFT_SIZE,
    DEFAULT_MAX_PIXELS,
    ImageFacts,
    ImageRejected,
    inspect_image_bytes,
)
from dataplatform.core.ingest.image_store import location_of, read_ref
from dataplatform.core.ingest.landing import ImageRef, LandingRecord, derived_pair_id, discover
from dataplatform.core.ingest.object_landing import discover_objects
from dataplatform.core.ingest.remote_fetch import allowed_networks
from dataplatform.core.ingest.text_normalize import DEFAULT_MAX_TEXT_CHARS, normalize_text
from dataplatform.core.ingest.url_download import resolve_downloads
from dataplatform.core.store.home import is_object_url
from dataplatform.core.store.schema import RAW_PAIR_SCHEMA, ledger_table

STAGE = "raw_pairs"
PROGRESS_LABEL = "read, decode and hash"
# Below this many images a process pool costs more to start than it saves.
MIN_IMAGES_FOR_POOL = 64
CHUNK_SIZE = 16
LEDGER_TEXT_CHARS = DEFAULT_MAX_TEXT_CHARS


@dataclass(frozen=True)
class IngestOptions:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    draft_size: int | None = DEFAULT_DRAFT_SIZE
    workers: int = 0  # 0: one per available core


@dataclass
class IngestResult:
    kept: pa.Table
    rejected: pa.Table
    rows_in: int
    engine_run: ChunkRun = field(default_factory=lambda: ChunkRun("local", 1, 0, 0.0))


def read_image_bytes(ref: ImageRef) -> bytes:
    """The bytes ``ref`` points at; raises ``ImageRejected`` when they cannot be had."""
    try:
        return read_ref(ref)
    except ImageRejected:
        raise
    except FileRefused as exc:
        raise ImageRejected(exc.reason, exc.detail) from exc
    except FileNotFoundError as exc:
        raise ImageRejected("missing_file", str(exc)) from exc
    except ValueError as exc:
        raise ImageRejected("unsupported_uri", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - any I/O failure is this row's problem
        reason = "fetch_failed" if ref.kind == "remote" else "read_error"
        raise ImageRejected(reason, f"{type(exc).__name__}: {exc}") from exc


def inspect_ref(ref: ImageRef, options: IngestOptions) -> ImageFacts | tuple[str, str]:
    try:
        data = read_image_bytes(ref)
        return inspect_image_bytes(
            data, max_pixels=options.max_pixels, draft_size=options.draft_size
        )
    except ImageRejected as rejected:
        return (rejected.reason, rejected.detail)
    except Exception as exc:  # noqa: BLE001 - whatever one image raises is that image's row
        return ("decode_error", f"{type(exc).__name__}: {exc}")


def _inspect_chunk(
    refs: Sequence[ImageRef], options: IngestOptions
) -> list[ImageFacts | tuple[str, str]]:
    return [inspect_ref(ref, options) for ref in refs]


class _ChunkInspector:
    """The Ray engine's worker: inspects a chunk of refs, each reading its own bytes."""

    def __init__(self, options: IngestOptions) -> None:
        self._options = options

    def __call__(self, refs: Sequence[ImageRef]) -> list[ImageFacts | tuple[str, str]]:
        return _inspect_chunk(refs, self._options)


def inspect_on_engine(
    refs: Sequence[ImageRef],
    options: IngestOptions,
    engine: EngineSpec,
    log: Callable[[str], None] | None = None,
) -> tuple[list[ImageFacts | tuple[str, str]], ChunkRun]:
    """``inspect_all`` on the given engine: local processes here, or Ray actors on a cluster.

    On Ray a chunk whose actor dies is redone one image per task, so a decoder that crashes its
    process on a hostile file is that image's ``decoder_crashed`` row, as on the local engine.
    Progress goes to ``log`` (the progress logger without it): images here, chunks on Ray.
    """
    if not engine.is_ray:
        started = time.monotonic()
        workers = options.workers or available_cores()
        with Progress(PROGRESS_LABEL, len(refs), unit="images", log=log) as progress:
            facts = inspect_all(refs, options, progress)
        chunks = -(-len(refs) // CHUNK_SIZE)
        return facts, ChunkRun("local", workers, chunks, time.monotonic() - started)

    def one_by_one(chunk: Sequence[ImageRef]) -> list[ImageFacts | tuple[str, str]]:
        out = map_isolated(engine, partial(inspect_ref, options=options), chunk)
        return [("decoder_crashed", r.detail) if isinstance(r, Lost) else r for r in out]

    chunks = [refs[i : i + engine.chunk_rows] for i in range(0, len(refs), engine.chunk_rows)]
    per_chunk, run = map_chunks(
        engine, partial(_ChunkInspector, options), chunks, on_lost=one_by_one, log=log
    )
    return [fact for chunk in per_chunk for fact in chunk], run


def inspect_all(
    refs: Sequence[ImageRef], options: IngestOptions, progress: Progress | None = None
) -> list[ImageFacts | tuple[str, str]]:
    """Facts or rejection for every ref, in order, using one worker process per core;
    ``progress`` is advanced as images are done."""
    workers = options.workers or available_cores()
    if workers <= 1 or len(refs) < MIN_IMAGES_FOR_POOL:
        inline: list[ImageFacts | tuple[str, str]] = []
        for ref in refs:
            inline.append(inspect_ref(ref, options))
            if progress is not None:
                progress.advance()
        return inline
    chunks = [refs[i : i + CHUNK_SIZE] for i in range(0, len(refs), CHUNK_SIZE)]
    # forkserver: Dagster steps run threads (gRPC, log watchers); forking them is unsafe.
    context = multiprocessing.get_context("forkserver")
    results: list[ImageFacts | tuple[str, str]] = []
    while len(results) < len(refs):
        done = len(results) // CHUNK_SIZE
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_inspect_chunk, chunk, options) for chunk in chunks[done:]]
            for chunk, future in zip(chunks[done:], futures, strict=True):
                try:
                    results.extend(future.result())
                    if progress is not None:
                        progress.advance(len(chunk))
                except BrokenProcessPool:
                    # A decoder that kills its process (a C-level crash on a hostile file)
                    # takes the pool with it. This chunk is redone one image per process, so
                    # the culprit becomes one ledger row; the rest go to a fresh pool (if the
                    # culprit was in a later chunk, that chunk breaks the new pool in turn).
                    results.extend(_isolated(chunk, options, context))
                    if progress is not None:
                        progress.advance(len(chunk))
                    break
    return results


def _isolated(
    refs: Sequence[ImageRef], options: IngestOptions, context: multiprocessing.context.BaseContext
) -> list[ImageFacts | tuple[str, str]]:
    """Inspect each ref in a process of its own; a process that dies is that image's row."""
    results: list[ImageFacts | tuple[str, str]] = []
    for ref in refs:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            try:
                results.append(pool.submit(inspect_ref, ref, options).result())
            except BrokenProcessPool as exc:
                results.append(("decoder_crashed", f"the decoding process died: {exc}"))
    return results


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ingest_folder(
    date_dir: Path | str,
    date: str,
    options: IngestOptions | None = None,
    engine: EngineSpec | None = None,
    log: Callable[[str], None] | None = None,
) -> IngestResult:
    """Every row of ``date_dir`` as a raw pair or a ledger row; never raises for bad rows.

    ``date_dir`` is a local folder or an object-store prefix (``s3://bucket/prefix/<date>``);
    the same files give the same rows, except ``image_location``, which names where they lie.
    Decoding and hashing run on ``engine`` (default local); the rows are the same either way.
    """
    options = options or IngestOptions()
    # A malformed DATAPLATFORM_ALLOW_NETWORKS is the deployment's error, not one row's: it
    # fails here, naming the variable, before anything is read.
    allowed_networks()
    records, landing_root = discover_landing(date_dir, options.max_text_chars)
    # URL rows read the shard member the download step stored (or take its failure): ingest
    # itself never fetches.
    resolve_downloads(records, date_dir)
    seen_ids: dict[str, LandingRecord] = {}
    to_decode: list[tuple[LandingRecord, str, str, bool]] = []
    rejected: list[dict] = []
    for record in records:
        pair_id = record.manifest_id or derived_pair_id(date, record.source, str(record.row))
        if record.error is not None:
            rejected.append(_ledger_row(record, pair_id, date, *record.error))
            continue
        try:
            text, truncated = normalize_text(record.text, options.max_text_chars)
            truncated = truncated or record.text_cut
        except Exception as exc:  # noqa: BLE001 - one odd caption is one ledger row
            detail = f"caption cannot be normalised: {type(exc).__name__}: {exc}"
            rejected.append(_ledger_row(record, pair_id, date, "unusable_text", detail))
            continue
        if not text:
            rejected.append(
                _ledger_row(
                    record, pair_id, date, "missing_text", "caption is empty after normalisation"
                )
            )
            continue
        if pair_id in seen_ids:
            first = seen_ids[pair_id]
            rejected.append(
                _ledger_row(
                    record,
                    pair_id,
                    date,
                    "duplicate_pair_id",
                    f"id already used by {first.where}",
                )
            )
            continue
        seen_ids[pair_id] = record
        to_decode.append((record, pair_id, text, truncated))
    refs = [r.image for r, *_ in to_decode]
    facts, run = inspect_on_engine(refs, options, engine or EngineSpec(), log)  # type: ignore[arg-type]
    kept_rows = []
    for (record, pair_id, text, truncated), fact in zip(to_decode, facts, strict=True):
        if isinstance(fact, tuple):
            rejected.append(_ledger_row(record, pair_id, date, *fact))
            continue
        try:
            location = location_of(record.image, landing_root)  # type: ignore[arg-type]
        except ValueError as exc:  # the file moved outside the landing root after discovery
            rejected.append(_ledger_row(record, pair_id, date, "path_outside_landing", str(exc)))
            continue
        kept_rows.append(_raw_row(record, pair_id, date, text, truncated, fact, location))
    kept_rows.sort(key=lambda r: r["pair_id"])
    return IngestResult(
        kept=pa.Table.from_pylist(kept_rows, schema=RAW_PAIR_SCHEMA),
        rejected=ledger_table(rejected),
        rows_in=len(records),
        engine_run=run,
    )


def discover_landing(
    date_dir: Path | str, max_text_chars: int
) -> tuple[list[LandingRecord], Path | str]:
    """The day's records (a local folder or an object-store prefix), and the landing root
    that its locations are relative to; the download step discovers a day the same way."""
    if is_object_url(str(date_dir)):
        url = str(date_dir).rstrip("/")
        return discover_objects(url, max_text_chars), url.rpartition("/")[0]
    date_dir = Path(date_dir)
    records = discover(date_dir, max_text_chars) if date_dir.is_dir() else []
    return records, date_dir.parent


def _raw_row(
    record: LandingRecord,
    pair_id: str,
    date: str,
    text: str,
    truncated: bool,
    fact: ImageFacts,
    location: str,
) -> dict:
    return {
        "pair_id": pair_id,
        "date": date,
        "text": text,
        "url": record.url,
        "license": record.license,
        "image_uri": record.image_uri,
        "image_location": location,
        "image_sha256": fact.sha256,
        "width": fact.width,
        "height": fact.height,
        "source": record.source,
        "source_locator": record.locator,
        "image_format": fact.format,
        "image_mode": fact.mode,
        "image_frames": fact.frames,
        "image_bytes": fact.n_bytes,
        "exif_transposed": fact.exif_transposed,
        "text_truncated": truncated,
        "phash": fact.phash,
        "extra": json.dumps(record.extra, sort_keys=True, ensure_ascii=False)
        if record.extra
        else None,
    }


def _ledger_row(record: LandingRecord, pair_id: str, date: str, reason: str, detail: str) -> dict:
    # The ledger shows the caption for review, capped like a kept one: a rejected 50 MB caption
    # must not become a 50 MB ledger cell.
    text = record.text[:LEDGER_TEXT_CHARS] if isinstance(record.text, str) else None
    return {
        "pair_id": pair_id,
        "date": date,
        "stage": STAGE,
        "reason": reason,
        "detail": detail,
        "source": record.where,
        "image_uri": record.image_uri,
        "url": record.url,
        "license": record.license,
        "text": text,
    }
