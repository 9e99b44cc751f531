"""`rag sync`: a collection mirrors a folder (added, updated, removed, unchanged, failed), an
interrupted sync leaves every document at one complete version, and `--watch` follows
changes in a subprocess until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest

from ingest.sync import FolderSync
from rag.service import RagService
from tests.ingest.helpers import make_broken_docx

pytestmark = pytest.mark.slow


def fill(folder: Path) -> None:
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    (folder / "a" / "x.md").write_text("# Kilns\n\nThe Orla kiln is fired on Tuesdays.")
    (folder / "b" / "x.md").write_text("# Mills\n\nThe Brannock mill grinds rye on Fridays.")
    (folder / "ferry.txt").write_text("The Corran ferry leaves every 40 minutes.")
    (folder / ".hidden.md").write_text("Hidden notes are never synced.")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "photo.bin").write_bytes(os.urandom(64))  # no type the engine reads


def test_a_collection_mirrors_a_folder(make_service: Any, tmp_path: Path) -> None:
    service: RagService = make_service()
    folder = tmp_path / "docs"
    fill(folder)
    mirror = FolderSync(service.documents, folder, "mirror")
    first = mirror.run()
    assert first.counts() == {"added": 3, "updated": 0, "removed": 0, "unchanged": 0,
                              "failed": 0}
    assert sorted(first.added) == ["a/x.md", "b/x.md", "ferry.txt"]
    assert first.skipped == ["photo.bin"]
    assert mirror.run().counts()["unchanged"] == 3  # nothing changed: nothing done
    first_id = mirror.current()["a/x.md"].id
    (folder / "a" / "x.md").write_text("# Kilns\n\nThe Orla kiln is fired on Thursdays.")
    (folder / "ferry.txt").unlink()
    (folder / "new.md").write_text("The Vell lighthouse keeper is Ansel Hurn.")
    make_broken_docx(folder / "minutes.docx")
    (folder / "gone.md").symlink_to(folder / "nowhere.md")  # a dangling link: unreadable
    second = mirror.run()
    assert second.counts() == {"added": 1, "updated": 1, "removed": 1, "unchanged": 1,
                               "failed": 2}
    assert (second.added, second.updated, second.removed) == (["new.md"], ["a/x.md"],
                                                               ["ferry.txt"])
    assert set(second.failed) == {"minutes.docx", "gone.md"}
    assert "unreadable" in second.failed["gone.md"] and "minutes.docx" in second.summary()
    current = mirror.current()
    assert sorted(current) == ["a/x.md", "b/x.md", "minutes.docx", "new.md"]
    assert current["a/x.md"].version == 2 and current["minutes.docx"].state == "failed"
    assert service.documents.page("default")[1] == 0  # other collections are not touched
    (folder / "a" / "x.md").write_text("# Kilns\n\nThe Orla kiln is fired on Tuesdays.")
    (folder / "minutes.docx").unlink()
    (folder / "gone.md").unlink()
    third = mirror.run()  # back to the first bytes: a third version; the failure removed
    assert (third.updated, third.removed, third.failed) == (["a/x.md"], ["minutes.docx"], {})
    back = mirror.current()["a/x.md"]  # the first version's id (the same bytes), numbered 3
    assert back.id == first_id and back.version == 3
    assert [(v.version, v.state) for v in service.documents.versions(back.id)] == [
        (2, "replaced"), (3, "indexed")]


def test_an_interrupted_update_leaves_the_old_version_current(
    make_service: Any, tmp_path: Path
) -> None:
    service: RagService = make_service()
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "guide.md").write_text("The Orla kiln is fired on Tuesdays.")
    mirror = FolderSync(service.documents, folder, "default")
    mirror.run()
    (folder / "guide.md").write_text("The Orla kiln is fired on Thursdays.")

    def interrupt(stage: str, done: int, total: int | None) -> None:
        if stage == "index":
            raise KeyboardInterrupt  # Ctrl-C as the new version is about to be swapped in

    with pytest.raises(KeyboardInterrupt):
        service.documents.ingest_file(folder / "guide.md", "guide.md", progress=interrupt)
    current = mirror.current()["guide.md"]
    assert current.version == 1 and current.state == "indexed"
    texts = [c.text for c in service.store.get_chunks(
        list(service.store.searchable_ids())).values()]
    assert texts == ["The Orla kiln is fired on Tuesdays."]
    assert mirror.run().counts()["updated"] == 1  # the next sync finishes the job
    assert mirror.current()["guide.md"].version == 2


def read_line(stream: IO[str], deadline: float) -> str:
    while time.monotonic() < deadline:
        line = stream.readline()
        if line:
            return line
    raise AssertionError("rag sync --watch said nothing in time")


def next_counts(stream: IO[str], timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        line = read_line(stream, deadline)
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]


def test_watch_follows_changes_until_ctrl_c(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.md").write_text("The Orla kiln is fired on Tuesdays.")
    env = {**os.environ, "RAG_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "rag.cli", "sync", str(folder), "--watch",
                             "--json"], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        assert next_counts(proc.stdout, 180)["added"] == 1
        time.sleep(0.5)  # the watcher starts after the first pass
        (folder / "notes.md").write_text("The Orla kiln is fired on Thursdays.")
        (folder / ".notes.md.swp").write_text("an editor's hidden file")
        assert next_counts(proc.stdout, 60) == {"added": 0, "updated": 1, "removed": 0,
                                                "unchanged": 0, "failed": 0}
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in out
