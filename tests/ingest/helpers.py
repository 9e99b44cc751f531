"""Shared by the ingestion and document API tests: files of every format, worker processes,
polling jobs, and the exactly-once checks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import httpx

from ingest.intake import Intake, StagedFile
from rag.index.vectors import read_manifest
from rag.service import RagService
from rag.settings import Settings
from rag.stores.uploads import sha256_file

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("RAG_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# One fact per file, and the question that finds it.
FACTS = {
    "harbour.md": ("# Harbour\n\nThe harbour master of Port Quillon is called Ansel Varga.",
                   "Who is the harbour master of Port Quillon?", "Ansel Varga"),
    "museum.html": ("<html><body><h1>Museum</h1><p>The Kettering glass museum opens at 10:45 "
                    "on Sundays.</p></body></html>",
                    "When does the Kettering glass museum open on Sundays?", "10:45"),
    "orchard.txt": ("The Brindle orchard harvests 640 crates of pears every September.",
                    "How many crates of pears does the Brindle orchard harvest?", "640 crates"),
}


def make_docx(path: Path, text: str = "The ferry Albatross carries 412 passengers.") -> Path:
    from docx import Document as Docx

    doc = Docx()
    doc.add_heading("Fleet", level=1)
    doc.add_paragraph(text)
    doc.save(str(path))
    return path


def make_pdf(path: Path, pages: list[str]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    return path


def make_pptx(path: Path, text: str) -> Path:
    from pptx import Presentation

    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])
    slide.shapes.title.text = "Observatory"
    slide.placeholders[1].text = text
    deck.save(str(path))
    return path


def make_xlsx(path: Path, rows: list[tuple[str, str]]) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(("item", "value"))
    for row in rows:
        sheet.append(row)
    book.save(str(path))
    return path


def make_bomb(path: Path, megabytes: int = 64) -> Path:
    """A .docx-looking zip that expands ~1000x (zeros compress extremely well)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w") as member:
            for _ in range(megabytes):
                member.write(bytes(1 << 20))
    return path


def make_broken_docx(path: Path) -> Path:
    """Passes every upload check (a zip with Word parts) but cannot be parsed."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("word/document.xml", "<w:document>not closed")
    return path


def stage(intake: Intake, path: Path, name: str | None = None) -> StagedFile:
    """Put a file where the API's upload reader would have streamed it."""
    name = name or path.name
    target = intake.staging_dir() / name
    shutil.copyfile(path, target)
    return StagedFile(target, name, target.stat().st_size, sha256_file(target))


