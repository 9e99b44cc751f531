"""`rag sync DIR`: make a collection mirror a folder, once or as files change.

Each file's name in the collection is its path relative to the folder (`a/x.md` and `b/x.md`
are two documents). New files are added, changed files become new versions of their document
(the engine swaps them in atomically, re-embedding only the chunks whose text changed), files
no longer there have their documents deleted, unchanged files (same bytes) are left alone.
A file that cannot be read or parsed counts as failed and keeps whatever version it had;
hidden files and files of types the engine cannot read are skipped. The engine keeps every
document at one complete version, so an interrupted sync leaves nothing half-done: the next
one picks up where it stopped.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from rich.console import Console
from watchfiles import Change, DefaultFilter, watch

from rag.documents.indexer import ALL_DOCUMENTS, DocumentIndexer
from rag.errors import InvalidInput, RagError, UnsupportedType
from rag.stores.uploads import sha256_file
from rag.types import Document

DEBOUNCE_MS = 1600  # changes within this long of each other are synced as one batch


@dataclass
class SyncReport:
    """What one pass did, by file name (failed: name -> why)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # unsupported types: counted nowhere

    def counts(self) -> dict[str, int]:
        """The `--json` line: {"added", "updated", "removed", "unchanged", "failed"}."""
        return {"added": len(self.added), "updated": len(self.updated),
                "removed": len(self.removed), "unchanged": len(self.unchanged),
                "failed": len(self.failed)}

    def summary(self) -> str:
        line = ", ".join(f"{n} {name}" for name, n in self.counts().items())
        if self.skipped:
            line += f" ({len(self.skipped)} skipped: not a supported type)"
        if self.failed:
            line += "; failed: " + "; ".join(f"{k} ({v})" for k, v in self.failed.items())
        return line


FileEvent = Callable[[str, str, str], None]  # (outcome, file name, detail)


def _quiet(outcome: str, name: str, detail: str) -> None:
    """Default per-file callback: say nothing."""


class FolderSync:
    """Syncs one folder into one collection through the engine's document indexer."""

    def __init__(self, documents: DocumentIndexer, folder: Path, collection: str) -> None:
        if not folder.is_dir():
            raise InvalidInput(f"{folder} is not a folder.", "Give the folder to mirror.")
        self.documents = documents
        self.folder = folder
        self.collection = collection

    def files(self) -> dict[str, Path]:
        """Name (path relative to the folder, with /) -> path of every visible file, sorted;
        a dangling link is listed (it fails as unreadable)."""
        found: dict[str, Path] = {}
        for path in sorted(self.folder.rglob("*")):
            relative = path.relative_to(self.folder)
            if any(part.startswith(".") for part in relative.parts):
                continue
            if path.is_file() or (path.is_symlink() and not path.exists()):
                found[relative.as_posix()] = path
        return found

    def current(self) -> dict[str, Document]:
        """Name -> the collection's current document of that name: its indexed version, else
        its newest."""
        docs, _ = self.documents.page(self.collection, 0, ALL_DOCUMENTS)
        best: dict[str, Document] = {}
        for doc in docs:
            kept = best.get(doc.filename)
            if kept is None or _rank(doc) > _rank(kept):
                best[doc.filename] = doc
        return best

    def run(self, on_file: FileEvent = _quiet) -> SyncReport:
        """One pass: add, update, remove; a file that fails does not stop the others."""
        report = SyncReport()
        files, current = self.files(), self.current()
        digests: dict[str, str] = {}
        for name, path in files.items():
            try:
                digests[name] = sha256_file(path)
            except OSError as exc:
                report.failed[name] = f"unreadable: {exc.strerror or exc}"
                on_file("failed", name, report.failed[name])
        indexed = {d.id for d in current.values() if d.state == "indexed"}
        for name, digest in digests.items():
            doc = current.get(name)
            if digest in indexed and (doc is None or doc.id == digest):
                report.unchanged.append(name)  # the same bytes (maybe under another name)
                continue
            self._ingest(name, files[name], doc, report, on_file)
        present = set(digests.values())
        for name, doc in current.items():
            if name not in files and doc.id not in present:
                self.documents.delete(doc.id)
                report.removed.append(name)
                on_file("removed", name, "")
        return report

    def _ingest(self, name: str, path: Path, doc: Document | None, report: SyncReport,
                on_file: FileEvent) -> None:
        try:
            made = self.documents.ingest_file(path, name, self.collection)
        except UnsupportedType:
            report.skipped.append(name)
            return
        except RagError as exc:
            report.failed[name] = exc.message
            on_file("failed", name, exc.message)
            return
        except OSError as exc:
            report.failed[name] = f"unreadable: {exc.strerror or exc}"
            on_file("failed", name, report.failed[name])
            return
        outcome = "updated" if doc is not None and doc.state == "indexed" else "added"
        getattr(report, outcome).append(name)
        on_file(outcome, name, f"version {made.version}, {made.chunk_count} chunks, "
                               f"{made.reused_chunks} kept their vectors")

    def watch(self, on_file: FileEvent = _quiet) -> Iterator[SyncReport]:
        """A report for each batch of changes (debounced), until Ctrl-C."""
        visible = _VisibleFilter(self.folder)
        for _ in watch(self.folder, watch_filter=visible, debounce=DEBOUNCE_MS,
                       raise_interrupt=False):
            yield self.run(on_file)


def _rank(doc: Document) -> tuple[bool, int]:
    return doc.state == "indexed", doc.version


class _VisibleFilter(DefaultFilter):
    """watchfiles' default filter, and no hidden files or folders under the synced folder."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder.resolve()

    def __call__(self, change: Change, path: str) -> bool:
        try:
            relative = Path(path).resolve().relative_to(self.folder)
        except ValueError:
            relative = Path(path)
        hidden = any(part.startswith(".") for part in relative.parts)
        return not hidden and super().__call__(change, path)


def interrupt_on_sigterm() -> None:
    """Let `kill` stop a sync the way Ctrl-C does (the engine cleans up the file it was on)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def sync_command(documents: DocumentIndexer, folder: Path, collection: str, keep_watching: bool,
                 as_json: bool, console: Console) -> int:
    """`rag sync`: a line per file done, a summary per pass (and its counts as a JSON line
    with `as_json`); returns the exit status (1: a file failed, 2: bad input, 130: stopped)."""

    def said(outcome: str, name: str, detail: str) -> None:
        colour = {"failed": "red", "removed": "yellow"}.get(outcome, "green")
        console.print(f"[{colour}]{outcome}[/] {name}" + (f": {detail}" if detail else ""),
                      highlight=False)

    def report(done: SyncReport) -> None:
        console.print(f"synced {folder} -> {collection}: {done.summary()}", highlight=False)
        if as_json:
            print(json.dumps(done.counts()), flush=True)  # plain: never wrapped

    try:
        mirror = FolderSync(documents, folder, collection)
        done = mirror.run(said)
        report(done)
        if keep_watching:
            for done in mirror.watch(said):
                report(done)
            return 0
    except RagError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: every document is at one complete version")
        return 130
    return 1 if done.failed else 0
