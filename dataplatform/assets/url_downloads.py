"""url_downloads: the day's image URLs fetched once, into WebDataset shards in its landing.

``raw_pairs`` reads URL rows from these shards, so no stage after this one makes a request;
see ``dataplatform.core.ingest.url_download`` for the format, the network rules and resuming.
"""

import hashlib
from collections import Counter
from collections.abc import Iterator

import dagster as dg

from dataplatform.assets.code_versions import code_version
from dataplatform.assets.partitions import daily_backfill_policy, daily_partitions
from dataplatform.assets.reporting import for_each_day
from dataplatform.core.ingest.ingest_folder import discover_landing
from dataplatform.core.ingest.remote_fetch import DEFAULT_FETCH_DEADLINE_S
from dataplatform.core.ingest.text_normalize import DEFAULT_MAX_TEXT_CHARS
from dataplatform.core.ingest.url_download import (
    DEFAULT_OPT_OUT,
    DownloadOptions,
    day_urls,
    download_day,
    downloads_folder,
    load_index,
)
from dataplatform.resources.engine import EngineResource
from dataplatform.resources.warehouse import WarehouseResource

KEY = dg.AssetKey("url_downloads")


class UrlDownloadsConfig(dg.Config):
    threads: int = 64
    """Requests in flight at once (per Ray task on the Ray engine)."""
    per_host: int = 8
    """Requests in flight at once to any one host: politeness to small sites."""
    retries: int = 2
    """Further tries after a timeout, a refused connection, 429 or 5xx, with backoff."""
    deadline_s: float = DEFAULT_FETCH_DEADLINE_S
    """One deadline for a whole fetch: DNS, connect, every redirect, the body."""
    shard_urls: int = 1000
    """URLs per shard: a run that dies redoes at most one shard's worth per shard in progress."""
    resize_max_side: int = 0
    """Resize images to fit this many pixels at download; 0 (the default) stores originals,
    since the hashes and every score are computed on what is stored."""
    honour_opt_out: bool = True
    """Refuse images whose server sends an X-Robots-Tag opt-out directive."""
    opt_out_directives: list[str] = list(DEFAULT_OPT_OUT)
    refetch: bool = False
    """Fetch failed URLs again (``refetch_reasons``, or every failure when empty)."""
    refetch_reasons: list[str] = []


@dg.asset(
    key=KEY,
    description=(
        "The day's image URLs fetched once (retries, per-host limits, opt-outs honoured) into "
        "img2dataset-format WebDataset shards under landing/<date>/_downloads/."
    ),
    partitions_def=daily_partitions,
    backfill_policy=daily_backfill_policy,
    group_name="curation",
    kinds={"python", "webdataset"},
    code_version=code_version(__name__),
)
def url_downloads(
    context: dg.AssetExecutionContext,
    config: UrlDownloadsConfig,
    warehouse: WarehouseResource,
    engine: EngineResource,
) -> Iterator[dg.MaterializeResult]:
    """Download what the day's manifests name and no committed shard holds yet.

    A day with no URL rows writes nothing and says so. Re-running downloads only what is
    missing; with ``refetch`` it also retries failures (``dataplatform refetch``).
    """
    yield from for_each_day(
        context, KEY, lambda date: [_download(context, config, warehouse, engine, date)]
    )


def _download(
    context: dg.AssetExecutionContext,
    config: UrlDownloadsConfig,
    warehouse: WarehouseResource,
    engine: EngineResource,
    date: str,
) -> dg.MaterializeResult:
    home = warehouse.resolve()
    landing = home.landing_day(date)
    records = []
    if home.has_landing_day(date):
        records, _ = discover_landing(landing, DEFAULT_MAX_TEXT_CHARS)
    options = DownloadOptions(
        threads=config.threads,
        per_host=config.per_host,
        retries=config.retries,
        deadline_s=config.deadline_s,
        shard_urls=config.shard_urls,
        resize_max_side=config.resize_max_side,
        honour_opt_out=config.honour_opt_out,
        opt_out_directives=tuple(config.opt_out_directives),
    )
    report = download_day(
        landing,
        records,
        options,
        engine.spec(),
        context.log.info,
        refetch_reasons=config.refetch_reasons if config.refetch else None,
    )
    index = load_index(landing) if report.distinct_urls else {}
    urls = {url for url, _ in day_urls(records)[0]}
    day = [index[u] for u in urls if u in index]
    ok = sum(d.ok for d in day)
    failed = Counter(d.reason for d in day if not d.ok)
    if not report.distinct_urls:
        context.log.info(f"{date}: no URL rows in the landing; nothing to download")
    else:
        context.log.info(
            f"{date}: {report.distinct_urls:,} distinct URLs ({report.rows_with_urls:,} rows), "
            f"{report.already_done:,} already downloaded, {report.fetched:,} fetched now with "
            f"{report.requests:,} requests; the day now has {ok:,} images and "
            f"{sum(failed.values()):,} failures"
        )
    version = hashlib.sha256()
    for url in sorted(urls):
        done = index.get(url)
        version.update(
            f"{url}\0{done.sha256 if done else ''}\0{done.reason if done else ''}\n".encode()
        )
    return dg.MaterializeResult(
        asset_key=KEY,
        metadata={
            "rows_in": report.distinct_urls,
            "rows_kept": ok,
            "rows_removed": sum(failed.values()),
            "not_yet_downloaded": len(urls) - len(day),
            "day_failures_by_reason": dict(sorted(failed.items())),
            "shards": dg.MetadataValue.path(downloads_folder(landing)),
            **report.metadata(),
        },
        data_version=dg.DataVersion(version.hexdigest()[:16]),
    )
