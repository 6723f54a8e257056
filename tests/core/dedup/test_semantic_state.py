"""The persistent semantic index must find what brute force over the whole history finds (all
of it with every list probed, >= 99% with the default probes), report exact similarities and
nothing below the threshold, and never return a wrong answer from a segment that is half
written, damaged, or encoded with another quantizer."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dataplatform.core.dedup import semantic_state
from dataplatform.core.dedup.semantic_index import DEFAULT_SIMILARITY_THRESHOLD
from dataplatform.core.dedup.semantic_state import (
    CODES,
    DRIFT_RETRAIN_THRESHOLD,
    IDS,
    MANIFEST,
    VECTORS,
    CorruptSegmentError,
    Quantizer,
    QuantizerMismatchError,
    SegmentMatches,
    brute_force_search,
    default_nprobe,
    drift,
    load_quantizer,
    measure_recall,
    merge_segments,
    remove_pairs,
    search_segment_blocks,
    search_segments,
    segment_info,
    segment_rows,
    train_quantizer,
    write_segment,
)

D = 256
T = DEFAULT_SIMILARITY_THRESHOLD
DAYS = ("2024-05-01", "2024-05-02", "2024-05-03")
NLIST = 200


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clip_like_centres(rng: np.random.Generator, n: int) -> np.ndarray:
    """Cluster centres as CLIP image embeddings have them: in a cone around one direction
    (topics meet at cosine about 0.3), and each centre near one of 40 topics (cosine 0.80-0.92
    to it), so that lists split topics and clusters sit on both sides of list boundaries."""
    common = unit_rows(rng.standard_normal((1, D)))
    topics = unit_rows(0.7 * common + rng.standard_normal((40, D)) / np.sqrt(D))
    return at_cosine(rng, topics[rng.integers(0, len(topics), n)], 0.80, 0.92)


def members(rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """One near neighbour per centre row at cosine 0.90-0.99 to it: members of a cluster meet
    at about the product of their cosines, so many pairs lie around 0.95."""
    return at_cosine(rng, centres, 0.90, 0.99)


def at_cosine(rng: np.random.Generator, rows: np.ndarray, low: float, high: float) -> np.ndarray:
    """A unit vector per row at a cosine drawn uniformly from [low, high] to it."""
    c = rng.uniform(low, high, size=(len(rows), 1))
    noise = rng.standard_normal(rows.shape)
    noise -= np.einsum("ij,ij->i", noise, rows)[:, None] * rows
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return unit_rows(c * rows + np.sqrt(1 - c**2) * noise)


def brute_force(queries: np.ndarray, history: np.ndarray, ids: list[str], t: float) -> dict:
    """{(query row, pair_id): float64 similarity} of every pair at ``t``."""
    sims = queries.astype(np.float64) @ history.astype(np.float64).T
    qi, hi = np.nonzero(sims >= t)
    return {(int(a), ids[b]): float(sims[a, b]) for a, b in zip(qi, hi, strict=True)}


def as_dict(matches: SegmentMatches) -> dict:
    pairs = zip(matches.query.tolist(), matches.pair_id.to_pylist(), strict=True)
    return dict(zip(pairs, matches.similarity.tolist(), strict=True))


@dataclass
class World:
    quantizer: Quantizer
    quantizer_path: Path
    centres: np.ndarray
    segments: list[Path]
    days: list[np.ndarray]  # each day's vectors
    ids: list[list[str]]
    queries: np.ndarray

    def history(self, days: range) -> tuple[np.ndarray, list[str]]:
        return np.concatenate([self.days[d] for d in days]), sum((self.ids[d] for d in days), [])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("semantic_state")
    centres = clip_like_centres(rng, 400)
    sample = members(rng, np.repeat(centres, 8, axis=0))
    quantizer = train_quantizer(sample, root / "quantizer", nlist=NLIST, seed=3)
    segments, days, ids = [], [], []
    for day in DAYS:
        v = members(rng, centres[rng.integers(0, len(centres), 3000)])
        names = [f"{day}/{i:05d}" for i in range(len(v))]
        write_segment(root / day, quantizer, names, [day] * len(v), v)
        segments.append(root / day)
        days.append(v)
        ids.append(names)
    # new members of the clusters, and edited copies of kept images (a copy sits in a random
    # direction from its original, so it often lands in a neighbouring list)
    history = np.concatenate(days)
    copies = at_cosine(rng, history[rng.choice(len(history), 300, replace=False)], 0.95, 0.97)
    queries = np.concatenate([members(rng, centres[rng.integers(0, len(centres), 1200)]), copies])
    return World(quantizer, root / "quantizer", centres, segments, days, ids, queries)


def copy_segments(world: World, tmp_path: Path) -> list[Path]:
    copies = [tmp_path / s.name for s in world.segments]
    for src, dst in zip(world.segments, copies, strict=True):
        shutil.copytree(src, dst)
    return copies


def test_default_probes_find_99_percent_of_clustered_pairs_exactly_scored(world: World) -> None:
    history, ids = world.history(range(3))
    exact = brute_force(world.queries, history, ids, T)
    found = search_segments(world.segments, world.quantizer, world.queries, T)
    got = as_dict(found)
    assert len(exact) > 1_500  # clusters make plenty of pairs, many near the threshold
    assert sum(1 for s in exact.values() if s < 0.96) > 800
    assert set(got) <= set(exact)  # nothing below the threshold
    assert len(set(got) & set(exact)) / len(exact) >= 0.99
    assert all(abs(got[k] - exact[k]) <= 1e-5 for k in got)
    assert (found.similarity >= T).all()
    assert default_nprobe(NLIST, T) < NLIST / 4  # a real probe, not a full scan
    columns = (found.query.tolist(), found.date.to_pylist(), found.pair_id.to_pylist())
    order = list(zip(*columns, strict=True))
    assert order == sorted(order)
    assert measure_recall(world.segments, world.quantizer, world.queries, T) >= 0.99


def test_probing_every_list_finds_exactly_the_brute_force_pairs(world: World) -> None:
    history, ids = world.history(range(3))
    queries = world.queries[::5]
    for t in (0.9, T):
        exact = brute_force(queries, history, ids, t)
        got = as_dict(search_segments(world.segments, world.quantizer, queries, t, nprobe=NLIST))
        assert set(got) == set(exact)
        assert all(abs(got[k] - exact[k]) <= 1e-5 for k in got)
    assert as_dict(brute_force_search(world.segments, queries, T)) == got
    assert default_nprobe(NLIST, 0.5) == NLIST  # below the calibrated thresholds: all lists


def test_older_segments_give_the_history_before_a_day_and_rewriting_replaces(
    world: World, tmp_path: Path
) -> None:
    d1, d2, _ = copy_segments(world, tmp_path)
    history, ids = world.history(range(2))
    found = search_segments([d1, d2], world.quantizer, world.queries, T, nprobe=NLIST)
    assert set(as_dict(found)) == set(brute_force(world.queries, history, ids, T))
    assert set(found.date.to_pylist()) == {DAYS[0], DAYS[1]}

    rng = np.random.default_rng(11)
    fresh = members(rng, world.centres[rng.integers(0, len(world.centres), 500)])
    names = [f"{DAYS[1]}/rewritten-{i:04d}" for i in range(len(fresh))]
    write_segment(d2, world.quantizer, names, [DAYS[1]] * len(fresh), fresh)
    assert segment_rows(d2) == 500
    history = np.concatenate([world.days[0], fresh])
    found = search_segments([d1, d2], world.quantizer, world.queries, T, nprobe=NLIST)
    assert set(as_dict(found)) == set(brute_force(world.queries, history, world.ids[0] + names, T))
    assert [p.name for p in d2.iterdir() if p.name != MANIFEST] == [segment_info(d2).version]


def test_a_segment_from_another_quantizer_is_refused_naming_both(
    world: World, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    other = train_quantizer(members(rng, np.repeat(world.centres, 4, axis=0)), tmp_path / "q")
    write_segment(tmp_path / "other", other, ["a"], [DAYS[0]], world.queries[:1])
    assert other.fingerprint != world.quantizer.fingerprint
    with pytest.raises(QuantizerMismatchError) as refused:
        search_segments([world.segments[0], tmp_path / "other"], world.quantizer, world.queries, T)
    assert other.fingerprint in str(refused.value)
    assert world.quantizer.fingerprint in str(refused.value)
    with pytest.raises(QuantizerMismatchError, match=other.fingerprint):
        merge_segments([world.segments[0], tmp_path / "other"], tmp_path / "merged")


def test_quantizer_round_trips_through_its_folder(world: World) -> None:
    loaded = load_quantizer(world.quantizer_path)
    assert loaded.fingerprint == world.quantizer.fingerprint
    assert np.array_equal(loaded.centroids, world.quantizer.centroids)
    assert loaded.reference_distance == world.quantizer.reference_distance
    assert loaded.nlist == NLIST and loaded.dim == D


def test_a_crashed_write_leaves_a_temp_folder_that_readers_ignore_and_writes_remove(
    world: World, tmp_path: Path
) -> None:
    d1, d2, d3 = copy_segments(world, tmp_path)
    before = as_dict(search_segments([d1, d2, d3], world.quantizer, world.queries, T))
    crashed = d2 / ".tmp-0123456789abcdef"
    crashed.mkdir()
    (crashed / CODES).write_bytes(b"\x93NUMPY half written")
    assert as_dict(search_segments([d1, d2, d3], world.quantizer, world.queries, T)) == before
    assert segment_rows(d2) == 3000

    write_segment(d2, world.quantizer, world.ids[1], [DAYS[1]] * 3000, world.days[1])
    assert not crashed.exists()
    assert as_dict(search_segments([d1, d2, d3], world.quantizer, world.queries, T)) == before

    never_finished = tmp_path / "never"
    (never_finished / ".tmp-feedface").mkdir(parents=True)
    with pytest.raises(CorruptSegmentError, match="never completely written"):
        search_segments([d1, never_finished], world.quantizer, world.queries, T)


@pytest.mark.parametrize("damage", ["missing", "truncated", "manifest"])
def test_a_damaged_segment_raises_instead_of_answering(
    world: World, tmp_path: Path, damage: str
) -> None:
    d1, *_ = copy_segments(world, tmp_path)
    version = d1 / segment_info(d1).version
    if damage == "missing":
        (version / VECTORS).unlink()
    elif damage == "truncated":
        data = (version / CODES).read_bytes()
        (version / CODES).write_bytes(data[: len(data) // 2])
    else:
        (d1 / MANIFEST).write_text((d1 / MANIFEST).read_text()[:40])
    with pytest.raises(CorruptSegmentError) as raised:
        search_segments([d1], world.quantizer, world.queries, T)
    assert str(d1) in str(raised.value)
    assert raised.value.path.is_relative_to(d1)


def test_remove_pairs_takes_down_exactly_those_rows(world: World, tmp_path: Path) -> None:
    d1, d2, d3 = copy_segments(world, tmp_path)
    before = search_segments([d1, d2, d3], world.quantizer, world.queries, T)
    matched_in_d2 = sorted({p for p in before.pair_id.to_pylist() if p.startswith(DAYS[1])})
    gone = set(matched_in_d2[::3]) | {world.ids[1][0]}
    assert remove_pairs(d2, sorted(gone) + ["not-there"]) == len(gone)
    assert segment_rows(d2) == 3000 - len(gone)
    assert remove_pairs(d2, ["not-there"]) == 0
    after = search_segments([d1, d2, d3], world.quantizer, world.queries, T)
    expected = {k: v for k, v in as_dict(before).items() if k[1] not in gone}
    assert as_dict(after) == expected

    keep = [i for i, p in enumerate(world.ids[1]) if p not in gone]
    history = np.concatenate([world.days[0], world.days[1][keep], world.days[2]])
    names = world.ids[0] + [world.ids[1][i] for i in keep] + world.ids[2]
    everything = search_segments([d1, d2, d3], world.quantizer, world.queries, T, nprobe=NLIST)
    assert set(as_dict(everything)) == set(brute_force(world.queries, history, names, T))


def test_merged_segment_searches_like_its_sources(world: World, tmp_path: Path) -> None:
    merged = tmp_path / "2024-05"
    merge_segments(world.segments, merged)
    info = segment_info(merged)
    assert info.rows == 9000
    assert (info.first_date, info.last_date) == (DAYS[0], DAYS[2])
    queries = world.queries[::3]
    for nprobe in (None, 4):
        sources = search_segments(world.segments, world.quantizer, queries, T, nprobe=nprobe)
        one = search_segments([merged], world.quantizer, queries, T, nprobe=nprobe)
        assert as_dict(one) == as_dict(sources)
        assert one.date.to_pylist() == sources.date.to_pylist()

    with pytest.raises(ValueError, match="share pair_ids"):
        merge_segments([world.segments[0], world.segments[0]], tmp_path / "twice")

    # compaction into one of its own sources
    d1, d2, d3 = copy_segments(world, tmp_path / "copies")
    merge_segments([d1, d2, d3], d1)
    assert segment_rows(d1) == 9000
    assert as_dict(search_segments([d1], world.quantizer, queries, T)) == as_dict(
        search_segments([merged], world.quantizer, queries, T)
    )


def test_drift_is_one_for_the_training_distribution_and_higher_for_new_clusters(
    world: World,
) -> None:
    rng = np.random.default_rng(21)
    same = members(rng, world.centres[rng.integers(0, len(world.centres), 2000)])
    new = members(rng, clip_like_centres(rng, 200)[rng.integers(0, 200, 2000)])
    assert 0.9 < drift(world.quantizer, same) < 1.1
    assert drift(world.quantizer, new) > 1.5 > DRIFT_RETRAIN_THRESHOLD


def test_float16_vectors_halve_the_disk_and_stay_within_1e_3(world: World, tmp_path: Path) -> None:
    write_segment(
        tmp_path / "half",
        world.quantizer,
        world.ids[0],
        [DAYS[0]] * 3000,
        world.days[0],
        vector_dtype="float16",
    )
    files = json.loads((tmp_path / "half" / MANIFEST).read_text())["files"]
    full = json.loads((world.segments[0] / MANIFEST).read_text())["files"]
    assert files[VECTORS] < 0.51 * full[VECTORS]
    exact = brute_force(world.queries, world.days[0], world.ids[0], 0.9)
    got = as_dict(search_segments([tmp_path / "half"], world.quantizer, world.queries, T))
    assert got and all(abs(got[k] - exact[k]) < 1e-3 for k in got)


def test_bad_inputs_are_refused_with_the_reason(world: World, tmp_path: Path) -> None:
    v = world.days[0][:3]
    with pytest.raises(ValueError, match="one entry per kept pair"):
        write_segment(tmp_path / "s", world.quantizer, ["a", "b"], [DAYS[0]] * 3, v)
    with pytest.raises(ValueError, match="repeat"):
        write_segment(tmp_path / "s", world.quantizer, ["a", "a", "b"], [DAYS[0]] * 3, v)
    with pytest.raises(ValueError, match="d=128"):
        write_segment(
            tmp_path / "s", world.quantizer, ["a"], [DAYS[0]], unit_rows(np.ones((1, 128)))
        )
    with pytest.raises(ValueError, match="nprobe"):
        search_segments(world.segments, world.quantizer, world.queries, T, nprobe=NLIST + 1)
    with pytest.raises(FileNotFoundError, match="write_segment"):
        search_segments([tmp_path / "absent"], world.quantizer, world.queries, T)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_empty_segments_and_queries(world: World, tmp_path: Path) -> None:
    write_segment(tmp_path / "empty", world.quantizer, [], [], np.zeros((0, D), np.float32))
    assert segment_rows(tmp_path / "empty") == 0
    assert len(search_segments([tmp_path / "empty"], world.quantizer, world.queries, T)) == 0
    assert len(search_segments(world.segments, world.quantizer, world.queries[:0], T)) == 0
    assert len(search_segments([], world.quantizer, world.queries, T)) == 0


def _fields(m: SegmentMatches) -> tuple:
    return (
        m.query.tolist(),
        m.pair_id.to_pylist(),
        m.date.to_pylist(),
        m.similarity.tolist(),
        m.segment.tolist(),
        m.row.tolist(),
    )


def test_small_blocks_and_split_lists_give_the_same_matches_in_the_same_order(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Candidates are verified block by block and a list longer than a block is read in
    pieces (so memory follows the block, not the history): neither may change the answer."""
    queries = world.queries[::4]
    whole = search_segments(world.segments, world.quantizer, queries, T)
    assert len(whole) > 100
    blocks = list(search_segment_blocks(world.segments, world.quantizer, queries, T))
    monkeypatch.setattr(semantic_state, "_BLOCK_ROWS", 7)  # lists hold ~45 rows a segment
    monkeypatch.setattr(semantic_state, "_VERIFY_CHUNK", 5)
    assert _fields(search_segments(world.segments, world.quantizer, queries, T)) == _fields(whole)
    small = list(search_segment_blocks(world.segments, world.quantizer, queries, T))
    assert len(blocks) == 1 < 10 < len(small)
    for parts in (blocks, small):
        pairs = sorted(p for b in parts for p in zip(*_fields(b), strict=True))
        assert pairs == sorted(zip(*_fields(whole), strict=True))


