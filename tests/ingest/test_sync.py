"""`rag sync`: a collection mirrors a folder (added, updated, removed, unchanged, failed), an
interrupted sync leaves every document at one complete version, and `--watch` follows
changes in a subprocess until Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest
from rich.console import Console

from ingest.sync import FolderSync
from ingest.sync_command import SyncOptions, stop_on_signals, sync_command
from rag.documents.indexer import DocumentIndexer
from rag.errors import InvalidInput
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
    for temp in ("~$minutes.docx", "ferry.txt~", "draft.md.swp"):  # office and editor files
        (folder / temp).write_text("The Corran ferry leaves every 10 minutes.")
    (folder / "a" / "back").symlink_to(folder)  # a link loop: the folder is synced once
    outside = folder.parent / "outside"
    outside.mkdir()
    (outside / "tide.md").write_text("High tide at Kell Point is at 06:10 today.")
    (folder / "linked").symlink_to(outside)  # a linked folder is followed


def test_a_collection_mirrors_a_folder(make_service: Any, tmp_path: Path) -> None:
    service: RagService = make_service()
    folder = tmp_path / "docs"
    fill(folder)
    mirror = FolderSync(service.documents, folder, "mirror")
    first = mirror.run()
    assert first.counts() == {"added": 4, "updated": 0, "removed": 0, "unchanged": 0,
                              "failed": 0}
    assert sorted(first.added) == ["a/x.md", "b/x.md", "ferry.txt", "linked/tide.md"]
    assert first.skipped == {"a/back/": "a folder already synced through a link",
                             "draft.md.swp": "a temporary file", "ferry.txt~": "a temporary file",
                             "photo.bin": "not a supported type",
                             "~$minutes.docx": "a temporary file"}
    assert "5 skipped (1 a folder already synced through a link" in first.summary()
    assert mirror.run().counts()["unchanged"] == 4  # nothing changed: nothing done
    first_id = mirror.current()["a/x.md"].id
    (folder / "a" / "x.md").write_text("# Kilns\n\nThe Orla kiln is fired on Thursdays.")
    (folder / "ferry.txt").unlink()
    (folder / "new.md").write_text("The Vell lighthouse keeper is Ansel Hurn.")
    make_broken_docx(folder / "minutes.docx")
    (folder / "gone.md").symlink_to(folder / "nowhere.md")  # a dangling link: unreadable
    second = mirror.run()
    assert second.counts() == {"added": 1, "updated": 1, "removed": 1, "unchanged": 2,
                               "failed": 2}
    assert (second.added, second.updated, second.removed) == (["new.md"], ["a/x.md"],
                                                               ["ferry.txt"])
    assert set(second.failed) == {"minutes.docx", "gone.md"}
    assert "unreadable" in second.failed["gone.md"] and "minutes.docx" in second.summary()
    current = mirror.current()
    assert sorted(current) == ["a/x.md", "b/x.md", "linked/tide.md", "minutes.docx", "new.md"]
    assert current["a/x.md"].version == 2 and current["minutes.docx"].state == "failed"
    assert service.documents.page("default")[1] == 0  # other collections are not touched
    stamp = current["minutes.docx"].updated_at
    again = mirror.run()  # the same broken bytes are not processed again, still failed
    assert again.failed["minutes.docx"] == second.failed["minutes.docx"]
    assert mirror.current()["minutes.docx"].updated_at == stamp
    (folder / "a" / "x.md").write_text("# Kilns\n\nThe Orla kiln is fired on Tuesdays.")
    (folder / "minutes.docx").unlink()
    (folder / "gone.md").unlink()
    third = mirror.run()  # back to the first bytes: a third version; the failure removed
    assert (third.updated, third.removed, third.failed) == (["a/x.md"], ["minutes.docx"], {})
    back = mirror.current()["a/x.md"]  # the first version's id (the same bytes), numbered 3
    assert back.id == first_id and back.version == 3
    assert [(v.version, v.state) for v in service.documents.versions(back.id)] == [
        (2, "replaced"), (3, "indexed")]


def searchable_texts(service: RagService) -> list[str]:
    return sorted(c.text for c in service.store.get_chunks(
        list(service.store.searchable_ids())).values())


def test_documents_are_identified_by_content(make_service: Any, tmp_path: Path) -> None:
    """A copy of another document's bytes fails with that reason on every pass (it is never
    'unchanged' nor 'added' without appearing); a renamed file moves to its new name."""
    service: RagService = make_service()
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("The Orla kiln is fired on Tuesdays.")
    (folder / "b.md").write_text("The Orla kiln is fired on Tuesdays.")
    (folder / "c.md").write_text("The Brannock mill grinds rye on Fridays.")
    (folder / "d.md").write_text("The Corran ferry leaves every 40 minutes.")
    (tmp_path / "elsewhere.md").write_text("The Corran ferry leaves every 40 minutes.")
    service.documents.ingest_file(tmp_path / "elsewhere.md", "elsewhere.md", "other")
    mirror = FolderSync(service.documents, folder, "mirror")
    first = mirror.run()
    assert (first.added, first.unchanged) == (["a.md", "c.md"], [])
    assert first.failed == {
        "b.md": "same bytes as a.md in collection mirror; documents are identified by content",
        "d.md": "same bytes as elsewhere.md in collection other; documents are identified "
                "by content"}
    (folder / "a.md").write_text("The Orla kiln is fired on Thursdays.")
    second = mirror.run()
    assert second.updated == ["a.md"] and second.unchanged == ["c.md"]
    assert second.failed["b.md"].startswith("same bytes as an earlier version of a.md")
    assert "d.md" in second.failed and sorted(mirror.current()) == ["a.md", "c.md"]
    (folder / "c.md").rename(folder / "mill.md")  # removed first, so its bytes are free
    third = mirror.run()
    assert (third.removed, third.added) == (["c.md"], ["mill.md"])
    assert "The Brannock mill grinds rye on Fridays." in searchable_texts(service)


def test_a_pass_never_removes_most_of_a_collection_unasked(
    make_service: Any, tmp_path: Path
) -> None:
    service: RagService = make_service()
    folder = tmp_path / "docs"
    folder.mkdir()
    for n, town in enumerate(["Kell", "Orla", "Vell"]):
        (folder / f"{n}.md").write_text(f"The {town} market opens at {n + 7} o'clock.")
    mirror = FolderSync(service.documents, folder, "towns")
    assert len(mirror.run().added) == 3
    (folder / "0.md").unlink()
    (folder / "1.md").unlink()
    with pytest.raises(InvalidInput, match="remove 2 of the 3 documents") as refused:
        mirror.run()
    assert "--delete-many" in refused.value.hint and len(mirror.current()) == 3
    (folder / "2.md").unlink()  # an empty (or unmounted) folder: all of them
    with pytest.raises(InvalidInput, match="remove 3 of the 3"):
        mirror.run()
    done = FolderSync(service.documents, folder, "towns", delete_many=True).run()
    assert sorted(done.removed) == ["0.md", "1.md", "2.md"] and mirror.current() == {}
    with pytest.raises(InvalidInput, match="not a folder"):
        FolderSync(service.documents, tmp_path / "missing", "towns")


def test_an_unexpected_error_fails_one_file_only(make_service: Any, tmp_path: Path) -> None:
    service: RagService = make_service()
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "kiln.md").write_text("The Orla kiln is fired on Tuesdays.")
    bad = os.fsdecode(b"mill\xff.md")  # not UTF-8: the store cannot take the name
    (folder / bad).write_text("The Brannock mill grinds rye on Fridays.")
    done = FolderSync(service.documents, folder, "mirror").run()
    assert done.added == ["kiln.md"]
    assert done.failed[bad].startswith("UnicodeEncodeError")


def test_a_signal_stops_between_files(make_service: Any, tmp_path: Path) -> None:
    """SIGTERM (like Ctrl-C) lets the file being synced finish and stops before the next; a
    second one stops at once."""
    service: RagService = make_service()
    folder = tmp_path / "docs"
    folder.mkdir()
    for n, town in enumerate(["Kell", "Orla", "Vell"]):
        (folder / f"{n}.md").write_text(f"The {town} market opens at {n + 7} o'clock.")
    stop = threading.Event()
    mirror = FolderSync(service.documents, folder, "towns", stop=stop)
    said: list[str] = []

    def on_file(outcome: str, name: str, detail: str) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # as each file is done

    with stop_on_signals(stop, said.append):
        done = mirror.run(on_file)
        assert done.interrupted and done.added == ["0.md"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert said == ["stopping after the current file (Ctrl-C again to stop at once)"]
    assert [(d.filename, d.state, d.version) for d in mirror.current().values()] == [
        ("0.md", "indexed", 1)]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back
    stop.clear()
    assert mirror.run().added == ["1.md", "2.md"]  # the next sync finishes the job


def test_the_command_ends_with_the_counts(
    make_service: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--json`: stdout holds only counts lines, the last one whatever happens; messages go
    to the console given (stderr); the collection defaults to the folder's name."""
    service: RagService = make_service()
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "kiln.md").write_text("The Orla kiln is fired on Tuesdays.")
    console = Console(stderr=True)

    def load() -> DocumentIndexer:
        return service.documents

    assert sync_command(load, SyncOptions(folder, as_json=True), console) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.splitlines()[-1]) == {"added": 1, "updated": 0, "removed": 0,
                                                "unchanged": 0, "failed": 0}
    assert "synced" in err and "-> notes" in err and len(out.splitlines()) == 1
    assert [d.collection for d in service.documents.page()[0]] == ["notes"]
    (folder / "kiln.md").unlink()  # the only document: refused without --delete-many
    assert sync_command(load, SyncOptions(folder, as_json=True), console) == 2
    out, err = capsys.readouterr()
    assert json.loads(out.splitlines()[-1])["removed"] == 0 and "--delete-many" in err
    (folder / "mill.md").write_text("The Brannock mill grinds rye on Fridays.")

    def interrupted_load() -> DocumentIndexer:
        os.kill(os.getpid(), signal.SIGTERM)  # Ctrl-C before the pass starts
        return service.documents

    options = SyncOptions(folder, "notes", as_json=True, delete_many=True)
    assert sync_command(interrupted_load, options, console) == 130
    out, err = capsys.readouterr()
    assert "interrupted: every document is at one complete version" in err
    assert json.loads(out.splitlines()[-1])["added"] == 0
    assert sync_command(load, SyncOptions(tmp_path / "nowhere", as_json=True), console) == 2
    out, err = capsys.readouterr()
    assert "not a folder" in err and json.loads(out.splitlines()[-1])["failed"] == 0


