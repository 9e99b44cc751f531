"""Wiring: the one place that builds the engine's parts, loads them and closes them.

The parts, each with one job, are what callers use:
- `documents` (`rag.documents.indexer.DocumentIndexer`): ingest, process, delete, reindex;
- `asking` (`rag.ask.service.AskService`): answer questions;
- `conversations` (`rag.ask.conversations.Conversations`): list, show, forget, rate;
- `index` (`rag.index.live.LiveIndex`): this process's vector index, kept current;
- `health()` and `figures()`: the engine's state, for readiness checks and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from rag.ask.conversations import Conversations
from rag.ask.service import AskService
from rag.documents.indexer import DocumentIndexer
from rag.documents.sources import Sources
from rag.embedding import Embedder, build_embedder
from rag.generation.base import Generator, build_generator
from rag.index.live import IndexStatus, LiveIndex
from rag.settings import Settings
from rag.stores.chunks import ChunkStore, build_store
from rag.stores.conversations import build_conversations
from rag.stores.response_cache import ResponseCache, build_cache
from rag.stores.uploads import Uploads, build_uploads


@dataclass(frozen=True)
class Health:
    """The engine's dependencies as they are now."""

    index: IndexStatus
    redis: bool | None  # None: no Redis configured


@dataclass(frozen=True)
class Figures:
    """What /metrics reports of the engine."""

    index_vectors: int
    index_version: int
    generator: dict[str, float]


class RagService:
    """The engine behind the CLI, the API and the worker."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder | None = None,
        generator: Generator | None = None,
    ) -> None:
        """Cheap: builds parts; `load()` does the heavy work. Parts may be shared in-process."""
        s = self.settings = settings
        self.store: ChunkStore = build_store(s)
        self.uploads: Uploads = build_uploads(s)
        self.embedder: Embedder = embedder or build_embedder(s)
        self.generator: Generator = generator or build_generator(s)
        self.cache: ResponseCache = build_cache(s.redis_url, s.cache_size, s.cache_ttl_s)
        self.conversations = Conversations(build_conversations(s), s.max_history_turns)
        self.index = LiveIndex(s, self.store)
        self.documents = DocumentIndexer(s, self.store, self.uploads, self.embedder,
                                         self.index, self.cache)
        self.sources = Sources(self.store, self.uploads)  # quotes shown in their source
        self.asking = AskService(s, self.store, self.index, self.embedder, self.generator,
                                 self.cache, self.conversations)
        self.loaded = False

    def load(self, generator: bool = True, fresh_index: bool = False, follow: bool = True) -> None:
        """Open the stores, load the models and the index (rebuilt from the store where they
        disagree).

        `fresh_index` skips the saved index (for `reindex` after an embedding-model change).
        With PostgreSQL, `follow` builds this process's own index and keeps it current from
        the change log; a worker (`follow=False`) writes to the store only and has none.
        `generator=False` leaves the answering model unloaded (a worker needs none).
        """
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store.open()
        self.uploads.open()
        self.conversations.store.open()
        self.embedder.load()
        self.documents.load()
        self.index.load(self.embedder.dimension, fresh_index, follow)
        self.asking.load()
        if generator:
            self.generator.load()
        self.loaded = True

    def close(self) -> None:
        """Stop following the log (saving the index), close the stores."""
        self.index.close()
        self.store.close()
        self.conversations.store.close()

    def figures(self) -> Figures:
        """The index's size and version (0 before it loads) and the generator's counters."""
        loaded = self.index.loaded
        return Figures(self.index.index.count if loaded else 0,
                       self.index.index.version if loaded else 0, self.generator.stats())

    def health(self) -> Health:
        """The index's state and, with Redis configured, whether it answers (blocking)."""
        return Health(self.index.status(), self.cache.ping() if self.settings.redis_url else None)
