import numpy as np
import pyarrow as pa
import pytest

from dataplatform.core.dedup import semantic_state
from dataplatform.core.dedup.dedup_state import StateError
from dataplatform.core.dedup.semantic_history import SemanticStore
from dataplatform.core.dedup.semantic_index import find_similar_pairs, greedy_keep

DAYS = [f"2025-01-{d:02d}" for d in range(1, 21)]
DIM = 64
THRESHOLD = 0.95


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


CENTRES = _unit(np.random.default_rng(0).normal(size=(40, DIM)))


def day(date: str, n: int, seed: int) -> tuple[np.ndarray, pa.Table]:
    """Unit vectors near a few shared centres (so days hold copies of each other)."""
    rng = np.random.default_rng(seed)
    centre = CENTRES[rng.integers(0, len(CENTRES), n)]
    vectors = _unit(centre + rng.normal(scale=rng.choice([0.02, 0.3], n)[:, None], size=(n, DIM)))
    ids = pa.table({"pair_id": [f"{date}-{i}" for i in range(n)], "date": [date] * n})
    return vectors, ids


def brute(days: dict, queries: np.ndarray, before: str) -> set[tuple[int, str]]:
    found = set()
    for date, (vectors, ids) in days.items():
        if date >= before:
            continue
        sims = queries.astype(np.float64) @ vectors.astype(np.float64).T
        for q, r in zip(*np.nonzero(sims >= THRESHOLD), strict=True):
            found.add((int(q), ids["pair_id"][int(r)].as_py()))
    return found


def found(store: SemanticStore, queries: np.ndarray, before: str) -> set[tuple[int, str]]:
    matches = store.search(queries, THRESHOLD, before)
    ids = matches.history["pair_id"].to_pylist()
    return {(int(q), ids[r]) for q, r in zip(matches.query, matches.row, strict=True)}


@pytest.fixture
def store(tmp_path) -> SemanticStore:
    return SemanticStore(tmp_path)


def test_history_before_each_day_is_what_brute_force_finds(store):
    days = {d: day(d, 120, seed=k) for k, d in enumerate(DAYS[:8])}
    for d, (vectors, ids) in days.items():
        store.record_day(d, vectors, ids, "c")
    assert len([s for s in store.manifest() if s.name]) < len(DAYS)  # merged
    queries, _ = day("2025-02-01", 60, seed=99)
    for before in [DAYS[0], DAYS[3], "2025-02-01"]:
        assert found(store, queries, before) == brute(days, queries, before)


def test_history_rows_are_ordered_by_date_then_pair_id(store):
    days = {d: day(d, 80, seed=k) for k, d in enumerate(DAYS[:3])}
    for d, (vectors, ids) in days.items():
        store.record_day(d, vectors, ids, "c")
    history = store.search(day("2025-02-01", 40, seed=5)[0], THRESHOLD, "2025-02-01").history
    keys = list(zip(history["date"].to_pylist(), history["pair_id"].to_pylist(), strict=True))
    assert keys == sorted(keys) and len(keys) == len(set(keys))


def test_rerun_merge_and_removal_keep_history_exact(store):
    days = {d: day(d, 100, seed=k) for k, d in enumerate(DAYS[:5])}
    for d, (vectors, ids) in days.items():
        store.record_day(d, vectors, ids, "c")
    days[DAYS[1]] = day(DAYS[1], 30, seed=50)  # a re-run day, its old rows inside a merge
    store.record_day(DAYS[1], *days[DAYS[1]], "c2")
    for k, d in enumerate(DAYS[5:]):  # the merged segment with a retired date merges again
        days[d] = day(d, 100, seed=200 + k)
        store.record_day(d, *days[d], "c")
    largest = max(store.manifest(), key=lambda s: s.rows)
    # The merge of the segment DAYS[1] was retired from kept none of its old rows.
    assert DAYS[1] not in largest.dates and largest.rows == largest.live_rows == 1500
    queries, _ = day("2025-02-01", 60, seed=98)
    assert found(store, queries, "2025-02-01") == brute(days, queries, "2025-02-01")
    gone = [f"{DAYS[0]}-{i}" for i in range(10)]
    assert store.remove_pairs(gone) == 10
    vectors, ids = days[DAYS[0]]
    days[DAYS[0]] = (vectors[10:], ids.slice(10))
    assert found(store, queries, "2025-02-01") == brute(days, queries, "2025-02-01")
    assert store.dates()[DAYS[0]].rows == 90


