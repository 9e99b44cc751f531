"""FAISS index: add, search, remove, filters, IVF switch, atomic saves, manifest checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag.errors import IndexMismatch
from rag.index.vectors import FaissIndex, read_manifest


def unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make(tmp_path: Path, **kw: object) -> FaissIndex:
    return FaissIndex(tmp_path / "index", "model-a", 16, device="cpu", **kw)  # type: ignore[arg-type]


def test_add_search_remove(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vecs = unit(rng, 50)
    ids = np.arange(1000, 1050, dtype=np.int64)
    index = make(tmp_path)
    index.add(ids, vecs)
    scores, found = index.search(vecs[[7]], 3)
    assert found[0][0] == 1007 and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    index.remove(np.array([1007], dtype=np.int64))
    _, found = index.search(vecs[[7]], 3)
    assert 1007 not in found[0] and index.count == 49


def test_allowed_ids_filter(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vecs = unit(rng, 30)
    index = make(tmp_path)
    index.add(np.arange(30, dtype=np.int64), vecs)
    allowed = np.array([3, 4, 5], dtype=np.int64)
    _, found = index.search(vecs[[20]], 5, allowed)
    hits = [i for i in found[0] if i >= 0]
    assert sorted(hits) == [3, 4, 5]
    _, none = index.search(vecs[[20]], 5, np.zeros(0, dtype=np.int64))
    assert (none == -1).all()


def test_empty_index_search(tmp_path: Path) -> None:
    _, found = make(tmp_path).search(np.ones((1, 16), np.float32), 4)
    assert (found == -1).all()


def test_save_load_roundtrip_and_versions(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vecs = unit(rng, 20)
    index = make(tmp_path)
    index.add(np.arange(20, dtype=np.int64), vecs)
    m1 = index.save()
    m2 = index.save()
    assert (m1.version, m2.version) == (1, 2)
    files = sorted(p.name for p in (tmp_path / "index").iterdir())
    assert files == ["index-2.faiss", "manifest.json"]  # no temp files, no stale versions
    again = make(tmp_path)
    manifest = again.load()
    assert manifest is not None and manifest.count == 20 and again.version == 2
    _, found = again.search(vecs[[4]], 1)
    assert found[0][0] == 4


def test_manifest_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    index = make(tmp_path)
    index.add(np.arange(2, dtype=np.int64), unit(np.random.default_rng(0), 2))
    index.save()
    other = FaissIndex(tmp_path / "index", "model-b", 16, device="cpu")
    with pytest.raises(IndexMismatch, match="re-index|Re-index"):
        other.load()
    wrong_dim = FaissIndex(tmp_path / "index", "model-a", 32, device="cpu")
    with pytest.raises(IndexMismatch):
        wrong_dim.load()


def test_wrong_vector_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IndexMismatch):
        make(tmp_path).add(np.arange(2, dtype=np.int64), np.ones((2, 8), np.float32))


def test_switches_to_ivf_above_threshold_and_still_finds(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    vecs = unit(rng, 3000)
    ids = np.arange(3000, dtype=np.int64)
    index = make(tmp_path, approximate_threshold=1000, nprobe=64)
    index.add(ids, vecs)
    assert index.needs_approximate()
    index.rebuild([(ids[:1500], vecs[:1500]), (ids[1500:], vecs[1500:])])
    assert index.kind == "ivf" and index.count == 3000
    _, found = index.search(vecs[:50], 1)
    assert (found[:, 0] == ids[:50]).mean() > 0.9
    index.remove(ids[:10])
    assert index.count == 2990
    index.save()
    loaded = make(tmp_path, approximate_threshold=1000)
    loaded.load()
    assert loaded.kind == "ivf" and read_manifest(tmp_path / "index").kind == "ivf"  # type: ignore[union-attr]


def test_crash_while_saving_keeps_previous_version(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import rag.index.vectors as module

    index = make(tmp_path)
    index.add(np.arange(5, dtype=np.int64), unit(np.random.default_rng(5), 5))
    index.save()
    index.add(np.arange(5, 10, dtype=np.int64), unit(np.random.default_rng(6), 5))

    real = module.write_atomic

    def crash_on_manifest(path: Path, data: bytes) -> None:
        if path.name == "manifest.json":
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(module, "write_atomic", crash_on_manifest)
    with pytest.raises(OSError):
        index.save()
    monkeypatch.undo()
    again = make(tmp_path)
    again.load()
    assert again.count == 5 and again.version == 1


@pytest.mark.gpu
def test_gpu_search_matches_cpu(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    vecs = unit(rng, 500)
    gpu = FaissIndex(tmp_path / "g", "m", 16, device="cuda")
    assert gpu.use_gpu, "faiss sees no GPU: install the `gpu` extra"
    cpu = make(tmp_path)
    for index in (gpu, cpu):
        index.add(np.arange(500, dtype=np.int64), vecs)
    assert (gpu.search(vecs[:20], 5)[1] == cpu.search(vecs[:20], 5)[1]).all()


def test_index_identity_survives_reload_and_differs_between_dirs(tmp_path: Path) -> None:
    a = FaissIndex(tmp_path / "a", "m", 16, device="cpu")
    b = FaissIndex(tmp_path / "b", "m", 16, device="cpu")
    a.save()
    b.save()
    again = FaissIndex(tmp_path / "a", "m", 16, device="cpu")
    again.load()
    assert again.index_id == a.index_id != b.index_id


def test_a_swap_is_one_step_and_the_store_mark_is_saved(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    index = make(tmp_path)
    old = unit(rng, 3)
    index.add(np.array([1, 2, 3]), old)
    new = unit(rng, 2)
    seen: list[int] = []
    real_add = index.add

    def add(ids: np.ndarray, vectors: np.ndarray) -> None:
        seen.append(index._lock._is_owned())  # type: ignore[attr-defined]
        real_add(ids, vectors)

    index.add = add  # type: ignore[method-assign]
    index.swap(np.array([1, 2, 3]), np.array([7, 8]), new)
    assert seen == [True]  # added under the lock the removal held: no search in between
    _, hits = index.search(new, 1)
    assert hits[:, 0].tolist() == [7, 8] and index.count == 2
    index.store_mark = "2:8:15"
    index.save()
    again = make(tmp_path)
    again.load()
    saved = read_manifest(tmp_path / "index")
    assert again.store_mark == "2:8:15" and saved is not None and saved.store_mark == "2:8:15"


def test_an_ivf_search_for_a_narrow_reader_probes_enough_lists(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    vecs, ids = unit(rng, 8000), np.arange(8000, dtype=np.int64)
    index = make(tmp_path, approximate_threshold=1000, nprobe=4)
    index.rebuild([(ids, vecs)])
    assert index.kind == "ivf"
    allowed = np.sort(rng.choice(ids, 80, replace=False))  # a reader of 1% of the index
    queries = unit(rng, 20)
    _, found = index.search(queries, 5, allowed)
    exact = np.argsort(-(queries @ vecs[allowed].T), axis=1)[:, :5]  # (20, 5) into `allowed`
    recall = np.mean([len(set(f) & set(allowed[e])) / 5 for f, e in zip(found, exact,
                                                                           strict=True)])
    assert recall > 0.95 and set(found.ravel()) <= set(allowed)