def _mapped_kib(path: Path) -> int | None:
    """Resident KiB of this process's mapping of ``path`` (None: not mapped)."""
    resident, inside = None, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header line
                inside = len(fields) >= 6 and fields[5] == str(path)
            elif inside and fields[0] == "Rss:":
                resident = (resident or 0) + int(fields[1])
    return resident


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux /proc needed")
def test_gathering_exact_vectors_leaves_none_of_their_pages_mapped(world: World) -> None:
    """Mapped file pages count as the process's memory (VmHWM): a search that gathered the
    candidates' vectors from a mapping kept open grew by the history it touched."""
    reader = semantic_state._open_segment(world.segments[0])
    rows = np.arange(0, reader.info.rows, 3)
    with reader.vectors() as gather:
        got = gather(rows)
        path = reader.version_dir / VECTORS
        assert _mapped_kib(path) == 0
    np.testing.assert_array_equal(
        got, world.days[0][np.argsort(_lists(world, 0), kind="stable")][rows]
    )


def _lists(world: World, day: int) -> np.ndarray:
    return world.quantizer.nearest_lists(world.days[day], 1)[1][:, 0]


def test_ids_of_reads_the_rows_asked_for_from_a_many_batch_segment(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(semantic_state, "_COPY_ROWS", 500)  # merged ids come in small batches
    merged = tmp_path / "merged"
    merge_segments(world.segments, merged)
    reader = semantic_state._open_segment(merged)
    with pa.ipc.open_file(reader.version_dir / IDS) as ids_file:
        assert ids_file.num_record_batches > 10
    rows = np.sort(np.random.default_rng(5).integers(0, reader.info.rows, 700))
    rows = np.concatenate([[0, 0], rows, [reader.info.rows - 1]])
    assert reader.ids_of(rows).to_pylist() == reader.ids().take(pa.array(rows)).to_pylist()
    assert reader.ids_of(rows[:0]).num_rows == 0


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux /proc needed")
def test_a_merge_keeps_none_of_the_new_segments_pages_mapped(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new segment is filled through memory maps, whose pages count as the process's
    memory: without releasing them after each block a merge of 1.6M rows peaked at 4.2 GiB
    (482 MiB with it). After every block none of the written files' pages stay mapped."""
    monkeypatch.setattr(semantic_state, "_COPY_ROWS", 500)
    resident = []
    release = semantic_state._SegmentWriter.release

    def spy(writer) -> None:
        release(writer)
        resident.append(sum(_mapped_kib(writer.tmp / name) or 0 for name in (CODES, VECTORS)))

    monkeypatch.setattr(semantic_state._SegmentWriter, "release", spy)
    merged = tmp_path / "merged"
    merge_segments(world.segments, merged)
    assert len(resident) > 1 and set(resident) == {0}
    reader = semantic_state._open_segment(merged)
    assert reader.info.rows == sum(semantic_state.segment_rows(s) for s in world.segments)