def test_a_new_quantizer_comes_in_with_its_segments(store):
    days = {d: day(d, 100, seed=k) for k, d in enumerate(DAYS[:3])}
    for d, (vectors, ids) in days.items():
        store.record_day(d, vectors, ids, "c")
    first = store.quantizer().fingerprint
    queries, _ = day("2025-02-01", 40, seed=97)
    before = found(store, queries, "2025-02-01")
    sample = np.concatenate([v for v, _ in days.values()])
    store._training = store.train(sample[::-1].copy())
    seen_meanwhile = []

    def rebuilt():
        for d, (vectors, ids) in days.items():
            seen_meanwhile.append(
                found(store.__class__(store.folder.parent), queries, "2025-02-01")
            )
            yield d, vectors, ids, "c"

    store.rebuild(rebuilt())
    store._training = None
    assert store.quantizer().fingerprint != first
    assert all(s == before for s in seen_meanwhile)
    assert found(store, queries, "2025-02-01") == before == brute(days, queries, "2025-02-01")


def test_drift_and_retrain_advice(store):
    vectors, ids = day(DAYS[0], 400, seed=1)
    store.record_day(DAYS[0], vectors, ids, "c")
    same = store.advice(day(DAYS[1], 200, seed=2)[0], DAYS[1])
    assert same["semantic_retrain_advised"] == "-"
    assert same["semantic_retrain_due"] is False
    elsewhere = _unit(np.random.default_rng(7).normal(size=(200, DIM)))
    advice = store.advice(elsewhere, DAYS[1])
    assert advice["semantic_drift"] > 1.2
    assert "drift" in advice["semantic_retrain_advised"]
    # Trained for these 400 rows: a drifting day is advised, not yet due, until the history
    # has grown by RETRAIN_MIN_GROWTH (so unusual days in a row do not retrain every day).
    assert advice["semantic_retrain_due"] is False
    assert "not yet due" in advice["semantic_retrain_advised"]
    store.record_day(DAYS[1], *day(DAYS[1], 120, seed=3), "c")
    later = store.advice(elsewhere, DAYS[2])
    assert later["semantic_retrain_due"] is True
    assert "not yet due" not in later["semantic_retrain_advised"]


def test_another_embedding_model_is_refused_with_what_to_do(store):
    vectors, ids = day(DAYS[0], 50, seed=1)
    store.record_day(DAYS[0], vectors, ids, "c")
    store.record_day(DAYS[0], _unit(vectors[:, :32]), ids, "c2")  # the same day, re-run
    assert store.quantizer().dim == 32
    narrow, narrow_ids = day(DAYS[1], 20, seed=2)
    with pytest.raises(StateError, match="d=64.*d=32.*rebuild-state"):
        store.record_day(DAYS[1], narrow, narrow_ids, "c")


