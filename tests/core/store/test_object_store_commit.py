"""The commit protocol on s3:// (moto): a writer that dies at any step leaves one pair readable.

A process killed mid-commit makes no further requests; here the store stops answering the
writer at its Nth request (a PUT, a copy-and-delete, a DELETE) and every later one, including
its own clean-up, which is what a dead process leaves behind.
"""

from __future__ import annotations

import pytest

from dataplatform.core.store.home import Home
from dataplatform.core.store.object_store import open_store
from dataplatform.core.store.warehouse import (
    recover,
)
from tests.core.store.test_object_store import (  # noqa: F401 - s3_endpoint, s3_home: moto fixtures
    BUCKET,
    _objects,
    s3_endpoint,
    s3_home,
)
from tests.core.store.test_warehouse_commit import NEW, OLD, SIDE, STAGE, D, _commit, _state

FILES = [
    f"{STAGE}/date={D}/part-0.parquet",
    f"{SIDE}/date={D}/part-0.parquet",
    f"rejections/stage={STAGE}/date={D}/part-0.parquet",
]


class Crash(Exception):
    """The writer is dead: this request and every later one never happen."""


def _die_at(store, monkeypatch, at: int) -> list[str]:
    """Make the store fail the writer from its ``at``-th request on; returns the requests."""
    requests: list[str] = []
    state = {"inside": False}

    def watched(name: str, real):
        def call(*args):
            if state["inside"]:
                return real(*args)
            if name == "delete":
                args = (list(args[0]),)
                if not args[0]:
                    return real(*args)
            requests.append(name)
            if len(requests) >= at:
                raise Crash(f"writer killed before request {at} ({name})")
            state["inside"] = True
            try:
                return real(*args)
            finally:
                state["inside"] = False

        return call

    for name in ("put", "move", "delete"):
        monkeypatch.setattr(store, name, watched(name, getattr(store, name)))
    return requests


@pytest.mark.parametrize("at", range(1, 10))
def test_a_writer_dying_at_any_request_leaves_the_old_pair_or_the_new_one(
    s3_endpoint: str,  # noqa: F811 - the fixture
    tmp_path,
    monkeypatch,
    at: int,
):
    # Not the s3_home fixture: fsspec reads the `[1]` of a parametrized test's name as a glob.
    home = Home(tmp_path, f"s3://{BUCKET}/dying-writer-{at}")
    old = _commit(home, OLD)
    store = open_store(home.warehouse_url)
    requests = _die_at(store, monkeypatch, at)
    try:
        _commit(home, NEW)
        crashed = False
    except Crash:
        crashed = True
    monkeypatch.undo()
    # Three temp PUTs, the record's PUT (the commit point), three copies, the record's DELETE;
    # a ninth request never comes.
    protocol = ["put"] * 4 + ["move"] * 3 + ["delete"]
    assert requests[: min(at, 8)] == protocol[:at]
    assert crashed == (at <= 8)
    seen, partition_commit, ledger_commit = _state(home)  # readers recover first
    assert partition_commit == ledger_commit
    if at <= 4:
        assert (seen, partition_commit) == (OLD, old)
    else:
        assert seen == NEW and partition_commit != old
    # The next write leaves only the three part files: no temp object, no record.
    third = _commit(home, OLD)
    assert _state(home) == (OLD, third, third)
    assert _objects(home) == sorted(FILES)


def test_recover_lists_the_records_once_when_idle(s3_home: Home, monkeypatch):  # noqa: F811
    _commit(s3_home, OLD)
    store = open_store(s3_home.warehouse_url)
    calls: list[str] = []
    real = store.fs.call_s3
    monkeypatch.setattr(store.fs, "call_s3", lambda op, **kw: calls.append(op) or real(op, **kw))
    assert recover(s3_home) == []
    assert calls == ["list_objects_v2"]
