"""`rag worker` from the command line: it needs a queue and a store that answers, and
`--check` reports registration."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from rag.cli import app
from tests.ingest.helpers import REDIS_URL, unique_queue


def test_worker_without_redis_says_what_to_set() -> None:
    result = CliRunner().invoke(app, ["worker", "--burst"], env={"RAG_REDIS_URL": ""})
    assert result.exit_code == 2
    assert "needs a queue" in result.output and "RAG_REDIS_URL" in result.output
    assert "RAG_QUEUE=postgres" in result.output


def test_worker_names_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    env = {"RAG_DATABASE_URL": "postgresql://rag:s3cret@127.0.0.1:9/rag", "RAG_QUEUE": "postgres",
           "RAG_REDIS_URL": "", "RAG_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["worker", "--burst"], env=env)
    assert result.exit_code == 2
    assert "PostgreSQL at postgresql://rag:***@127.0.0.1:9/rag does not answer" in result.output
    assert "s3cret" not in result.output


def test_health_check_fails_when_no_worker_of_this_host_is_registered() -> None:
    env = {"RAG_REDIS_URL": REDIS_URL, "RAG_QUEUE_NAME": unique_queue()}
    assert CliRunner().invoke(app, ["worker", "--check"], env=env).exit_code == 1