def test_watch_passes_look_only_at_what_changed(make_service: Any, tmp_path: Path) -> None:
    service: RagService = make_service()
    folder = tmp_path / "docs"
    fill(folder)
    mirror = FolderSync(service.documents, folder, "mirror")
    mirror.run()
    (folder / "a" / "x.md").write_text("# Kilns\n\nThe Orla kiln is fired on Thursdays.")
    shutil.rmtree(folder / "b")
    done = mirror.run_changes({str(folder / "a" / "x.md"), str(folder / "b")})
    assert done.counts() == {"added": 0, "updated": 1, "removed": 1, "unchanged": 0,
                             "failed": 0}
    assert (done.updated, done.removed) == (["a/x.md"], ["b/x.md"])
    ferry = folder / "ferry.txt"  # same size and mtime: taken as unchanged without reading
    stat = ferry.stat()
    ferry.write_text("The Corran ferry leaves every 50 minutes.")
    os.utime(ferry, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert mirror.run_changes({str(ferry)}).unchanged == ["ferry.txt"]


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
    (folder / "mill.md").write_text("The Brannock mill grinds rye on Fridays.")
    env = {**os.environ, "RAG_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "rag.cli", "sync", str(folder), "--watch",
                             "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        assert next_counts(proc.stdout, 180)["added"] == 2
        time.sleep(0.5)  # the watcher starts after the first pass
        (folder / "notes.md").write_text("The Orla kiln is fired on Thursdays.")
        (folder / "mill.md").unlink()
        (folder / ".notes.md.swp").write_text("an editor's hidden file")
        (folder / "notes.md~").write_text("an editor's backup")
        assert next_counts(proc.stdout, 60) == {"added": 0, "updated": 1, "removed": 1,
                                                "unchanged": 0, "failed": 0}
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out == "" and "Traceback" not in err  # nothing after the last counts line
    assert "stopping after the current file" in err and "-> docs" in err
