"""The download step: a day's URLs fetched once into shards, every URL accounted for.

A loopback server (``tests/image_server.py``) serves good images and every kind of failure and
counts its requests, so the tests assert exact ledger reasons, conservation of rows, that no
URL is requested twice (also through ingest), resumption and refetch.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataplatform.core.ingest.ingest_folder import IngestOptions, ingest_folder
from dataplatform.core.ingest.landing import discover, webdataset_key
from dataplatform.core.ingest.url_download import (
    DOWNLOADS_FOLDER,
    DownloadOptions,
    download_day,
    load_index,
)
from tests.core.ingest.test_object_landing import landing_url  # noqa: F401 - a fixture
from tests.core.store.test_object_store import s3_endpoint  # noqa: F401 - landing_url's fixture
from tests.image_server import ImageServer, photo_bytes

DATE = "2026-11-30"
FAST = DownloadOptions(deadline_s=1.5, backoff_s=0.01, max_bytes=1024 * 1024, threads=16)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("DATAPLATFORM_ALLOW_NETWORKS", "127.0.0.1/32")
    with ImageServer(slow_s=3.0) as running:
        yield running


@pytest.fixture
def day(tmp_path: Path) -> Path:
    folder = tmp_path / "landing" / DATE
    folder.mkdir(parents=True)
    return folder


ROWS = {
    "good0": "/img/0.jpg",
    "good1": "/img/1.jpg",
    "good2": "/img/2.jpg",
    "missing": "/missing/a.jpg",
    "slow": "/slow/a.jpg",
    "optout": "/optout/a.jpg",
    "otherbot": "/otherbot/a.jpg",
    "metadata": "/to-metadata/a.jpg",
    "html": "/html/a.jpg",
    "flaky": "/flaky/a.jpg",
    "big": "/big/a.jpg",
}
EXPECTED_FAILURES = {
    "missing": "fetch_http_error",
    "slow": "fetch_timeout",
    "optout": "fetch_opted_out",
    "metadata": "fetch_blocked_address",
    "html": "fetch_not_an_image",
    "big": "fetch_too_large",
}


def _manifest(day: Path, server: ImageServer, rows: dict[str, str] = ROWS) -> None:
    lines = [
        json.dumps({"id": key, "image": server.url(path), "text": f"a photo {key}"})
        for key, path in rows.items()
    ]
    (day / "urls.jsonl").write_text("\n".join(lines) + "\n")


def _download(day: Path, options: DownloadOptions = FAST, **kwargs):
    return download_day(day, discover(day), options, **kwargs)


def _reasons(result) -> dict[str, str]:
    return dict(
        zip(
            result.rejected.column("pair_id").to_pylist(),
            result.rejected.column("reason").to_pylist(),
            strict=True,
        )
    )


def test_every_url_is_fetched_once_and_accounted_for(day: Path, server: ImageServer):
    _manifest(day, server)
    report = _download(day)
    assert report.distinct_urls == len(ROWS) and report.fetched == len(ROWS)
    assert dict(report.failures) == {r: 1 for r in EXPECTED_FAILURES.values()}
    assert report.succeeded == len(ROWS) - len(EXPECTED_FAILURES)
    # the flaky URL was tried twice (503, then 200); the slow one three times (two retries)
    assert server.hits[ROWS["flaky"]] == 2 and server.hits[ROWS["slow"]] == 3
    assert report.requests == sum(server.hits.values())
    # the redirect's target (cloud metadata) was never connected; its server was asked once
    assert server.hits[ROWS["metadata"]] == 1

    before = dict(server.hits)
    result = ingest_folder(day, DATE, IngestOptions(workers=1))
    assert dict(server.hits) == before, "ingest must not fetch a URL"
    assert result.rows_in == len(ROWS) == result.kept.num_rows + result.rejected.num_rows
    assert _reasons(result) == EXPECTED_FAILURES
    kept = {r["pair_id"]: r for r in result.kept.to_pylist()}
    assert set(kept) == {"good0", "good1", "good2", "otherbot", "flaky"}
    # the stored bytes are what the server sent, and the row says where they lie
    assert kept["good1"]["image_sha256"] == hashlib.sha256(photo_bytes(1)).hexdigest()
    assert kept["good1"]["image_location"].startswith(f"{DATE}/{DOWNLOADS_FOLDER}/00000.tar#")
    assert kept["good1"]["image_uri"] == server.url("/img/1.jpg")
    download = json.loads(kept["good1"]["extra"])["download"]
    assert download["shard"] == "_downloads/00000.tar" and "final_url" not in download
    details = dict(
        zip(
            result.rejected.column("pair_id").to_pylist(),
            result.rejected.column("detail").to_pylist(),
            strict=True,
        )
    )
    assert "HTTP 404" in details["missing"]
    assert "noai" in details["optout"]
    assert "redirect 1" in details["metadata"] and "169.254.169.254" in details["metadata"]
    assert "text/html" in details["html"]


def test_the_shards_are_img2dataset_webdataset_shards(day: Path, server: ImageServer):
    _manifest(day, server, {k: ROWS[k] for k in ("good0", "good1", "missing")})
    _download(day)
    folder = day / DOWNLOADS_FOLDER
    assert sorted(p.name for p in folder.iterdir()) == [
        "00000.parquet",
        "00000.tar",
        "00000_stats.json",
    ]
    status = pq.read_table(folder / "00000.parquet").to_pylist()
    assert [r["key"] for r in status] == ["000000000", "000000001", "000000002"]
    assert [r["status"] for r in status] == ["success", "success", "failed_to_download"]
    assert status[2]["error_message"].startswith("fetch_http_error: ")
    with tarfile.open(folder / "00000.tar") as tar:
        names = tar.getnames()
        groups: dict[str, set[str]] = {}
        for name in names:
            key, ext = webdataset_key(name)
            groups.setdefault(key, set()).add(ext)
        assert groups == {
            "000000000": {"jpg", "txt", "json"},
            "000000001": {"jpg", "txt", "json"},
            "000000002": {"json"},
        }
        image = tar.extractfile("000000001.jpg").read()
        assert image == photo_bytes(1)
        assert tar.extractfile("000000001.txt").read() == b"a photo good1"
        meta = json.loads(tar.extractfile("000000001.json").read())
        assert meta["url"] == server.url("/img/1.jpg") and meta["status"] == "success"
        # the status table's byte range is the member's body, as ingest reads it
        raw = (folder / "00000.tar").read_bytes()
        assert raw[status[1]["offset"] : status[1]["offset"] + status[1]["size"]] == image
    stats = json.loads((folder / "00000_stats.json").read_text())
    assert (stats["count"], stats["successes"], stats["failed_to_download"]) == (3, 2, 1)
    # the downloads folder is not new input: discovery does not see it
    assert [r.source for r in discover(day)] == ["urls.jsonl"] * 3


def test_a_rerun_fetches_only_what_is_missing_and_refetch_retries_failures(
    day: Path, server: ImageServer
):
    rows = {k: ROWS[k] for k in ("good0", "missing", "html")}
    _manifest(day, server, rows)
    _download(day)
    assert _download(day).fetched == 0
    assert sum(server.hits.values()) == 3
    # a URL added to the day later is fetched alone, into a new shard
    rows["good1"] = ROWS["good1"]
    _manifest(day, server, rows)
    again = _download(day)
    assert (again.already_done, again.fetched, again.shards) == (3, 1, ["00001.tar"])
    assert server.hits[ROWS["good1"]] == 1 and server.hits[ROWS["good0"]] == 1
    # refetch of one reason retries only those URLs; the newest status wins
    refetched = _download(day, refetch_reasons=["fetch_not_an_image"])
    assert refetched.fetched == 1 and server.hits[ROWS["html"]] == 2
    assert server.hits[ROWS["missing"]] == 1
    assert _download(day, refetch_reasons=[]).fetched == 2  # every failure
    index = load_index(day)
    assert index[server.url(ROWS["missing"])].shard == "00003.tar"
    result = ingest_folder(day, DATE, IngestOptions(workers=1))
    assert result.kept.num_rows == 2 and result.rejected.num_rows == 2


def test_a_run_that_dies_leaves_no_half_shard(day: Path, server: ImageServer, monkeypatch):
    from dataplatform.core.ingest import url_download

    _manifest(day, server, {k: ROWS[k] for k in ("good0", "good1")})

    def broken_commit(self):
        raise RuntimeError("the node died")

    monkeypatch.setattr(url_download._ShardWriter, "commit", broken_commit)
    with pytest.raises(RuntimeError):
        _download(day)
    assert list((day / DOWNLOADS_FOLDER).iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv("DATAPLATFORM_ALLOW_NETWORKS", "127.0.0.1/32")
    assert _download(day).succeeded == 2


def test_ingest_without_a_download_is_not_downloaded_rows_and_no_request(
    day: Path, server: ImageServer
):
    _manifest(day, server, {"good0": ROWS["good0"]})
    result = ingest_folder(day, DATE, IngestOptions(workers=1))
    assert _reasons(result) == {"good0": "not_downloaded"}
    assert server.hits == {}


def test_a_url_named_twice_is_fetched_once_and_both_rows_read_it(day: Path, server: ImageServer):
    url = server.url("/img/4.jpg")
    lines = [json.dumps({"id": i, "image": url, "text": f"caption {i}"}) for i in ("a", "b")]
    (day / "urls.jsonl").write_text("\n".join(lines))
    report = _download(day)
    assert (report.rows_with_urls, report.distinct_urls, server.hits[url[url.index("/img") :]]) == (
        2,
        1,
        1,
    )
    result = ingest_folder(day, DATE, IngestOptions(workers=1))
    assert result.kept.column("pair_id").to_pylist() == ["a", "b"]
    assert len(set(result.kept.column("image_sha256").to_pylist())) == 1


def test_no_host_gets_more_than_its_limit_at_once(day: Path, monkeypatch):
    monkeypatch.setenv("DATAPLATFORM_ALLOW_NETWORKS", "127.0.0.1/32")
    with ImageServer(latency_s=0.05) as slow_host:
        rows = {f"r{i}": f"/img/{i}.jpg" for i in range(24)}
        _manifest(day, slow_host, rows)
        report = _download(day, DownloadOptions(threads=16, per_host=3))
        assert report.succeeded == 24
        assert slow_host.most_in_flight == 3


def test_resize_at_download_is_a_setting_and_keeps_the_original_size(
    day: Path, server: ImageServer
):
    _manifest(day, server, {"good0": "/img/40.jpg"})
    original = Image.open(io.BytesIO(photo_bytes(40))).size
    _download(day, DownloadOptions(resize_max_side=32))
    row = pq.read_table(day / DOWNLOADS_FOLDER / "00000.parquet").to_pylist()[0]
    assert (row["original_width"], row["original_height"]) == original
    assert max(row["width"], row["height"]) == 32
    result = ingest_folder(day, DATE, IngestOptions(workers=1))
    assert (
        max(result.kept.column("width")[0].as_py(), result.kept.column("height")[0].as_py()) == 32
    )


def test_the_download_logs_progress_with_failures_so_far(day: Path, server: ImageServer):
    _manifest(day, server, {k: ROWS[k] for k in ("good0", "missing", "good1")})
    lines: list[str] = []
    _download(day, log=lines.append)
    assert lines[0].startswith("download images: 0 of 3 images, starting")
    assert "3 of 3 images done" in lines[-1] and lines[-1].endswith("; 1 failed")


def test_opt_out_can_be_switched_off_and_other_agents_directives_do_not_apply(
    day: Path, server: ImageServer
):
    _manifest(day, server, {"optout": ROWS["optout"], "otherbot": ROWS["otherbot"]})
    report = _download(day, DownloadOptions(honour_opt_out=False))
    assert report.succeeded == 2


def test_on_the_ray_engine_each_shard_is_a_task_and_the_rows_are_the_same(
    day: Path, server: ImageServer, ray_cluster
):
    from dataplatform.core.engine.engine_spec import EngineSpec

    rows = {k: ROWS[k] for k in ("good0", "good1", "good2", "missing", "optout", "html")}
    _manifest(day, server, rows)
    spec = EngineSpec(kind="ray", address=ray_cluster.address)
    report = _download(day, DownloadOptions(shard_urls=2, deadline_s=5), engine=spec)
    assert report.engine_run.engine == "ray" and report.engine_run.chunks == 3
    assert report.shards == ["00000.tar", "00001.tar", "00002.tar"]
    assert all(server.hits[path] == 1 for path in rows.values())
    result = ingest_folder(day, DATE, IngestOptions(workers=1))
    assert _reasons(result) == {k: EXPECTED_FAILURES[k] for k in ("missing", "optout", "html")}
    assert sorted(result.kept.column("pair_id").to_pylist()) == ["good0", "good1", "good2"]


def test_on_an_object_store_landing_the_shards_go_to_the_day_prefix(
    server: ImageServer,
    landing_url: str,  # noqa: F811 - the moto fixture
    monkeypatch,
):
    from dataplatform.core.ingest.object_landing import discover_objects
    from dataplatform.core.store.home import LANDING_URL_ENV
    from dataplatform.core.store.object_store import open_store
    from tests.core.ingest.test_object_landing import put

    monkeypatch.setenv(LANDING_URL_ENV, landing_url)
    day_url = f"{landing_url}/{DATE}"
    rows = {k: ROWS[k] for k in ("good0", "good1", "missing")}
    lines = [
        json.dumps({"id": key, "image": server.url(path), "text": f"a photo {key}"})
        for key, path in rows.items()
    ]
    put(f"{day_url}/urls.jsonl", ("\n".join(lines) + "\n").encode())
    report = download_day(day_url, discover_objects(day_url, 2000), FAST)
    assert (report.succeeded, dict(report.failures)) == (2, {"fetch_http_error": 1})
    names = [u.rsplit("/", 1)[-1] for u in open_store(day_url).files(f"{day_url}/_downloads")]
    assert names == ["00000.parquet", "00000.tar", "00000_stats.json"]
    before = dict(server.hits)
    result = ingest_folder(day_url, DATE, IngestOptions(workers=1))
    assert dict(server.hits) == before
    assert _reasons(result) == {"missing": "fetch_http_error"}
    kept = {r["pair_id"]: r for r in result.kept.to_pylist()}
    assert kept["good1"]["image_sha256"] == hashlib.sha256(photo_bytes(1)).hexdigest()
    assert kept["good1"]["image_location"].startswith(f"{day_url}/_downloads/00000.tar#bytes=")
