"""A landing day on s3://, against moto's S3-compatible server on a local port.

The same files are ingested from a local day folder and from the bucket, and must give the same
rows; hostile manifests on the bucket are ledger rows that never reach outside the day's prefix;
shard members are read by ranged GETs. Every request the landing sends is recorded (a botocore
hook on the landing's client), so the tests assert what was asked of the server, not only what
came back.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
import urllib.parse
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import boto3
import pyarrow as pa
import pytest

from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.ingest import image_store
from dataplatform.core.ingest.image_store import location_of, read_location, read_ref, ref_of
from dataplatform.core.ingest.ingest_folder import IngestOptions, ingest_folder
from dataplatform.core.ingest.landing import ImageRef
from dataplatform.core.ingest.object_landing import READ_BLOCK_BYTES, discover_objects
from dataplatform.core.samples.sample_data import build_sample_landing
from dataplatform.core.store.home import LANDING_URL_ENV, Home, landing_filesystem
from dataplatform.core.store.object_store import ObjectStoreError
from tests.conftest import encode, photo
from tests.core.store.test_object_store import (  # noqa: F401 - the moto fixtures
    BUCKET,
    s3_endpoint,
)

DAYS = ["2025-01-01", "2025-01-02", "2025-01-03"]
DATE = "2025-03-01"
ESCAPE = "path_outside_landing"


@pytest.fixture
def landing_url(s3_endpoint: str, request: pytest.FixtureRequest, monkeypatch) -> str:  # noqa: F811
    """A fresh landing prefix of the test bucket; no landing setting leaks in from outside."""
    monkeypatch.delenv(LANDING_URL_ENV, raising=False)
    return f"s3://{BUCKET}/{request.node.name}/landing"


@pytest.fixture
def s3_requests(landing_url: str):
    """Every HTTP request the landing's client sends while the test runs: (method, url, range)."""
    seen: list[tuple[str, str, str | None]] = []

    def record(request, **_) -> None:
        value = request.headers.get("Range")
        seen.append((request.method, request.url, value.decode() if value else None))

    events = landing_filesystem(landing_url).s3.meta.events
    events.register("before-send.s3", record)
    yield seen
    events.unregister("before-send.s3", record)


def upload(folder: Path, url: str) -> None:
    """Every regular file below ``folder`` to the same relative keys below ``url``."""
    _, _, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    client = boto3.client("s3")
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


def put(url: str, data: bytes) -> None:
    _, _, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data)


def _jpeg(name: str = "coffee", size: tuple[int, int] = (48, 40)) -> bytes:
    return encode(photo(name).resize(size))


def _rows(table: pa.Table, drop: tuple[str, ...] = ()) -> list[dict]:
    rows = [{k: v for k, v in r.items() if k not in drop} for r in table.to_pylist()]
    return sorted(rows, key=lambda r: (r["pair_id"], str(r.get("reason")), str(r.get("source"))))


def _ledger(table: pa.Table) -> list[dict]:
    rows = _rows(table)
    for row in rows:
        if row["reason"] == ESCAPE:
            row["detail"] = "(names the storage)"
    return rows


def _reasons(result) -> dict[str, str]:
    rejected = result.rejected
    return dict(
        zip(
            rejected.column("pair_id").to_pylist(),
            rejected.column("reason").to_pylist(),
            strict=True,
        )
    )


def _ingest(day: Path | str, date: str = DATE):
    result = ingest_folder(day, date, IngestOptions(workers=1))
    assert result.rows_in == result.kept.num_rows + result.rejected.num_rows
    return result