def test_nearest_is_each_rows_best_pair_and_decides_as_every_pair_does(store, monkeypatch):
    """``nearest`` keeps one pair per day row (its memory follows the day, not the clusters'
    growing membership), the one ``greedy_keep`` would pick from ``search``'s every pair."""
    days = {d: day(d, 100, seed=k) for k, d in enumerate(DAYS[:6])}
    days[DAYS[6]] = (days[DAYS[2]][0].copy(), day(DAYS[6], 100, seed=0)[1])  # exact ties
    for d, (vectors, ids) in days.items():
        store.record_day(d, vectors, ids, "c")
    store.record_day(DAYS[3], *day(DAYS[3], 40, seed=60), "c2")  # retired rows in a merge
    monkeypatch.setattr(semantic_state, "_BLOCK_ROWS", 16)  # many blocks to reduce over
    queries = np.concatenate([day("2025-02-01", 60, seed=96)[0], days[DAYS[2]][0][:20]])
    every = store.search(queries, THRESHOLD, "2025-02-01")
    best = store.nearest(queries, THRESHOLD, "2025-02-01")
    hist = every.history.to_pylist()
    expected = {}
    for q, r, s in zip(every.query.tolist(), every.row.tolist(), every.similarity, strict=True):
        key = (-s, hist[r]["date"], hist[r]["pair_id"])
        expected[q] = min(expected.get(q, key), key)
    got = best.history.to_pylist()
    assert {
        q: (-s, got[r]["date"], got[r]["pair_id"])
        for q, r, s in zip(best.query.tolist(), best.row.tolist(), best.similarity, strict=True)
    } == expected
    assert len(set(best.query.tolist())) == len(best.query) < len(every.query)
    assert any(got[r]["date"] == DAYS[2] for r in best.row[-20:])  # the tie to the earlier day
    rank = np.arange(len(queries))
    pairs = find_similar_pairs(queries, THRESHOLD)
    a = greedy_keep(rank, pairs, (every.query, every.row, every.similarity))
    b = greedy_keep(rank, pairs, (best.query, best.row, best.similarity))
    assert (a.keep == b.keep).all() and (a.dup_in_history == b.dup_in_history).all()
    np.testing.assert_array_equal(a.similarity, b.similarity)
    assert _targets(a, hist) == _targets(b, got)


def _targets(decision, history: list[dict]) -> list:
    """What each day row is a duplicate of: a history pair_id, a day row, or -1 (kept)."""
    return [
        history[t]["pair_id"] if h else int(t)
        for t, h in zip(decision.duplicate_of, decision.dup_in_history, strict=True)
    ]


def test_an_outgrown_quantizer_is_retrained_only_when_a_retrain_gives_more_lists(
    store, monkeypatch
):
    """A retrain samples at most SAMPLE_ROWS vectors, which caps its lists: past that, an
    outgrown quantizer is advised but never due, or every day would retrain."""
    from dataplatform.core.dedup import semantic_history

    vectors, ids = day(DAYS[0], 400, seed=1)
    store.record_day(DAYS[0], vectors, ids, "c")
    lists = store.quantizer().nlist
    monkeypatch.setattr(store, "rows_before", lambda before: 10_000_000)
    monkeypatch.setattr(semantic_history, "SAMPLE_ROWS", 400)  # the sample that trained it
    capped = store.advice(day(DAYS[1], 50, seed=2)[0], DAYS[1])
    assert f"the quantizer has {lists}" in capped["semantic_retrain_advised"]
    assert "would not help" in capped["semantic_retrain_advised"]
    assert capped["semantic_retrain_due"] is False
    monkeypatch.setattr(semantic_history, "SAMPLE_ROWS", 40 * 40 * lists)
    assert store.advice(day(DAYS[1], 50, seed=2)[0], DAYS[1])["semantic_retrain_due"] is True


def test_an_outgrown_retrain_waits_for_the_history_to_double(store, monkeypatch):
    """The list estimate assumes a full sample; days of uneven size give a smaller one, so a
    retrain that did not reach it must not be due again the next day."""
    from dataplatform.core.dedup import semantic_history
    from dataplatform.core.store.durable import replace_json

    vectors, ids = day(DAYS[0], 400, seed=1)
    store.record_day(DAYS[0], vectors, ids, "c")
    monkeypatch.setattr(store, "rows_before", lambda before: 10_000_000)
    monkeypatch.setattr(semantic_history, "SAMPLE_ROWS", 200_000)
    fingerprint = store.quantizer().fingerprint
    trained = store.quantizers / fingerprint / semantic_history.TRAINED_FILE
    replace_json(trained, {"history_rows": 6_000_000})  # as a retrain at 6M history leaves it
    advice = store.advice(day(DAYS[1], 50, seed=2)[0], DAYS[1])
    assert "want about" in advice["semantic_retrain_advised"]
    assert advice["semantic_retrain_due"] is False
    replace_json(trained, {"history_rows": 5_000_000})
    assert store.advice(day(DAYS[1], 50, seed=2)[0], DAYS[1])["semantic_retrain_due"] is True
