"""The data directory's disk full (a small tmpfs mounted by the test): uploads get 507 with a
clear message, nothing half-written stays, the service keeps answering from what is indexed,
and uploads are taken again once space is freed."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from ingest.jobs import job_store
from rag.service import RagService
from rag.settings import Settings
from tests.api.helpers import ingest_corpus, serving
from tests.ingest.helpers import wait_for

pytestmark = pytest.mark.slow

DISK_BYTES = 24 << 20


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs (needs root, as in the test containers)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); run as root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int = 0) -> Path:
    """Write a filler file until the disk refuses, then give back `leave_bytes`."""
    filler = disk / "filler"
    block = b"\xff" * (64 << 10)
    # unbuffered: a buffered file would try to write its refused rest again on close
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC
    if leave_bytes:
        os.truncate(filler, max(0, filler.stat().st_size - leave_bytes))
    return filler


def free_bytes(disk: Path) -> int:
    return shutil.disk_usage(disk).free


def stored(service: RagService) -> tuple[int, int, list[Path]]:
    """(documents, unfinished jobs, files under uploads/)."""
    uploads = service.settings.uploads_dir
    files = [p for p in uploads.rglob("*") if p.is_file()] if uploads.exists() else []
    jobs = job_store(service.settings)
    try:
        return service.store.list_documents()[1], len(jobs.unfinished()), sorted(files)
    finally:
        jobs.close()


def _ask(client: TestClient[Litestar]) -> dict[str, Any]:
    response = client.post("/v1/ask", json={"question": "When is the highest tide in Port Vell?"})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_uploads_to_a_full_disk_get_507_and_leave_nothing(
    small_disk: Path, embedder: Any, generator: Any, models_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(data_dir=small_disk / "data", converted_models_dir=models_dir,
                        max_new_tokens=16, top_k=3)
    service = RagService(settings, embedder=embedder, generator=generator)
    service.load()
    ingest_corpus(service, tmp_path / "corpus")
    with serving(service, max_new_tokens=16) as client:
        before = stored(service)
        filler = fill(small_disk)
        # Full to the last byte: the staging file cannot even start.
        small = [("file", ("ledger.txt", b"The Orwell ledger lists 77 barges in 1893."))]
        refused = client.post("/v1/documents", files=small)
        assert refused.status_code == 507, refused.text
        body = refused.json()
        assert body["error"] == "DiskFull" and "disk is full" in body["message"]
        assert "free space" in body["hint"] and "Nothing of this request was kept" in body["hint"]
        assert stored(service) == before

        # Room for a part of the file only: the upload is cut short half-way through the write.
        os.truncate(filler, filler.stat().st_size - (128 << 10))
        room = free_bytes(small_disk)
        big = ("survey.txt", b"The Harrow survey counted 31 windmills on the fen. " * 8_000)
        cut = client.post("/v1/documents", files=[("file", big)])
        assert cut.status_code == 507, cut.text
        assert stored(service) == before and free_bytes(small_disk) == room  # nothing kept

        # The service keeps answering from what is indexed meanwhile.
        assert client.get("/health").status_code == 200
        assert _ask(client)["citations"][0]["filename"] == "tides.md"
        assert client.get("/v1/documents").json()["total"] == before[0]

        filler.unlink()  # space is back: an upload is taken and indexed
        freed = time.monotonic()
        taken = client.post("/v1/documents", files=small)
        assert taken.status_code == 202, taken.text
        job_id = taken.json()["documents"][0]["job_id"]
        job = wait_for(lambda: (lambda j: j if j["state"] in ("done", "failed") else None)(
            client.get(f"/v1/jobs/{job_id}").json()), 300, 0.2, "the upload to be indexed")
        assert job["state"] == "done", job
        assert stored(service)[0] == before[0] + 1
        print(f"\ndisk full: 507 twice, nothing kept; accepted and indexed "
              f"{time.monotonic() - freed:.1f} s after space was freed")
    service.store.close()