def test_the_sample_days_give_the_same_rows_from_the_bucket_as_from_a_folder(
    tmp_path: Path, landing_url: str
):
    """Every landing format (JSONL, CSV, Parquet, a WebDataset shard, captioned images)."""
    local = tmp_path / "local" / "landing"
    build_sample_landing(local, DAYS)
    # S3 has no symlinks: the sample's link out of the landing is left out of both sides, so
    # the manifest row naming it is missing_file in both.
    escape = local / DAYS[0] / "images" / "escape.jpg"
    assert escape.is_symlink()
    escape.unlink()
    upload(local, landing_url)
    home = Home(tmp_path / "remote-home", landing_url=landing_url)
    escapes: list[dict] = []
    for day in DAYS:
        here, there = _ingest(local / day, day), _ingest(home.landing_day(day), day)
        assert there.rows_in == here.rows_in
        # image_location names where the bytes lie: the landing URL, then the same
        # landing-relative path (and byte range) as the local row. Nothing else differs.
        assert _rows(there.kept, ("image_location",)) == _rows(here.kept, ("image_location",))
        # The ledger detail of an escape says where it would have led, which names the storage
        # too (the resolved local path, or the day's URL); every other cell is equal.
        assert _ledger(there.rejected) == _ledger(here.rejected)
        escapes += [r for r in there.rejected.to_pylist() if r["reason"] == ESCAPE]
        locations = {r["pair_id"]: r["image_location"] for r in here.kept.to_pylist()}
        for row in there.kept.to_pylist():
            assert row["image_location"] == f"{landing_url}/{locations[row['pair_id']]}"
            # Later stages read the same bytes back, given the local landing folder as now.
            data = read_location(row["image_location"], home.landing)
            assert hashlib.sha256(data).hexdigest() == row["image_sha256"]
    assert {(r["pair_id"], r["image_uri"]) for r in escapes} == {
        ("broken-02", "../../sample_truth.json"),
        ("broken-10", "/etc/hostname"),
    }
    kept = pa.concat_tables([_ingest(local / d, d).kept for d in DAYS])
    assert {"pairs.jsonl", "pairs.csv", "pairs.parquet", "shard-00000.tar"} <= {
        s.rpartition("/")[2] for s in kept.column("source").to_pylist()
    }
    assert any(s.startswith("captioned/") for s in kept.column("source").to_pylist())


def test_hostile_manifest_rows_are_ledger_rows_and_nothing_outside_the_day_is_asked_for(
    landing_url: str, s3_requests: list, monkeypatch
):
    day = f"{landing_url}/{DATE}"
    _, _, landing_key = landing_url.partition(f"s3://{BUCKET}/")
    other = "dataplatform-other"
    boto3.client("s3").create_bucket(Bucket=other)
    # What a hostile manifest would like to read: another day, another prefix, another bucket.
    for url in (
        f"{landing_url}/2025-03-02/img/a.jpg",
        f"s3://{BUCKET}/secrets/a.jpg",
        f"s3://{other}/a.jpg",
    ):
        put(url, _jpeg())
    monkeypatch.setattr(image_store, "MAX_IMAGE_BYTES", 10_000)
    put(f"{day}/img/a.jpg", _jpeg())
    put(f"{day}/img/huge.jpg", b"\xff" * 20_000)
    put(f"{day}/img/x/../a.jpg", _jpeg())  # a key S3 keeps as it is, but no path names
    put(f"{day}/_SUCCESS", b"")
    put(f"{day}/.hidden.jpg", _jpeg())
    rows = {
        "inside": "img/a.jpg",
        "inside_url": f"{day}/img/a.jpg",
        "other_day": "../2025-03-02/img/a.jpg",
        "dotdot": "../../../secrets/a.jpg",
        "dotdot_url": f"{day}/../../secrets/a.jpg",
        "other_prefix": f"s3://{BUCKET}/secrets/a.jpg",
        "other_bucket": f"s3://{other}/a.jpg",
        "absolute": "/etc/passwd",
        "file_uri": "file:///etc/passwd",
        "gs": "gs://bucket/a.jpg",
        "folder": "img",
        "missing": "img/none.jpg",
        "huge": "img/huge.jpg",
    }
    manifest = "\n".join(
        json.dumps({"id": k, "image": v, "text": f"row {k}"}) for k, v in rows.items()
    )
    put(f"{day}/pairs.jsonl", manifest.encode() + b"\n")

    result = _ingest(day)

    assert result.kept.column("pair_id").to_pylist() == ["inside", "inside_url"]
    reasons = _reasons(result)
    invalid = [r for r in result.rejected.to_pylist() if r["reason"] == "invalid_path"]
    assert [r["source"] for r in invalid] == ["img/x/../a.jpg"]
    assert {k: v for k, v in reasons.items() if k in rows} == {
        "other_day": "path_outside_landing",
        "dotdot": "path_outside_landing",
        "dotdot_url": "path_outside_landing",
        "other_prefix": "path_outside_landing",
        "other_bucket": "path_outside_landing",
        "absolute": "path_outside_landing",
        "file_uri": "path_outside_landing",
        "gs": "unsupported_uri",
        "folder": "not_a_regular_file",
        "missing": "missing_file",
        "huge": "image_too_large",
    }
    # Only the configured endpoint was contacted, and only for the bucket and the day's prefix:
    # the listing, the manifest, and one GET per readable image (the huge one is refused from
    # its listed size, before any GET).
    endpoint = urllib.parse.urlsplit(boto3.client("s3").meta.endpoint_url).netloc
    asked = []
    for method, url, _ in s3_requests:
        parts = urllib.parse.urlsplit(url)
        assert parts.netloc == endpoint
        path = urllib.parse.unquote(parts.path)
        prefix = urllib.parse.parse_qs(parts.query).get("prefix", [""])[0]
        asked.append((method, path, prefix))
    assert {p for _, p, _ in asked} == {
        f"/{BUCKET}",
        f"/{BUCKET}/{landing_key}/{DATE}/pairs.jsonl",
        f"/{BUCKET}/{landing_key}/{DATE}/img/a.jpg",
    }
    assert {q for _, _, q in asked if q} == {f"{landing_key}/{DATE}/"}


