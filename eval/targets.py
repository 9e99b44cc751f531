"""What a suite runs against: the local engine (default) or a running API (`--url`).

Both ingest a corpus, answer questions as `rag.types.Answer` and may give a deeper retrieval
ranking than the answer's citations (the local engine does: top 10 straight from the retriever).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from eval.suites import CorpusDocument
from rag.settings import Settings
from rag.types import Answer, Turn

if TYPE_CHECKING:
    import httpx

    from rag.service import RagService

# Settings that may hold secrets are never written into a result.
SECRET_SETTINGS = frozenset({"api_keys", "api_keys_file", "openai_api_key", "redis_url",
                             "database_url", "view_secret", "widget_key"})
JOB_DONE, JOB_FAILED = "done", frozenset({"failed", "cancelled"})
UPLOAD_BATCH = 16

Advance = Callable[[int], None]


class EvalError(Exception):
    """The run cannot go on (a corpus that does not ingest, an unreachable API)."""


@dataclass(frozen=True)
class Retrieved:
    """One retrieved chunk, in rank order."""

    document_id: str
    filename: str
    chunk_id: int
    text: str
    score: float


class Target(Protocol):
    """Where questions are asked."""

    name: str

    def ingest(self, docs: Sequence[CorpusDocument], advance: Advance) -> dict[str, str]:
        """Ingest the corpus; returns corpus key -> the target's document id."""
        ...

    def ask(self, question: str, top_k: int | None, history: Sequence[Turn] = ()) -> Answer:
        """The answer to `question`, asked after the earlier turns `history`."""
        ...

    def retrieve(self, question: str, depth: int, history: Sequence[Turn] = ()
                 ) -> list[Retrieved] | None:
        """The top `depth` chunks, or None when the target cannot say (then citations rank)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings and models, for the result file."""
        ...


@contextmanager
def materialized(docs: Sequence[CorpusDocument]) -> Iterator[list[tuple[CorpusDocument, Path]]]:
    """Each document as a file: its own path, or its text written into a temp folder."""
    with tempfile.TemporaryDirectory(prefix="rag-eval-corpus-") as tmp:
        files = []
        for n, doc in enumerate(docs):
            if doc.path is not None:
                files.append((doc, doc.path))
                continue
            folder = Path(tmp) / f"{n // 1000:04d}"  # bounded folder sizes for big corpora
            folder.mkdir(exist_ok=True)
            path = folder / doc.filename
            path.write_text(doc.text or "", encoding="utf-8")
            files.append((doc, path))
        yield files


def public_settings(settings: Settings) -> dict[str, Any]:
    """Settings as JSON, without the ones that may hold secrets."""
    return settings.model_dump(mode="json", exclude=set(SECRET_SETTINGS))


def git_commit() -> str | None:
    """HEAD of the checkout this code runs from, "+dirty" when it has changes; None outside git."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


# --- the local engine ---------------------------------------------------------------------


class LocalTarget:
    """A `RagService` in this process over a data directory (fresh by default)."""

    name = "local"

    def __init__(self, service: RagService) -> None:
        self.service = service

    def ingest(self, docs: Sequence[CorpusDocument], advance: Advance) -> dict[str, str]:
        from rag.errors import RagError

        keys: dict[str, str] = {}
        with materialized(docs) as files:
            for doc, path in files:
                try:
                    document = self.service.documents.ingest_file(path, filename=doc.filename)
                except RagError as exc:
                    raise EvalError(f"Corpus document {doc.key!r} did not ingest: {exc}") from exc
                keys[doc.key] = document.id
                advance(1)
        return keys

    def ask(self, question: str, top_k: int | None, history: Sequence[Turn] = ()) -> Answer:
        from rag.ask.service import AskRequest

        return self.service.asking.ask(AskRequest(question, top_k, history=tuple(history)))

    def retrieve(self, question: str, depth: int, history: Sequence[Turn] = ()
                 ) -> list[Retrieved] | None:
        """The retriever's top `depth`, for a follow-up with the query the engine would use."""
        from rag.types import Query

        found = self.service.asking.retrieve(Query(question, depth), history)
        return [Retrieved(r.chunk.document_id, r.filename, r.chunk.id, r.chunk.text, r.score)
                for r in found]

    def describe(self) -> dict[str, Any]:
        s = self.service
        return {
            "settings": public_settings(s.settings),
            "models": {"embedding": s.settings.embedding_model, "generator": s.asking.model},
            "index_version": s.index.index.version if s.index.loaded else None,
            "chunks": s.documents.searchable_count(),
        }


@contextmanager
def local_target(settings: Settings, fresh: bool) -> Iterator[LocalTarget]:
    """A loaded local engine; with `fresh`, over a new temp data dir that is removed after."""
    from rag.service import RagService

    with ExitStack() as stack:
        if fresh:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="rag-eval-data-"))
            # Converted models stay where the configured data dir keeps them (fast starts).
            settings = settings.model_copy(update={
                "data_dir": Path(tmp), "converted_models_dir": settings.models_dir})
        service = RagService(settings)
        service.load()
        stack.callback(service.close)
        yield LocalTarget(service)


