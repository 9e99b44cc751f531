"""FAISS vector index with 64-bit chunk ids, saved atomically with a manifest.

Inner product over unit vectors (cosine). Flat (exact) up to a size threshold, IVF above it.
Searches run on a GPU copy when faiss sees a GPU; the CPU index stays the master for saves.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
import numpy.typing as npt

from rag.errors import IndexMismatch, IndexUnreadable
from rag.files import write_atomic

log = logging.getLogger(__name__)

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    embedding_model: str
    dimension: int
    version: int
    count: int
    kind: str
    file: str
    # Random per data dir, so two deployments sharing one Redis never share cached answers.
    index_id: str = ""
    # With PostgreSQL: the last change-log entry this saved index holds (0: none followed).
    log_seq: int = 0
    # The chunk store's `searchable_mark()` this index was saved for ("": not recorded).
    store_mark: str = ""


class VectorIndex(Protocol):
    """Nearest-neighbour search over unit vectors keyed by chunk id, scored by inner product.

    `add` keeps an id given twice twice: to replace a vector, `remove` its id first (`remove`
    takes every copy and ignores ids that are not there). Every implementation passes the
    contract in tests/rag/index/test_vector_index_contract.py.
    """

    # The last change-log entry (PostgreSQL) the contents hold, 0 for none; `save` keeps it.
    log_seq: int

    @property
    def count(self) -> int: ...

    @property
    def version(self) -> int:
        """Bumped on every change: what retrieval's BM25 index and cache keys follow."""
        ...

    @property
    def index_id(self) -> str:
        """Random per data directory: cached answers of two deployments never mix."""
        ...

    @property
    def kind(self) -> str:
        """The form it is in now (exact `flat`, approximate `ivf`, ...)."""
        ...

    def add(self, ids: Ids, vectors: Vectors) -> None: ...

    def remove(self, ids: Ids) -> None: ...

    def rebuild(self, batches: Iterable[tuple[Ids, Vectors]]) -> None:
        """Replace the whole contents with these (ids, vectors) batches, in the best form."""
        ...

    def needs_approximate(self) -> bool:
        """Whether it has outgrown its exact form, so that a `rebuild` would pay."""
        ...

    def mark_changed(self) -> None:
        """Bump `version` for changes made in memory, without saving them."""
        ...

    def save(self) -> Manifest:
        """Persist the contents and `log_seq` as a new `version`."""
        ...

    def search(
        self, queries: Vectors, k: int, allowed: Ids | None = None
    ) -> tuple[npt.NDArray[np.float32], Ids]: ...


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def read_manifest(directory: Path) -> Manifest | None:
    """The saved manifest, None when there is none; IndexUnreadable when it is corrupt."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = Manifest(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:  # not JSON, cut short, fields missing
        raise IndexUnreadable(f"The index manifest {path} cannot be read: {exc}.",
                              "Run `rag reindex` to rebuild the index from the chunk store "
                              "(`rag serve` does it by itself at start).") from exc
    return manifest


class FaissIndex:
    """A FAISS index held in memory, persisted under `directory`."""

    def __init__(
        self,
        directory: Path,
        embedding_model: str,
        dimension: int,
        approximate_threshold: int = 50_000,
        nprobe: int = 16,
        device: str = "auto",
    ) -> None:
        self.directory = directory
        self.embedding_model = embedding_model
        self.dimension = dimension
        self.approximate_threshold = approximate_threshold
        self.nprobe = nprobe
        self.use_gpu = device != "cpu" and gpu_count() > 0
        if device == "cuda" and not self.use_gpu:
            log.warning("RAG_INDEX_DEVICE=cuda but faiss sees no GPU; searching on the CPU")
        self.version = 0
        self.index_id = uuid.uuid4().hex
        self.log_seq = 0
        self.store_mark = ""  # what `save` records: the store's searchable_mark() it matches
        self._lock = threading.RLock()
        self._cpu: Any = self._flat()
        self._gpu: Any = None

    # Building

    def _flat(self) -> Any:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension))

    def _ivf(self, sample: Vectors) -> Any:
        nlist = max(1, min(int(4 * math.sqrt(len(sample))), len(sample) // 39))
        quantizer = faiss.IndexFlatIP(self.dimension)
        index = faiss.IndexIVFFlat(quantizer, self.dimension, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.nprobe = self.nprobe
        return index

    @property
    def kind(self) -> str:
        return "ivf" if isinstance(self._cpu, faiss.IndexIVF) else "flat"

    @property
    def count(self) -> int:
        return int(self._cpu.ntotal)

    def add(self, ids: Ids, vectors: Vectors) -> None:
        if len(ids) == 0:
            return
        self._check_dim(vectors)
        with self._lock:
            self._cpu.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                   np.ascontiguousarray(ids, dtype=np.int64))
            self._gpu = None

    def remove(self, ids: Ids) -> None:
        if len(ids) == 0:
            return
        with self._lock:
            self._cpu.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))
            self._gpu = None

    def swap(self, remove: Ids, ids: Ids, vectors: Vectors) -> None:
        """Remove some ids and add others in one step: a search sees both or neither."""
        if len(ids):
            self._check_dim(vectors)
        with self._lock:
            self.remove(remove)
            self.add(ids, vectors)

    def rebuild(self, batches: Iterable[tuple[Ids, Vectors]]) -> None:
        """Replace the contents with the given vectors; IVF when above the threshold."""
        ids_parts, vec_parts = [], []
        for ids, vectors in batches:
            ids_parts.append(ids)
            vec_parts.append(vectors)
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int64)
        vectors = (np.concatenate(vec_parts) if vec_parts
                   else np.zeros((0, self.dimension), dtype=np.float32))
        with self._lock:
            if len(ids) > self.approximate_threshold:
                rng = np.random.default_rng(0)
                sample = vectors[rng.choice(len(vectors), min(len(vectors), 100_000), False)]
                fresh = self._ivf(sample)
            else:
                fresh = self._flat()
            if len(ids):
                self._check_dim(vectors)
                fresh.add_with_ids(vectors, ids)
            self._cpu, self._gpu = fresh, None

    def mark_changed(self) -> None:
        """A new version in memory (cache keys and BM25 follow it) without saving it yet."""
        with self._lock:
            self.version += 1

    def needs_approximate(self) -> bool:
        return self.kind == "flat" and self.count > self.approximate_threshold

    def _check_dim(self, vectors: Vectors) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise IndexMismatch(
                f"Vectors of shape {vectors.shape} do not fit an index of dimension "
                f"{self.dimension}.",
                "Re-index with `rag reindex` after changing the embedding model.",
            )

    # Searching

    def search(
        self, queries: Vectors, k: int, allowed: Ids | None = None
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """Scores and ids, each (len(queries), k); missing hits have id -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        with self._lock:
            if self.count == 0 or (allowed is not None and len(allowed) == 0):
                return (np.full((len(queries), k), -np.inf, dtype=np.float32),
                        np.full((len(queries), k), -1, dtype=np.int64))
            if allowed is None and self.use_gpu:
                return self._gpu_index().search(queries, k)  # type: ignore[no-any-return]
            return self._cpu.search(queries, k, params=self._params(allowed))  # type: ignore[no-any-return]

    def _params(self, allowed: Ids | None) -> Any:
        selector = (faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
                    if allowed is not None else None)
        params: Any
        if isinstance(self._cpu, faiss.IndexIVF):
            params = faiss.SearchParametersIVF()
            params.nprobe = self.nprobe
            if allowed is not None:  # a reader of a tenth of the index probes ten times the
                # lists, so its k hits are as near as an unfiltered search's (capped at all)
                share = max(len(allowed), 1) / max(self.count, 1)
                params.nprobe = min(self._cpu.nlist, math.ceil(self.nprobe / min(share, 1.0)))
        elif selector is not None:
            params = faiss.SearchParameters()
        else:
            return None
        if selector is not None:
            params.sel = selector
        return params

    def _gpu_index(self) -> Any:
        if self._gpu is None:
            resources = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(resources, 0, self._cpu)
            self._gpu_resources = resources
        return self._gpu

    # Persistence

    def save(self) -> Manifest:
        """Write a new version: index file first, then the manifest that names it."""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            version = max(self.version, self._disk_version()) + 1
            name = f"index-{version}.faiss"
            write_atomic(self.directory / name, faiss.serialize_index(self._cpu).tobytes())
            manifest = Manifest(self.embedding_model, self.dimension, version, self.count,
                                self.kind, name, self.index_id, self.log_seq, self.store_mark)
            write_atomic(self.directory / MANIFEST, json.dumps(asdict(manifest)).encode())
            self.version = version
            self._remove_stale(name)
            return manifest

    def _disk_version(self) -> int:
        try:
            manifest = read_manifest(self.directory)
        except IndexUnreadable:  # a corrupt manifest is being replaced by this save
            return 0
        return manifest.version if manifest else 0

    def _remove_stale(self, keep: str) -> None:
        for path in self.directory.glob("index-*.faiss"):
            if path.name != keep:
                path.unlink(missing_ok=True)

    def load(self) -> Manifest | None:
        """Read the saved index, or keep an empty one when none is saved yet."""
        manifest = read_manifest(self.directory)
        if manifest is None:
            return None
        if manifest.embedding_model != self.embedding_model or manifest.dimension != self.dimension:
            raise IndexMismatch(
                f"The index in {self.directory} was built with {manifest.embedding_model!r} "
                f"({manifest.dimension} dims) but the configured embedding model is "
                f"{self.embedding_model!r} ({self.dimension} dims).",
                "Re-index: run `rag reindex`, or set RAG_EMBEDDING_MODEL back.",
            )
        path = self.directory / manifest.file
        try:
            data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
            index = faiss.deserialize_index(data)
        except (OSError, RuntimeError) as exc:  # missing, truncated or overwritten
            raise IndexUnreadable(
                f"The index file {path} cannot be read: {exc}",
                "Run `rag reindex` to rebuild it from the chunk store "
                "(`rag serve` does it by itself at start).",
            ) from exc
        if index.d != manifest.dimension or index.ntotal != manifest.count:
            raise IndexUnreadable(
                f"The index file {path} holds {index.ntotal} vectors of {index.d} dims; its "
                f"manifest says {manifest.count} of {manifest.dimension}.",
                "Run `rag reindex` to rebuild it from the chunk store.",
            )
        with self._lock:
            if isinstance(index, faiss.IndexIVF):
                index.nprobe = self.nprobe
            self._cpu, self._gpu, self.version = index, None, manifest.version
            self.log_seq, self.store_mark = manifest.log_seq, manifest.store_mark
            self.index_id = manifest.index_id or str(self.directory.resolve())
        return manifest
