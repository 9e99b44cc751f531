"""Shared fixtures: real models loaded once per session, data in temp folders, real Redis."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite is written against the fast packaged generator, whatever the default is; tests of
# another model name it in their own settings.
os.environ["RAG_GENERATOR_MODEL"] = "smollm2-135m-instruct"
# ... in float32, so its greedy answers (and the gate baselines) are the same on CPUs with and
# without bfloat16, which `auto` picks where the CPU has it; tests of bfloat16 name it.
os.environ["RAG_GENERATOR_DTYPE"] = "float32"

REDIS_URL = os.environ.get("RAG_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# A server where tests may create (and drop) databases of their own.
PG_URL = os.environ.get("RAG_TEST_DATABASE_URL", "postgresql://127.0.0.1:5432/test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests run only where CUDA is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted models are shared by every test's data dir (converting takes ~20 s)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    from rag.embedding import SentenceTransformerEmbedder
    from rag.settings import Settings

    e = SentenceTransformerEmbedder(Settings())
    e.load()
    return e


@pytest.fixture(scope="session")
def generator(models_dir: Path):  # type: ignore[no-untyped-def]
    """The fast packaged generator (whatever the default is), converted once per session into
    `models_dir`."""
    from rag.generation.base import build_generator
    from rag.generation.packaged import FAST_GENERATOR
    from rag.settings import Settings

    g = build_generator(Settings(data_dir=models_dir.parent, converted_models_dir=models_dir,
                                 generator_model=FAST_GENERATOR))
    g.load()
    return g


@pytest.fixture(scope="session")
def plain_model(generator):  # type: ignore[no-untyped-def]
    """The generator's model loaded in this process with stock layers (the engine runs its own
    copy in a child process): for plain `model.generate` and the scheduler's own tests."""
    from rag.generation.model_files import load_causal_lm

    return load_causal_lm(generator.model_dir, "auto", os.environ["RAG_GENERATOR_DTYPE"])


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    """A new, empty PostgreSQL database; its URL. Dropped afterwards, connections and all."""
    from rag.errors import StoreUnavailable
    from rag.stores.postgres import scratch_database

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_database(PG_URL, "rag_test"))
        except StoreUnavailable as exc:
            pytest.fail(f"{exc.message} Start it (make test does).")
        yield url


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A throw-away PostgreSQL database for one test."""
    with throwaway_database() as url:
        yield url


@pytest.fixture()
def redis_client() -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: start it (make test does)")
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture()
def make_service(tmp_path: Path, embedder, generator, models_dir):  # type: ignore[no-untyped-def]
    """Build a loaded RagService over a fresh data dir, sharing the session's models."""
    from rag.service import RagService
    from rag.settings import Settings

    made = []

    def make(**overrides: object) -> object:
        settings = Settings(data_dir=tmp_path / f"data{len(made)}",  # type: ignore[arg-type]
                            converted_models_dir=models_dir, **overrides)
        service = RagService(settings, embedder=embedder, generator=generator)
        service.load()
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


@pytest.fixture(params=["embedded", "redis", "postgres"])
def queued_service(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """An engine whose ingestion jobs wait in this process, in SAQ on Redis or in SAQ on
    PostgreSQL (the database before the service, so the service closes first)."""
    from tests.ingest.helpers import unique_queue

    overrides: dict[str, object] = {}
    if request.param == "redis":
        request.getfixturevalue("redis_client")
        overrides = {"redis_url": REDIS_URL, "queue_name": unique_queue()}
    elif request.param == "postgres":
        overrides = {"database_url": request.getfixturevalue("pg_url"), "queue": "postgres",
                     "queue_name": unique_queue()}
    return request.getfixturevalue("make_service")(**overrides)