# --- a running API ------------------------------------------------------------------------


class HttpTarget:
    """The HTTP API: POST /v1/documents, GET /v1/jobs/{id}, POST /v1/ask."""

    def __init__(self, client: httpx.Client, poll_s: float = 0.5, job_timeout_s: float = 3600):
        self.client = client
        self.name = str(client.base_url)
        self.poll_s = poll_s
        self.job_timeout_s = job_timeout_s
        self._answers: list[Answer] = []

    def ingest(self, docs: Sequence[CorpusDocument], advance: Advance) -> dict[str, str]:
        keys: dict[str, str] = {}
        with materialized(docs) as files:
            for start in range(0, len(files), UPLOAD_BATCH):
                batch = files[start : start + UPLOAD_BATCH]
                for (doc, _), entry in zip(batch, self._upload(batch), strict=True):
                    self._wait(entry, doc)
                    keys[doc.key] = str(entry["document_id"])
                    advance(1)
        return keys

    def _upload(self, batch: list[tuple[CorpusDocument, Path]]) -> list[dict[str, Any]]:
        with ExitStack() as stack:
            files = [("files", (doc.filename, stack.enter_context(path.open("rb"))))
                     for doc, path in batch]
            response = self.client.post("/v1/documents", files=files)
        body = _json(response, (200, 201, 202))
        entries = body.get("documents")
        if not isinstance(entries, list) or len(entries) != len(batch):
            raise EvalError(f"POST /v1/documents answered {len(entries or [])} documents for "
                            f"{len(batch)} files.")
        return entries

    def _wait(self, entry: dict[str, Any], doc: CorpusDocument) -> None:
        """Poll the document's job until it is done; failure stops the run."""
        job = entry.get("job_id")
        if not job:  # already indexed: no job was queued
            return
        deadline = time.monotonic() + self.job_timeout_s
        while time.monotonic() < deadline:
            state = _json(self.client.get(f"/v1/jobs/{job}"), (200,))
            if state.get("state") == JOB_DONE:
                return
            if state.get("state") in JOB_FAILED:
                raise EvalError(f"Corpus document {doc.key!r} did not ingest: "
                                f"{state.get('error') or state.get('state')}")
            time.sleep(self.poll_s)
        raise EvalError(f"Corpus document {doc.key!r} was not ingested within "
                        f"{self.job_timeout_s:.0f} s.")

    def ask(self, question: str, top_k: int | None, history: Sequence[Turn] = ()) -> Answer:
        body: dict[str, Any] = {"question": question, "top_k": top_k, "collection": None,
                                "filters": {"document_ids": []}, "stream": False}
        if history:
            body["history"] = [{"question": t.question, "answer": t.answer} for t in history]
        answer = answer_from_api(_json(self.client.post("/v1/ask", json=body), (200,)))
        self._answers.append(answer)
        return answer

    def retrieve(self, question: str, depth: int, history: Sequence[Turn] = ()
                 ) -> list[Retrieved] | None:
        return None

    def describe(self) -> dict[str, Any]:
        last = self._answers[-1] if self._answers else None
        return {
            "settings": None,
            "models": {"generator": last.model if last else None},
            "index_version": last.index_version if last else None,
            "chunks": None,
        }


def http_client(
    url: str, key: str | None, timeout_s: float = 300.0,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """An HTTP client for the API, with the key as a bearer token."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, transport=transport,
                        timeout=httpx.Timeout(timeout_s, connect=10.0))


def _json(response: httpx.Response, ok: tuple[int, ...]) -> dict[str, Any]:
    """The JSON body of a successful response; an EvalError naming the API's message otherwise."""
    if response.status_code not in ok:
        try:
            body = response.json()
            detail = f"{body.get('message', '')} {body.get('hint', '')}".strip()
        except ValueError:
            detail = response.text[:300]
        raise EvalError(f"{response.request.method} {response.request.url.path} answered "
                        f"{response.status_code}: {detail}")
    data = response.json()
    if not isinstance(data, dict):
        raise EvalError(f"{response.request.url.path} answered JSON that is not an object.")
    return data


def answer_from_api(data: dict[str, Any]) -> Answer:
    """An `Answer` from the JSON of POST /v1/ask; an older server's body (no `mode`,
    `groundedness`, `evidence`, `sentences`, `generated_text`, `view_url`) gets the defaults.
    Any other field off the contract is an error."""
    try:
        short = data.get("short_answer")
        span = data.get("short_answer_span") or {}
        return Answer.from_dict({**data, "text": data["answer"],
                                 "citations": [_unlinked(c) for c in data["citations"]],
                                 "evidence": [_unlinked(q) for q in data.get("evidence", ())],
                                 "short_answer": {"text": short, **span} if short else None})
    except (KeyError, TypeError, AttributeError) as exc:
        raise EvalError(f"POST /v1/ask answered an unexpected body: {exc}") from exc


def _unlinked(item: dict[str, Any]) -> dict[str, Any]:
    """A citation or quote without its `view_url` (a link for people, not part of `Answer`)."""
    return {k: v for k, v in item.items() if k != "view_url"}