def _shard(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _read_in_fresh_process(ref: ImageRef) -> bytes:
    return read_ref(ref)


def _gets(requests: list, name: str) -> list[str | None]:
    """The Range header of each GET of the object ``name`` (``None``: the whole object)."""
    return [
        rng
        for method, url, rng in requests
        if method == "GET" and urllib.parse.urlsplit(url).path.endswith(f"/{name}")
    ]


def _span(ref: ImageRef) -> str:
    return f"bytes={ref.offset}-{ref.offset + ref.size - 1}"


def test_a_shard_member_is_read_by_one_ranged_get_of_its_bytes(landing_url: str, s3_requests: list):
    day = f"{landing_url}/{DATE}"
    images = [_jpeg("coffee"), _jpeg("rocket"), _jpeg("astronaut")]
    members = []
    for i, data in enumerate(images):
        members += [(f"{i:06d}.jpg", data), (f"{i:06d}.txt", f"caption {i}".encode())]
    shard = _shard(members)
    put(f"{day}/shard.tar", shard)

    refs = [r.image for r in discover_objects(day)]
    assert [r.kind for r in refs] == ["object_range"] * 3
    assert [shard[r.offset : r.offset + r.size] for r in refs] == images
    assert None not in _gets(s3_requests, "shard.tar")

    # A worker elsewhere gets the pickled ref and reads it with the environment alone.
    ref = pickle.loads(pickle.dumps(refs[1]))
    assert ref == refs[1] and (ref.uri, ref.root) == (f"{day}/shard.tar", day)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        assert pool.submit(_read_in_fresh_process, ref).result() == images[1]
    before = len(s3_requests)
    assert read_ref(ref) == images[1]
    assert _gets(s3_requests[before:], "shard.tar") == [_span(ref)]
    assert len(s3_requests) == before + 1

    # Through ingest: one GET per image, of exactly its member's bytes, besides the listing's.
    before = len(s3_requests)
    result = _ingest(day)
    assert result.kept.num_rows == 3
    reads = _gets(s3_requests[before:], "shard.tar")
    assert sorted(r for r in reads if not r.startswith("bytes=0-")) == sorted(map(_span, refs))
    # Later stages read a member back from its location alone.
    location = result.kept.column("image_location").to_pylist()[2]
    assert location == f"{day}/shard.tar#bytes={refs[2].offset}+{refs[2].size}"
    assert read_location(location, landing_url) == images[2]


def test_the_headers_of_a_shard_of_large_members_are_read_a_block_at_a_time(
    landing_url: str, s3_requests: list
):
    day = f"{landing_url}/{DATE}"
    large = 3 * READ_BLOCK_BYTES
    shard = _shard([(f"{i:06d}.jpg", bytes([i]) * large) for i in range(3)])
    put(f"{day}/big.tar", shard)
    refs = [r.image for r in discover_objects(day)]
    assert [(r.size, shard[r.offset]) for r in refs] == [(large, 0), (large, 1), (large, 2)]
    fetched = 0
    for rng in _gets(s3_requests, "big.tar"):
        start, _, end = rng.removeprefix("bytes=").partition("-")
        fetched += int(end) - int(start) + 1
    # A block from each of the three headers, and the end-of-archive block: not the members.
    assert fetched <= 4 * (READ_BLOCK_BYTES + 1024) < len(shard)


def test_locations_round_trip_and_are_confined_to_a_configured_landing(
    tmp_path: Path, landing_url: str, monkeypatch
):
    day = f"{landing_url}/{DATE}"
    put(f"{day}/a.jpg", _jpeg())
    put(f"s3://{BUCKET}/elsewhere/a.jpg", _jpeg())
    whole = ImageRef(kind="object", uri=f"{day}/a.jpg", root=day)
    member = ImageRef(kind="object_range", uri=f"{day}/s.tar", offset=512, size=9, root=day)
    assert location_of(whole, landing_url) == f"{day}/a.jpg"
    assert location_of(member, landing_url) == f"{day}/s.tar#bytes=512+9"
    assert ref_of(location_of(member, landing_url), landing_url) == ImageRef(
        kind="object_range", uri=f"{day}/s.tar", offset=512, size=9, root=landing_url
    )
    # A local landing folder that no Home or setting ties to an object store reads none.
    unconfigured = tmp_path / "unconfigured" / "landing"
    with pytest.raises(OSError, match=f"{LANDING_URL_ENV} is not set"):
        read_location(f"{day}/a.jpg", unconfigured)
    # The deployment setting, as a Ray worker on another node has it.
    monkeypatch.setenv(LANDING_URL_ENV, landing_url)
    assert read_location(f"{day}/a.jpg", unconfigured) == _jpeg()
    # A Home built with the landing URL ties its local folder to it, Path() or not.
    monkeypatch.delenv(LANDING_URL_ENV)
    home = Home(tmp_path / "home", landing_url=landing_url)
    assert read_location(f"{day}/a.jpg", Path(str(home.landing))) == _jpeg()
    for outside in (
        f"s3://{BUCKET}/elsewhere/a.jpg",
        f"{landing_url}/../elsewhere/a.jpg",
        f"{day}/../../../elsewhere/a.jpg",
        f"{landing_url}-sibling/{DATE}/a.jpg",
        "s3://dataplatform-other/a.jpg",
    ):
        with pytest.raises(OSError, match="path_outside_landing"):
            read_location(outside, home.landing)


def test_home_lists_landing_dates_on_the_object_store(tmp_path: Path, landing_url: str):
    home = Home(tmp_path, landing_url=landing_url + "/")
    assert home.landing_url == landing_url
    assert home.landing_dates() == []
    assert not home.has_landing_day(DAYS[0])
    for day in (DAYS[1], DAYS[0]):
        put(f"{landing_url}/{day}/img/a.jpg", _jpeg())
    put(f"{landing_url}/takedowns/requests.jsonl", b"")
    put(f"{landing_url}/2025-01-09", b"a file, not a day folder")
    assert home.landing_dates() == [DAYS[0], DAYS[1]]
    assert home.has_landing_day(DAYS[0]) and not home.has_landing_day(DAYS[2])
    assert home.landing_day(DAYS[0]) == f"{landing_url}/{DAYS[0]}"
    # Takedown requests and sample days stay in the local landing folder.
    assert home.landing == tmp_path / "landing"
    assert home.landing_date(DAYS[0]) == tmp_path / "landing" / DAYS[0]


def test_a_missing_bucket_fails_by_the_setting_not_as_an_empty_day(tmp_path: Path, landing_url):
    with pytest.raises(ObjectStoreError, match=f"does not exist.*{LANDING_URL_ENV}"):
        _ingest("s3://dataplatform-no-such-bucket/landing/2025-03-01")
    with pytest.raises(ValueError, match=LANDING_URL_ENV):
        Home(tmp_path, landing_url="https://example.com/landing")


def test_ray_workers_on_other_nodes_read_the_day_from_the_refs_alone(
    tmp_path: Path, landing_url: str, ray_cluster
):
    """Decoding on the Ray engine: actors get pickled refs and the forwarded AWS_* settings."""
    local = tmp_path / "landing"
    build_sample_landing(local, DAYS)
    day = DAYS[2]  # the Parquet manifest and the WebDataset shard
    upload(local / day, f"{landing_url}/{day}")
    on_ray = EngineSpec(kind="ray", address=ray_cluster.address, chunk_rows=8)
    here = ingest_folder(f"{landing_url}/{day}", day, IngestOptions(workers=1))
    there = ingest_folder(f"{landing_url}/{day}", day, IngestOptions(workers=1), on_ray)
    assert there.engine_run.engine == "ray" and there.kept.num_rows > 0
    assert _rows(there.kept) == _rows(here.kept)
    assert _rows(there.rejected) == _rows(here.rejected)
