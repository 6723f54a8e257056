"""map_chunks on both engines: same results in the same order, models built once per actor."""

from __future__ import annotations

import os

import pytest

from dataplatform.core.engine.chunk_map import EngineWorkerLost, Lost, map_chunks, map_isolated
from dataplatform.core.engine.engine_spec import (
    ADDRESS_ENV,
    ENGINE_ENV,
    EngineSettingError,
    EngineSpec,
    engine_spec,
)
from dataplatform.core.engine.progress import PROGRESS_SECONDS_ENV

CHUNKS = [list(range(i, i + 5)) for i in range(0, 60, 5)]


def _squares_worker():
    # Built once per actor: the pid and a build id show how many were built and where.
    built = os.getpid()

    def work(chunk: list[int]) -> tuple[int, list[int]]:
        return built, [x * x for x in chunk]

    return work


def test_local_runs_in_this_process_in_order():
    results, run = map_chunks(EngineSpec(), _squares_worker, CHUNKS)
    assert [r[1] for r in results] == [[x * x for x in c] for c in CHUNKS]
    assert {r[0] for r in results} == {os.getpid()}
    assert (run.engine, run.workers, run.chunks) == ("local", 1, len(CHUNKS))


def test_ray_gives_the_local_results_in_chunk_order(ray_cluster):
    spec = EngineSpec(kind="ray", address=ray_cluster.address)
    results, run = map_chunks(spec, _squares_worker, CHUNKS)
    assert [r[1] for r in results] == [[x * x for x in c] for c in CHUNKS]
    pids = {r[0] for r in results}
    # Two worker nodes with one CPU each: two actors, each built its worker once.
    assert run.engine == "ray" and run.workers == 2 and len(pids) == 2
    assert os.getpid() not in pids
    assert run.nodes == 1 + ray_cluster.worker_nodes
    assert run.metadata()["engine_workers"] == 2


def test_ray_logs_chunks_done_with_rate_and_time_left(ray_cluster, monkeypatch):
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")
    lines: list[str] = []
    spec = EngineSpec(kind="ray", address=ray_cluster.address)
    map_chunks(spec, _squares_worker, CHUNKS, log=lines.append)
    assert lines[0].startswith(f"ray: {len(CHUNKS)} chunks on 2 actors")
    assert lines[1] == f"ray: 0 of {len(CHUNKS)} chunks, starting"
    for done, line in enumerate(lines[2:-1], 1):
        assert line.startswith(f"ray: {done} of {len(CHUNKS)} chunks ("), line
        assert " chunks/s, " in line and line.endswith(" left")
    assert lines[-1].startswith(f"ray: {len(CHUNKS)} of {len(CHUNKS)} chunks done, ")
    assert len(lines) == 2 + len(CHUNKS)


def _dies_on_chunk_7():
    def work(chunk: list[int]) -> list[int]:
        if chunk[0] == 35:
            os._exit(3)  # a process-killing crash, as a hostile file can cause in a decoder
        return [-x for x in chunk]

    return work


def test_a_dead_actor_is_redone_by_on_lost_and_the_rest_kept(ray_cluster):
    spec = EngineSpec(kind="ray", address=ray_cluster.address)
    redone = []

    def on_lost(chunk):
        redone.append(chunk)
        return ["lost"] * len(chunk)

    results, run = map_chunks(spec, _dies_on_chunk_7, CHUNKS, on_lost=on_lost)
    assert redone == [CHUNKS[7]]
    assert results[7] == ["lost"] * 5
    assert [r for i, r in enumerate(results) if i != 7] == [
        [-x for x in c] for i, c in enumerate(CHUNKS) if i != 7
    ]
    assert run.lost_workers == 1


def test_a_dead_actor_without_on_lost_fails_naming_the_chunk(ray_cluster):
    spec = EngineSpec(kind="ray", address=ray_cluster.address)
    with pytest.raises(EngineWorkerLost, match="chunk 7 of 12"):
        map_chunks(spec, _dies_on_chunk_7, CHUNKS)


def _cannot_load():
    raise FileNotFoundError("no checkpoint at /models/missing.pt")


def test_a_worker_that_cannot_be_built_fails_with_its_own_error(ray_cluster):
    spec = EngineSpec(kind="ray", address=ray_cluster.address)
    with pytest.raises(EngineWorkerLost, match="missing.pt"):
        map_chunks(spec, _cannot_load, CHUNKS)


def _crash_on_three(x: int) -> int:
    if x == 3:
        os._exit(9)
    return x + 100


def test_map_isolated_turns_a_crashed_process_into_that_items_lost(ray_cluster):
    spec = EngineSpec(kind="ray", address=ray_cluster.address)
    out = map_isolated(spec, _crash_on_three, [1, 2, 3, 4])
    assert out[:2] == [101, 102] and out[3] == 104
    assert isinstance(out[2], Lost) and "died" in out[2].detail


def test_spec_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv(ENGINE_ENV, "Ray")
    monkeypatch.setenv(ADDRESS_ENV, "10.0.0.5:6379")
    spec = engine_spec()
    assert spec.is_ray and spec.address == "10.0.0.5:6379"
    assert engine_spec("local").kind == "local"
    monkeypatch.delenv(ENGINE_ENV)
    assert engine_spec().kind == "local"


def test_an_unknown_engine_names_the_setting(monkeypatch):
    monkeypatch.setenv(ENGINE_ENV, "spark")
    with pytest.raises(EngineSettingError, match="DATAPLATFORM_ENGINE='spark'"):
        engine_spec()
    with pytest.raises(EngineSettingError, match="chunk_rows"):
        EngineSpec(chunk_rows=0)


def _negate_worker():
    built = os.getpid()

    def work(chunk: list[int]) -> tuple[int, list[int]]:
        return built, [-x for x in chunk]

    return work


def test_the_next_day_reuses_the_actors_and_another_stage_releases_them(ray_cluster):
    spec = EngineSpec(kind="ray", address=ray_cluster.address)
    first, run1 = map_chunks(spec, _squares_worker, CHUNKS)
    second, run2 = map_chunks(spec, _squares_worker, CHUNKS[:3])
    # Day two: no actor started, so no model loaded again; the same processes did the work.
    assert run1.started_workers == 2 and run2.started_workers == 0
    assert {r[0] for r in second} <= {r[0] for r in first}
    other, run3 = map_chunks(spec, _negate_worker, CHUNKS)
    assert run3.started_workers == 2 and run3.workers == 2
    # Two worker nodes of one CPU each: the new actors could start only if the old ones went.
    assert not {r[0] for r in other} & {r[0] for r in first}


def _crash_on_chunk_of_35():
    def work(chunk: list[int]) -> list[int]:
        if 35 in chunk:
            os._exit(3)
        return [x + 100 for x in chunk]

    return work


@pytest.mark.timeout(120)
def test_a_lost_chunk_is_redone_in_tasks_while_the_actors_hold_every_cpu(ray_cluster):
    """The redo runs Ray tasks while the stage's actors hold both CPUs: it must not wait."""
    spec = EngineSpec(kind="ray", address=ray_cluster.address)

    def one_by_one(chunk):
        out = map_isolated(spec, _crash_on_three_five, chunk)
        return ["crashed" if isinstance(r, Lost) else r for r in out]

    results, run = map_chunks(spec, _crash_on_chunk_of_35, CHUNKS, on_lost=one_by_one)
    assert results[7] == ["crashed", 136, 137, 138, 139]
    assert results[0] == [100, 101, 102, 103, 104] and run.lost_workers == 1


def _crash_on_three_five(x: int) -> int:
    if x == 35:
        os._exit(9)
    return x + 100
