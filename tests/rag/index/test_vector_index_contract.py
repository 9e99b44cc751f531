"""The VectorIndex contract, passed by every implementation: FaissIndex in its exact (flat) and
its approximate (IVF) form, each searched on the CPU and on a GPU copy (`gpu`).

The IVF forms probe every list, so they too must find the exact neighbours. What they should
find is computed here by numpy brute force over the same vectors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from rag.index.vectors import FaissIndex, Ids, VectorIndex, Vectors

DIM = 16
THRESHOLD = 300  # every form's approximate_threshold; tests stay below it but one
NPROBE = 64  # above any nlist these sizes train (nlist <= n // 39): IVF probes every list
Scores = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Form:
    """One way of running FaissIndex, as a VectorIndex over a folder."""

    device: str
    approximate: bool
    tolerance: float  # on scores: a GPU may multiply in reduced precision

    def open(self, directory: Path) -> FaissIndex:
        index = FaissIndex(directory, "contract-model", DIM, approximate_threshold=THRESHOLD,
                           nprobe=NPROBE, device=self.device)
        # gpu forms run only where CUDA is (conftest): there a CPU-only faiss is a failure
        assert self.device != "cuda" or index.use_gpu, \
            "faiss sees no GPU: install the `gpu` extra (faiss-gpu)"
        return index

    def make(self, directory: Path) -> VectorIndex:
        """An empty index of this form."""
        index = self.open(directory)
        if self.approximate:  # trained IVF lists, then emptied
            train_ids = np.arange(2**40, 2**40 + THRESHOLD + 100, dtype=np.int64)
            index.rebuild([(train_ids, unit(99, len(train_ids)))])
            index.remove(train_ids)
        assert (index.kind, index.count) == ("ivf" if self.approximate else "flat", 0)
        return index

    def reopen(self, directory: Path) -> VectorIndex:
        """A fresh instance over what was saved in `directory`."""
        index = self.open(directory)
        assert index.load() is not None
        return index


FORMS = [
    pytest.param(Form("cpu", False, 1e-5), id="flat"),
    pytest.param(Form("cpu", True, 1e-5), id="ivf"),
    pytest.param(Form("cuda", False, 1e-3), id="gpu-flat", marks=pytest.mark.gpu),
    pytest.param(Form("cuda", True, 1e-3), id="gpu-ivf", marks=pytest.mark.gpu),
]


@pytest.fixture(params=FORMS)
def form(request: pytest.FixtureRequest) -> Form:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture()
def index(form: Form, tmp_path: Path) -> VectorIndex:
    return form.make(tmp_path / "index")


def unit(seed: int, n: int) -> Vectors:
    """(n, DIM) random unit vectors."""
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)  # type: ignore[no-any-return]


def chunk_ids(n: int, start: int = 0) -> Ids:
    """Sparse 64-bit ids, so that an id confused with a row number shows."""
    return (2**33 + 7919 * np.arange(start, start + n)).astype(np.int64)


class Truth:
    """What the index holds, kept beside it; brute-force search over it."""

    def __init__(self) -> None:
        self.vectors: dict[int, Vectors] = {}

    def add(self, ids: Ids, vectors: Vectors) -> None:
        self.vectors.update(zip(ids.tolist(), vectors, strict=True))

    def remove(self, ids: Iterable[int]) -> None:
        for i in ids:
            self.vectors.pop(int(i), None)

    def scores(self, query: Vectors, allowed: Ids | None) -> dict[int, float]:
        keep = self.vectors if allowed is None else {
            i: v for i, v in self.vectors.items() if i in set(allowed.tolist())}
        return {i: float(query @ v) for i, v in keep.items()}


def add(index: VectorIndex, truth: Truth, ids: Ids, vectors: Vectors) -> None:
    index.add(ids, vectors)
    truth.add(ids, vectors)


def assert_nearest(index: VectorIndex, truth: Truth, form: Form, queries: Vectors, k: int,
                   allowed: Ids | None = None) -> tuple[Scores, Ids]:
    """`index.search` gives, for each query, the k best of `truth` (by true inner product),
    best first, with their inner products as scores; then id -1 and a score below any real one."""
    scores, found = index.search(queries, k, allowed)
    assert scores.shape == found.shape == (len(queries), k)
    assert found.dtype == np.int64
    for query, row_scores, row_ids in zip(queries, scores, found, strict=True):
        true = truth.scores(query, allowed)
        hits = min(k, len(true))
        got = row_ids[:hits].tolist()
        assert -1 not in got and len(set(got)) == hits, row_ids
        assert set(got) <= set(true), "an id that is not there (or not allowed) was found"
        got_true = np.array([true[i] for i in got], dtype=np.float32)
        best = np.sort(np.array(list(true.values()), dtype=np.float32))[::-1][:hits]
        np.testing.assert_allclose(got_true, best, atol=form.tolerance)  # the k nearest
        np.testing.assert_allclose(row_scores[:hits], got_true, atol=form.tolerance)
        assert (np.diff(row_scores[:hits]) <= form.tolerance).all(), "not best first"
        assert (row_ids[hits:] == -1).all() and (row_scores[hits:] < -1.0).all()
    return scores, found


def test_add_then_search_finds_the_nearest(index: VectorIndex, form: Form) -> None:
    truth = Truth()
    vectors, ids = unit(1, 200), chunk_ids(200)
    add(index, truth, ids[:120], vectors[:120])
    add(index, truth, ids[120:], vectors[120:])  # adds accumulate
    assert index.count == 200
    queries = np.concatenate([unit(2, 8), vectors[[0, 77, 199]]])
    _, found = assert_nearest(index, truth, form, queries, 10)
    assert found[-3:, 0].tolist() == ids[[0, 77, 199]].tolist()  # a stored vector finds itself


def test_removed_ids_are_gone_and_count_drops(index: VectorIndex, form: Form) -> None:
    truth = Truth()
    vectors, ids = unit(3, 120), chunk_ids(120)
    add(index, truth, ids, vectors)
    gone = ids[::3]
    index.remove(gone)
    truth.remove(gone)
    assert index.count == 80
    _, found = assert_nearest(index, truth, form, vectors[::3][:10], 80)  # k = everything
    assert not set(found.ravel().tolist()) & set(gone.tolist())
    index.remove(chunk_ids(5, start=10_000))  # ids that are not there: nothing happens
    index.remove(np.zeros(0, dtype=np.int64))
    assert index.count == 80
    assert_nearest(index, truth, form, unit(4, 5), 10)


def test_allowed_restricts_the_results(index: VectorIndex, form: Form) -> None:
    truth = Truth()
    vectors, ids = unit(5, 150), chunk_ids(150)
    add(index, truth, ids, vectors)
    queries = unit(6, 6)
    allowed = np.concatenate([ids[10:150:7], chunk_ids(2, start=10_000)])  # 2 ids not there
    assert_nearest(index, truth, form, queries, 10, allowed)
    assert_nearest(index, truth, form, queries, 10, ids[[3, 40, 149]])  # fewer than k allowed
    scores, found = index.search(queries, 5, np.zeros(0, dtype=np.int64))
    assert found.shape == (6, 5) and (found == -1).all() and (scores < -1.0).all()


def test_k_larger_than_count(index: VectorIndex, form: Form) -> None:
    truth = Truth()
    add(index, truth, chunk_ids(7), unit(7, 7))
    assert_nearest(index, truth, form, unit(8, 4), 12)


def test_empty_index_finds_nothing(index: VectorIndex, form: Form) -> None:
    truth = Truth()
    assert index.count == 0
    assert_nearest(index, truth, form, unit(9, 3), 4)
    ids = chunk_ids(20)
    add(index, truth, ids, unit(10, 20))
    index.remove(ids)
    truth.remove(ids)
    assert index.count == 0
    assert_nearest(index, truth, form, unit(11, 3), 4)


def test_readding_an_id_after_removing_it_replaces_its_vector(
        index: VectorIndex, form: Form) -> None:
    truth = Truth()
    ids = chunk_ids(60)
    add(index, truth, ids, unit(12, 60))
    fresh = unit(13, 10)
    index.remove(ids[:10])  # the log follower's order: remove, then add
    add(index, truth, ids[:10], fresh)
    assert index.count == 60
    _, found = assert_nearest(index, truth, form, fresh, 5)
    assert found[:, 0].tolist() == ids[:10].tolist()


def test_remove_takes_every_copy_of_an_id_added_twice(index: VectorIndex, form: Form) -> None:
    truth = Truth()
    vectors, ids = unit(14, 30), chunk_ids(30)
    add(index, truth, ids, vectors)
    index.add(ids[:5], vectors[:5])
    index.remove(ids[:5])
    truth.remove(ids[:5])
    assert index.count == 25
    _, found = assert_nearest(index, truth, form, vectors[:5], 25)
    assert not set(found.ravel().tolist()) & set(ids[:5].tolist())


def test_one_vector_under_two_ids_is_found_under_both(index: VectorIndex, form: Form) -> None:
    truth = Truth()
    vectors = unit(15, 20)
    vectors[7] = vectors[3]
    add(index, truth, chunk_ids(20), vectors)
    scores, found = index.search(vectors[[3]], 2)
    assert set(found[0].tolist()) == set(chunk_ids(20)[[3, 7]].tolist())
    assert scores[0, 0] == pytest.approx(scores[0, 1], abs=form.tolerance)
    assert scores[0, 0] == pytest.approx(1.0, abs=form.tolerance)


def test_rebuild_replaces_the_contents(index: VectorIndex, form: Form) -> None:
    old = chunk_ids(40)
    index.add(old, unit(16, 40))
    truth = Truth()
    new_ids, new_vectors = chunk_ids(90, start=40), unit(17, 90)
    truth.add(new_ids, new_vectors)
    index.rebuild([(new_ids[:50], new_vectors[:50]), (new_ids[50:], new_vectors[50:])])
    assert index.count == 90
    _, found = assert_nearest(index, truth, form, unit(18, 6), 90)
    assert not set(found.ravel().tolist()) & set(old.tolist())
    index.rebuild([])
    assert index.count == 0
    assert_nearest(index, Truth(), form, unit(19, 2), 3)


def test_growing_past_the_exact_form_and_rebuilding(index: VectorIndex, form: Form) -> None:
    """What the log follower does after each batch: rebuild once the index asks for it."""
    truth = Truth()
    ids, vectors = chunk_ids(THRESHOLD + 20), unit(20, THRESHOLD + 20)
    for start in range(0, len(ids), 100):
        add(index, truth, ids[start:start + 100], vectors[start:start + 100])
    assert index.needs_approximate() is (not form.approximate)
    index.rebuild([(ids, vectors)])
    assert not index.needs_approximate() and index.count == THRESHOLD + 20
    assert_nearest(index, truth, form, np.concatenate([unit(21, 6), vectors[:4]]), 10)


def test_versions_and_save_round_trip(form: Form, tmp_path: Path) -> None:
    directory = tmp_path / "index"
    index = form.make(directory)
    truth = Truth()
    start = index.version
    index.mark_changed()
    assert index.version == start + 1
    add(index, truth, chunk_ids(80), unit(22, 80))
    index.log_seq = 42
    manifest = index.save()
    assert index.version == manifest.version > start + 1
    assert (manifest.count, manifest.log_seq) == (80, 42)
    queries = unit(23, 5)
    scores, found = assert_nearest(index, truth, form, queries, 10)

    again = form.reopen(directory)
    assert (again.count, again.version, again.log_seq) == (80, manifest.version, 42)
    again_scores, again_found = assert_nearest(again, truth, form, queries, 10)
    assert again_found.tolist() == found.tolist()
    np.testing.assert_allclose(again_scores, scores, atol=form.tolerance)
    assert again.save().version > manifest.version
