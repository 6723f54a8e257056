"""A URL-manifest day through Dagster to data_cards: every image requested exactly once.

The loopback server counts requests per URL across the whole chain (url_downloads, the
stages, the tokenizer, tokens, data_cards): after the download step no stage asks again.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from dataplatform.core.store.home import Home
from dataplatform.core.store.stages import STAGE_ORDER
from dataplatform.core.store.warehouse import read_ledger, read_partition
from tests.assets.conftest import materialize_cards, materialize_day
from tests.image_server import ImageServer

DATE = "2025-01-01"
GOOD = [f"/img/{n}.jpg" for n in range(8)]  # eight different photographs
FAILING = {
    "missing": ("/missing/a.jpg", "fetch_http_error"),
    "slow": ("/slow/a.jpg", "fetch_timeout"),
    "optout": ("/optout/a.jpg", "fetch_opted_out"),
    "metadata": ("/to-metadata/a.jpg", "fetch_blocked_address"),
    "html": ("/html/a.jpg", "fetch_not_an_image"),
}
FAST = {"deadline_s": 1.0, "retries": 1, "threads": 8}


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("DATAPLATFORM_ALLOW_NETWORKS", "127.0.0.1/32")
    with ImageServer(slow_s=2.0) as running:
        yield running


def _url_day(home: Home, server: ImageServer, extra: dict[str, str] | None = None) -> int:
    day = home.landing / DATE
    day.mkdir(parents=True)
    rows = [
        {"id": f"good{n}", "image": server.url(path), "text": f"photo number {n} of a scene"}
        for n, path in enumerate(GOOD)
    ]
    rows += [
        {"id": key, "image": server.url(path), "text": f"a {key} photo"}
        for key, (path, _) in FAILING.items()
    ]
    rows += [
        {"id": key, "image": server.url(path), "text": f"a {key} photo"}
        for key, path in (extra or {}).items()
    ]
    (day / "urls.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return len(rows)


def _downloads_config(**config) -> dict:
    return {"ops": {"url_downloads": {"config": {**FAST, **config}}}}


def test_a_url_day_reaches_data_cards_with_every_image_requested_once(
    tmp_path: Path, server: ImageServer
):
    home = Home(tmp_path / "home")
    rows = _url_day(home, server)
    instance = dg.DagsterInstance.ephemeral()  # one instance: the cards name every stage's run
    first = materialize_day(
        home, DATE, instance, selection=["url_downloads"], run_config=_downloads_config()
    )
    assert first.success
    after_download = dict(server.hits)
    assert all(after_download[path] == 1 for path in GOOD)
    assert after_download[FAILING["slow"][0]] == 2  # one retry after the timeout
    done = materialize_day(home, DATE, instance, run_config=_downloads_config())
    assert done.success, [e.message for e in done.all_events if e.is_failure]
    cards = materialize_cards(home, DATE, instance)
    assert cards.success, [e.message for e in cards.all_events if e.is_failure]
    failed_checks = [
        e.event_specific_data.check_name
        for e in done.all_events + cards.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
    ]
    assert failed_checks == []
    assert dict(server.hits) == after_download, "a stage after url_downloads made a request"

    raw = read_partition(home, "raw_pairs", DATE)
    ledger = read_ledger(home, "raw_pairs", DATE)
    assert raw.num_rows + ledger.num_rows == rows
    reasons = dict(zip(ledger["pair_id"].to_pylist(), ledger["reason"].to_pylist(), strict=True))
    assert reasons == {key: reason for key, (_, reason) in FAILING.items()}
    assert all(loc.startswith(f"{DATE}/_downloads/") for loc in raw["image_location"].to_pylist())
    # conservation from the manifest to the cards: every row is a card or a ledger row
    carded = read_partition(home, "data_cards", DATE).num_rows
    dropped = sum(read_ledger(home, stage, DATE).num_rows for stage in STAGE_ORDER)
    assert carded > 0 and carded + dropped == rows
    # the step says what it did
    (materialization,) = [
        e.event_specific_data.materialization
        for e in first.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key.path == ["url_downloads"]
    ]
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert (meta["rows_in"], meta["rows_kept"], meta["rows_removed"]) == (13, 8, 5)
    assert meta["requests"] == sum(after_download.values())
    logs = [e.user_message for e in instance.all_logs(first.run_id)]
    assert any("download images: 13 of 13 images done" in m and "5 failed" in m for m in logs)


def test_refetch_retries_failures_and_the_day_gains_the_pairs(tmp_path: Path, server: ImageServer):
    home = Home(tmp_path / "home")
    server.down.add("/down/3.jpg")
    _url_day(home, server, extra={"late": "/down/3.jpg"})
    assert materialize_day(home, DATE, run_config=_downloads_config()).success
    assert "late" in read_ledger(home, "raw_pairs", DATE)["pair_id"].to_pylist()
    server.down.clear()
    # a plain re-run does not ask again: the failure is recorded
    assert materialize_day(home, DATE, run_config=_downloads_config()).success
    assert server.hits["/down/3.jpg"] == 1
    again = materialize_day(
        home, DATE, run_config=_downloads_config(refetch=True, refetch_reasons=["fetch_http_error"])
    )
    assert again.success
    assert server.hits["/down/3.jpg"] == 2 and server.hits[FAILING["missing"][0]] == 2
    assert server.hits[FAILING["slow"][0]] == 2  # not a reason asked for
    assert "late" in read_partition(home, "raw_pairs", DATE)["pair_id"].to_pylist()
    assert "late" not in read_ledger(home, "raw_pairs", DATE)["pair_id"].to_pylist()


def test_the_refetch_command_names_its_reasons_and_reruns_the_day(
    tmp_path: Path, server: ImageServer, monkeypatch, capsys
):
    from dataplatform import cli

    home = Home(tmp_path / "home")
    _url_day(home, server)
    assert materialize_day(
        home, DATE, selection=["url_downloads"], run_config=_downloads_config()
    ).success
    calls = []
    monkeypatch.setattr(cli, "_materialize", lambda h, dates, ops=None: calls.append((dates, ops)))
    code = cli.main(
        ["--home", str(home.root), "refetch", "--date", DATE, "--reason", "fetch_timeout"]
    )
    assert code == 0
    assert calls == [
        (
            [DATE],
            {"url_downloads": {"config": {"refetch": True, "refetch_reasons": ["fetch_timeout"]}}},
        )
    ]
    out = capsys.readouterr().out
    assert "5 failed downloads" in out and "fetch_timeout 1" in out and "retrying 1" in out
    with pytest.raises(SystemExit):
        cli.main(["--home", str(home.root), "refetch", "--date", "2025-13-01"])
