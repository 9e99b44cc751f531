"""`rag worker` from the command line: it needs Redis, and `--check` reports registration."""

from __future__ import annotations

from typer.testing import CliRunner

from rag.cli import app
from tests.ingest.helpers import REDIS_URL, unique_queue


def test_worker_without_redis_says_what_to_set() -> None:
    result = CliRunner().invoke(app, ["worker", "--burst"], env={"RAG_REDIS_URL": ""})
    assert result.exit_code == 2
    assert "needs Redis" in result.output and "RAG_REDIS_URL" in result.output


def test_health_check_fails_when_no_worker_of_this_host_is_registered() -> None:
    env = {"RAG_REDIS_URL": REDIS_URL, "RAG_QUEUE_NAME": unique_queue()}
    assert CliRunner().invoke(app, ["worker", "--check"], env=env).exit_code == 1
