"""Fixtures of the API tests: one loaded engine over a small corpus, shared by the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.service import RagService
from rag.settings import Settings
from tests.api.helpers import ingest_corpus


@pytest.fixture(scope="session")
def corpus_service(
    tmp_path_factory: pytest.TempPathFactory, embedder: object, generator: object
) -> Iterator[RagService]:
    """The packaged models over three short documents; short answers keep the tests quick."""
    root: Path = tmp_path_factory.mktemp("api-engine")
    settings = Settings(data_dir=root / "data", max_new_tokens=24, top_k=3)
    service = RagService(settings, embedder=embedder, generator=generator)  # type: ignore[arg-type]
    service.load()
    ingest_corpus(service, root / "corpus")
    yield service
    service.store.close()
