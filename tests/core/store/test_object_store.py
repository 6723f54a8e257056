"""The warehouse on s3://, against moto's S3-compatible server on a local port."""

from __future__ import annotations

import threading
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from moto.server import ThreadedMotoServer

from dataplatform.core.store.home import WAREHOUSE_URL_ENV, Home, resolve_home
from dataplatform.core.store.object_store import ObjectStoreError, open_store
from dataplatform.core.store.schema import ledger_row, ledger_table
from dataplatform.core.store.warehouse import (
    connect,
    document_exists,
    document_path,
    has_ledger,
    has_partition,
    partition_dates,
    partition_file,
    read_document,
    read_history,
    read_ledger,
    read_partition,
    refresh_catalog,
    warehouse_tables,
    write_document,
    write_ledger,
    write_partition,
)

BUCKET = "dataplatform-test"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """One moto server for the module; botocore finds it through AWS_ENDPOINT_URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        # Nothing from the developer's own AWS configuration may leak in.
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", WAREHOUSE_URL_ENV):
            env.delenv(name, raising=False)
        no_file = str(tmp_path_factory.mktemp("aws") / "none")
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", no_file)
        env.setenv("AWS_CONFIG_FILE", no_file)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield endpoint
    server.stop()


@pytest.fixture
def s3_home(s3_endpoint: str, tmp_path: Path, request: pytest.FixtureRequest) -> Home:
    """A home whose warehouse is a fresh prefix of the test bucket."""
    return Home(tmp_path, f"s3://{BUCKET}/{request.node.name}")


def _t(ids: list[str], date: str) -> pa.Table:
    return pa.table({"pair_id": pa.array(ids, pa.string()), "date": [date] * len(ids)})


def _objects(home: Home) -> list[str]:
    store = open_store(home.warehouse_url)
    return [f.removeprefix(home.warehouse_url + "/") for f in store.files(home.warehouse_url)]


def test_partitions_round_trip_and_replace(s3_home: Home):
    path = write_partition(s3_home, "t", "2025-01-01", _t(["a", "b"], "2025-01-01"))
    assert path == f"{s3_home.warehouse_url}/t/date=2025-01-01/part-0.parquet"
    write_partition(s3_home, "t", "2025-01-01", _t(["c"], "2025-01-01"))
    assert read_partition(s3_home, "t", "2025-01-01").to_pydict() == {
        "pair_id": ["c"],
        "date": ["2025-01-01"],
    }
    write_partition(s3_home, "t", "2025-01-02", _t([], "2025-01-02"))
    assert has_partition(s3_home, "t", "2025-01-02")
    assert not has_partition(s3_home, "t", "2025-01-03")
    with pytest.raises(FileNotFoundError, match="materialize t for 2025-01-03 first"):
        read_partition(s3_home, "t", "2025-01-03")
    assert _objects(s3_home) == [
        "t/date=2025-01-01/part-0.parquet",
        "t/date=2025-01-02/part-0.parquet",
    ]
    assert not (s3_home.root / "warehouse").exists()


def test_history_and_dates(s3_home: Home):
    for date, ids in [("2025-01-01", ["a"]), ("2025-01-02", ["b"]), ("2025-01-03", ["c"])]:
        write_partition(s3_home, "t", date, _t(ids, date))
    write_partition(s3_home, "t2", "2025-01-09", _t(["z"], "2025-01-09"))
    assert partition_dates(s3_home, "t") == ["2025-01-01", "2025-01-02", "2025-01-03"]
    assert partition_dates(s3_home, "missing") == []
    hist = read_history(s3_home, "t", "2025-01-03", ["pair_id"])
    assert sorted(hist.column("pair_id").to_pylist()) == ["a", "b"]
    assert read_history(s3_home, "t", "2025-01-01", ["pair_id"]).num_rows == 0


def test_ledger_and_duckdb_views(s3_home: Home):
    write_partition(s3_home, "t", "2025-01-01", _t(["a", "b"], "2025-01-01"))
    write_partition(s3_home, "t", "2025-01-02", _t(["c"], "2025-01-02"))
    pair = {"pair_id": "x", "date": "2025-01-01", "text": "t"}
    ledger = ledger_table([ledger_row(pair, "t", "why", "because")])
    write_ledger(s3_home, "t", "2025-01-01", ledger)
    assert read_ledger(s3_home, "t", "2025-01-01").column("reason").to_pylist() == ["why"]
    assert has_ledger(s3_home, "t", "2025-01-01")
    assert not has_ledger(s3_home, "t", "2025-01-02")
    assert warehouse_tables(s3_home) == ["rejections", "t"]
    con = connect(s3_home)
    assert con.execute("SELECT date, count(*) FROM t GROUP BY 1 ORDER BY 1").fetchall() == [
        ("2025-01-01", 2),
        ("2025-01-02", 1),
    ]
    assert con.execute("SELECT stage, reason, date FROM rejections").fetchall() == [
        ("t", "why", "2025-01-01")
    ]
    one_file = partition_file(s3_home, "t", "2025-01-02")
    assert con.execute("SELECT pair_id FROM read_parquet(?)", [one_file]).fetchall() == [("c",)]
    # The remote warehouse has no catalog file: connect() is how it is queried.
    assert refresh_catalog(s3_home) == []
    assert not s3_home.catalog_path.exists()


def test_documents(s3_home: Home):
    url = write_document(s3_home, "cards/2025-01-01/card.md", "# card\n")
    assert url == f"{s3_home.warehouse_url}/cards/2025-01-01/card.md"
    write_document(s3_home, "cards/2025-01-01/plots/x.png", b"\x89PNG")
    assert open_store(url).get(url) == b"# card\n"
    assert read_document(s3_home, "cards/2025-01-01/plots/x.png") == b"\x89PNG"
    assert document_exists(s3_home, "cards/2025-01-01/card.md")
    assert not document_exists(s3_home, "cards/2025-01-02/card.md")
    assert document_path(s3_home, "a/../b.md") == f"{s3_home.warehouse_url}/b.md"
    for escape in ("../outside.md", "/etc/x", "a/../../x"):
        with pytest.raises(ValueError, match="leaves the warehouse"):
            document_path(s3_home, escape)
    # Documents are not tables: they never become views.
    assert warehouse_tables(s3_home) == []


def test_readers_see_old_or_new_partition_never_a_mix(s3_home: Home):
    old, new = _t(["old"] * 5000, "2025-01-01"), _t(["new"] * 9000, "2025-01-01")
    write_partition(s3_home, "t", "2025-01-01", old)
    seen: list[tuple[int, frozenset]] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def read_repeatedly() -> None:
        while not done.is_set():
            try:
                ids = read_partition(s3_home, "t", "2025-01-01").column("pair_id")
                seen.append((len(ids), frozenset(ids.to_pylist())))
            except BaseException as exc:  # a half-written object would fail to parse
                failures.append(exc)

    reader = threading.Thread(target=read_repeatedly)
    reader.start()
    for table in [new, old] * 5 + [new]:
        write_partition(s3_home, "t", "2025-01-01", table)
    done.set()
    reader.join()
    assert not failures
    assert seen and set(seen) <= {(5000, frozenset({"old"})), (9000, frozenset({"new"}))}
    assert read_partition(s3_home, "t", "2025-01-01").num_rows == 9000


def test_failed_write_keeps_the_previous_partition(s3_home: Home, monkeypatch):
    write_partition(s3_home, "t", "2025-01-01", _t(["kept"], "2025-01-01"))
    store = open_store(s3_home.warehouse_url)

    def upload_fails(path: str, data: bytes) -> None:
        raise ConnectionError("network went away mid-upload")

    monkeypatch.setattr(store.fs, "pipe_file", upload_fails)
    with pytest.raises(ConnectionError):
        write_partition(s3_home, "t", "2025-01-01", _t(["lost"], "2025-01-01"))
    monkeypatch.undo()
    assert read_partition(s3_home, "t", "2025-01-01").column("pair_id").to_pylist() == ["kept"]


def test_missing_bucket_is_named(s3_endpoint: str, tmp_path: Path):
    home = Home(tmp_path, "s3://no-such-bucket/wh")
    with pytest.raises(ObjectStoreError, match="bucket 'no-such-bucket' does not exist at http"):
        partition_dates(home, "raw_pairs")


def test_missing_credentials_are_named(s3_endpoint: str, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    home = Home(tmp_path, "s3://bucket-without-credentials/wh")
    with pytest.raises(ObjectStoreError, match="no S3 credentials found; set AWS_ACCESS_KEY_ID"):
        write_partition(home, "t", "2025-01-01", _t(["a"], "2025-01-01"))


def test_home_and_resource_take_the_url(tmp_path: Path, monkeypatch):
    from dataplatform.resources.warehouse import WarehouseResource

    monkeypatch.setenv("DATAPLATFORM_HOME", str(tmp_path))
    monkeypatch.delenv(WAREHOUSE_URL_ENV, raising=False)
    assert resolve_home().warehouse == tmp_path.resolve() / "warehouse"
    monkeypatch.setenv(WAREHOUSE_URL_ENV, "s3://b/p/")
    home = resolve_home()
    assert (home.warehouse, home.landing) == ("s3://b/p", tmp_path.resolve() / "landing")
    assert WarehouseResource(warehouse_url="s3://c/q").resolve().warehouse == "s3://c/q"
    assert WarehouseResource().resolve().warehouse == "s3://b/p"
    with pytest.raises(ValueError, match="not an object-store URL"):
        Home(tmp_path, "/some/local/folder")


DEDUP_STAGES = ["raw_pairs", "exact_deduped", "phash_deduped"]


def test_dagster_run_on_s3_equals_local_run(s3_endpoint: str, tmp_path: Path, monkeypatch):
    """raw_pairs -> exact_deduped -> phash_deduped on two days, warehouse on moto vs local."""
    from tests.assets.conftest import DAYS, build_three_days, materialize_day

    local = Home(tmp_path / "home")
    build_three_days(local.landing)
    remote = Home(local.root, f"s3://{BUCKET}/e2e")
    for day in DAYS[:2]:
        assert materialize_day(local, day, selection=DEDUP_STAGES).success
    # The deployment route: the resource leaves warehouse_url empty and reads the environment.
    monkeypatch.setenv(WAREHOUSE_URL_ENV, remote.warehouse_url)
    for day in DAYS[:2]:
        assert materialize_day(local, day, selection=DEDUP_STAGES).success

    def rows(table: pa.Table) -> list[dict]:
        return sorted(table.to_pylist(), key=lambda r: (r["pair_id"], str(r.get("reason"))))

    for stage in DEDUP_STAGES:
        assert partition_dates(remote, stage) == DAYS[:2]
        for day in DAYS[:2]:
            assert rows(read_partition(remote, stage, day)) == rows(
                read_partition(local, stage, day)
            )
            assert rows(read_ledger(remote, stage, day)) == rows(read_ledger(local, stage, day))
    # Day 2's copies were found against day 1's history, read back from the object store.
    duplicates = connect(remote).execute(
        "SELECT pair_id, stage, duplicate_of FROM rejections WHERE duplicate_of IS NOT NULL "
        "AND date = ? ORDER BY 1",
        [DAYS[1]],
    )
    assert duplicates.fetchall() == [
        ("a3", "exact_deduped", "a1"),
        ("c2", "phash_deduped", "c1"),
    ]
