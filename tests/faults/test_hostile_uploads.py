"""The hostile corpus (tests/faults/hostile.py) uploaded over HTTP to an embedded `rag serve`:
each file is refused with a clear 4xx or ends as a failed job with a reason, or is indexed
harmlessly; memory and time stay bounded and the other documents keep answering."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from rag.service import RagService
from tests.api.helpers import CORPUS, ingest_corpus, serving
from tests.faults.hostile import FAILED, INDEXED, REFUSED, Hostile, corpus
from tests.ingest.helpers import check_exactly_once, wait_for

pytestmark = pytest.mark.slow

MAX_SECONDS_EACH = 60.0
MAX_RSS_GROWTH_MIB = 600


def rss_mib() -> int:
    """This process's resident memory now (the jobs run in it: embedded mode)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class RssWatch:
    """The highest resident memory seen, sampled every 20 ms in a thread."""

    def __init__(self) -> None:
        self.high = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.high = max(self.high, rss_mib())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.high


@dataclass
class Ended:
    hostile: Hostile
    status: int
    outcome: str  # REFUSED, FAILED or INDEXED
    reason: str
    seconds: float
    document_id: str | None = None


def multipart(filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart body with the filename as raw UTF-8 (NULs and all), as a hostile client
    would send it; httpx would percent-encode control characters."""
    boundary = uuid.uuid4().hex
    quoted = filename.replace('"', "%22").encode()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\""
            .encode() + quoted + b"\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            + content + f"\r\n--{boundary}--\r\n".encode())
    return body, f"multipart/form-data; boundary={boundary}"


def upload(client: TestClient[Litestar], hostile: Hostile) -> Ended:
    body, content_type = multipart(hostile.filename, hostile.content)
    started = time.perf_counter()
    response = client.post("/v1/documents", content=body, headers={"content-type": content_type})
    answer = response.json()
    if response.status_code != 202:
        reason = f"{answer['error']}: {answer['message']}"
        assert answer["hint"], answer
        return Ended(hostile, response.status_code, REFUSED, reason,
                     time.perf_counter() - started)
    [doc] = answer["documents"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{doc['job_id']}").json()
        return job if job["state"] in ("done", "failed", "cancelled") else None

    job = wait_for(finished, MAX_SECONDS_EACH * 2, 0.05, f"the job of {hostile.name}")
    outcome = INDEXED if job["state"] == "done" else FAILED
    return Ended(hostile, 202, outcome, job["error"] or "", time.perf_counter() - started,
                 doc["document_id"])


def indexed_text(service: RagService, doc_id: str) -> str:
    rows = service.store.db.execute("SELECT text FROM chunks WHERE document_id = ?",
                                    (doc_id,)).fetchall()
    return "\n".join(r[0] for r in rows)


def table(ended: list[Ended]) -> str:
    lines = [f"{'hostile file':36} {'status':>6} {'ended':8} {'s':>6}  reason"]
    for e in ended:
        lines.append(f"{e.hostile.name:36} {e.status:>6} {e.outcome:8} {e.seconds:6.2f}  "
                     f"{e.reason[:110]}")
    counts = {o: sum(e.outcome == o for e in ended) for o in (REFUSED, FAILED, INDEXED)}
    lines.append(f"{len(ended)} hostile files: " + ", ".join(f"{n} {o}" for o, n in
                                                              counts.items()))
    return "\n".join(lines)


def test_every_hostile_upload_ends_clearly_and_nothing_else_is_affected(
    make_service: Any, tmp_path: Path
) -> None:
    service: RagService = make_service(max_new_tokens=16, top_k=3)
    ingest_corpus(service, tmp_path / "corpus")
    hostile = corpus()
    with serving(service, max_new_tokens=16) as client:
        rss_before, watch = rss_mib(), RssWatch()
        ended = [upload(client, h) for h in hostile]
        rss_growth = watch.stop() - rss_before
        print("\n" + table(ended))

        wrong = [(e.hostile.name, e.hostile.ends, e.outcome, e.status, e.reason) for e in ended
                 if e.outcome != e.hostile.ends
                 or (e.hostile.status is not None and e.status != e.hostile.status)
                 or e.hostile.fragment not in e.reason]
        assert wrong == [], table(ended)
        assert all(400 <= e.status < 500 for e in ended if e.outcome == REFUSED)
        assert all(e.reason for e in ended if e.outcome == FAILED)
        slow = [(e.hostile.name, round(e.seconds, 1)) for e in ended
                if e.seconds > MAX_SECONDS_EACH]
        assert slow == [] and rss_growth < MAX_RSS_GROWTH_MIB, (slow, rss_growth)

        for e in ended:
            if e.outcome != INDEXED:
                continue
            assert e.document_id is not None
            text = indexed_text(service, e.document_id)
            assert all(p in text for p in e.hostile.present), (e.hostile.name, text[:300])
            assert not any(a in text for a in e.hostile.absent), (e.hostile.name, text[:300])
            doc = client.get(f"/v1/documents/{e.document_id}").json()
            if e.hostile.stored_name is not None:
                assert doc["filename"] == e.hostile.stored_name, doc["filename"]
            assert "/" not in doc["filename"] and "\\" not in doc["filename"]

        # Nothing else was affected: the first documents still answer, nothing escaped uploads/.
        listed = client.get("/v1/documents", params={"limit": 200}).json()
        assert listed["total"] == len(CORPUS) + sum(e.outcome != REFUSED for e in ended)
        asked = client.post("/v1/ask", json={"question": "Which platform does the Aldgate "
                                             "night train depart from?"})
        assert asked.status_code == 200 and asked.json()["citations"][0]["filename"] == "rail.txt"
        data = service.settings.data_dir
        assert not (data.parent / "etc").exists() and not list(data.rglob("evil.txt"))
        incoming = service.settings.uploads_dir / ".incoming"
        assert not incoming.exists() or list(incoming.iterdir()) == []
        check_exactly_once(service)
        print(f"resident memory grew {rss_growth} MiB at most over the corpus; slowest file "
              f"{max(e.seconds for e in ended):.2f} s")