def make_mixed(folder: Path) -> dict[str, tuple[Path, str, str]]:
    """Files of six formats: name -> (path, question, expected answer fragment)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str, str]] = {}
    for name, (text, question, fact) in FACTS.items():
        (folder / name).write_text(text)
        out[name] = (folder / name, question, fact)
    out["fleet.docx"] = (make_docx(folder / "fleet.docx"),
                         "How many passengers does the ferry Albatross carry?", "412")
    out["observatory.pdf"] = (
        make_pdf(folder / "observatory.pdf",
                 ["The Halloran observatory telescope has a mirror of 2.4 metres.",
                  "Observing nights at Halloran are every Thursday in winter."]),
        "How large is the mirror of the Halloran observatory telescope?", "2.4 metres")
    out["depot.xlsx"] = (make_xlsx(folder / "depot.xlsx", [("Tramway depot capacity",
                                                            "58 trams")]),
                         "What is the tramway depot capacity?", "58 trams")
    return out


WORDS = ["river", "valley", "lantern", "copper", "harvest", "signal", "market", "garden", "ferry",
         "orchard", "bridge", "station", "meadow", "quarry", "mill", "tower", "harbour", "beacon",
         "archive", "ledger"]


def two_page_text(n: int) -> str:
    """About two pages (~1000 words) of distinct text for document number n."""
    paragraphs = []
    for p in range(10):
        words = [WORDS[(n * 7 + p * 3 + i * (i % 5 + 1)) % len(WORDS)] for i in range(95)]
        paragraphs.append(f"Document {n} paragraph {p}: " + " ".join(words) + ".")
    return "\n\n".join(paragraphs)


def long_text(chunks: int) -> str:
    """A text that cuts into roughly `chunks` windows of 200 tokens."""
    sentences = [f"Sentence {i} tells of the {WORDS[i % len(WORDS)]} near the "
                 f"{WORDS[(i * 7) % len(WORDS)]} in year {1800 + i % 200}."
                 for i in range(chunks * 12)]
    return " ".join(sentences)


def settings_for(data_dir: Path, models_dir: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=data_dir, converted_models_dir=models_dir, **overrides)


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment a `rag worker` subprocess needs to share this test's data and queue."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update({
        "RAG_DATA_DIR": str(settings.data_dir),
        "RAG_REDIS_URL": settings.redis_url or "",
        "RAG_DATABASE_URL": settings.database_url or "",
        "RAG_QUEUE": settings.queue,
        "RAG_QUEUE_NAME": settings.queue_name,
        "RAG_JOB_HEARTBEAT_S": str(settings.job_heartbeat_s),
        "RAG_JOB_ATTEMPTS": str(settings.job_attempts),
        "RAG_WRITER_LEASE_S": str(settings.writer_lease_s),
        "RAG_WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
    })
    if settings.converted_models_dir:
        env["RAG_CONVERTED_MODELS_DIR"] = str(settings.converted_models_dir)
    return env


class Workers:
    """`rag worker` processes started by a test, stopped (or killed) at the end."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        log = open(self.log_dir / f"worker{n}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-c", "from rag.cli import app; app()", "worker", *args],
            env=worker_env(self.settings), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        for n, proc in enumerate(self.procs):
            assert proc.poll() is None or proc.returncode == -signal.SIGKILL, (
                f"worker {n} exited with {proc.returncode}:\n{self.log(n)[-6000:]}")

    def log(self, n: int) -> str:
        return (self.log_dir / f"worker{n}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- worker {n}\n{self.log(n)[-4000:]}" for n in range(len(self.procs)))

    def wait_ready(self, timeout_s: float = 180) -> None:
        """Every live worker has loaded its model (it logs `ready`)."""
        deadline = time.monotonic() + timeout_s
        for n, proc in enumerate(self.procs):
            while "ready: queue" not in self.log(n):
                assert proc.poll() is None, f"worker {n} exited:\n{self.log(n)}"
                assert time.monotonic() < deadline, f"worker {n} not ready:\n{self.log(n)}"
                time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def workers(settings: Settings, log_dir: Path, count: int, *args: str) -> Iterator[Workers]:
    pool = Workers(settings, log_dir)
    try:
        for _ in range(count):
            pool.start(*args)
        pool.wait_ready()
        yield pool
    finally:
        pool.stop()


def unique_queue() -> str:
    return f"rag-test-{uuid.uuid4().hex[:10]}"


def wait_for(predicate: Callable[[], Any], timeout_s: float = 120, every_s: float = 0.1,
              what: str = "condition", diagnostics: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{diagnostics()}")
        time.sleep(every_s)


def check_exactly_once(service: RagService) -> None:
    """No duplicate chunks, and the FAISS index (saved, without PostgreSQL, where every process
    shares it; in memory, with it) holds exactly the searchable chunks."""
    dupes = service.store._query("SELECT document_id, ordinal, COUNT(*) FROM chunks "
                                 "GROUP BY document_id, ordinal HAVING COUNT(*) > 1")
    assert dupes == []
    searchable = set(service.store.searchable_ids().tolist())
    if not service.settings.database_url:
        manifest = read_manifest(service.settings.index_dir)
        saved = manifest.count if manifest else 0  # nothing was ever indexed: no index saved
        assert saved == len(searchable)
    service.index.refresh(force=True)
    index = service.index.index
    assert index is not None and index.count == len(searchable)
    assert set(faiss.vector_to_array(index._cpu.id_map).tolist()) == searchable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`rag serve` as a subprocess over one data directory."""

    def __init__(self, data_dir: Path, models_dir: Path, log: Path, **settings: str) -> None:
        """`settings`: more RAG_* variables (database_url="..." sets RAG_DATABASE_URL)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
        env.update(RAG_DATA_DIR=str(data_dir), RAG_CONVERTED_MODELS_DIR=str(models_dir),
                   RAG_RATE_LIMIT_PER_MINUTE="0", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
        env.update({f"RAG_{k.upper()}": v for k, v in settings.items()})
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from rag.cli import app; app()", "serve", "--port",
             str(self.port)], env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        wait_for(self.ready, 240, 0.3, "rag serve to be ready", lambda: log.read_text()[-4000:])

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-4000:]
        try:
            return httpx.get(f"{self.url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
