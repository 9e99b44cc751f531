"""`rag sync DIR`: make a collection mirror a folder, once or as files change.

Each file's name in the collection is its path relative to the folder (`a/x.md` and `b/x.md`
are two documents); which files count is `ingest.folder_walk`'s business. Files no longer
there have their documents deleted (first, so a renamed file can take its old bytes), new
files are added, changed files become new versions of their document (the engine swaps them
in atomically, re-embedding only the chunks whose text changed), a file whose document of
that name already holds its bytes is left alone. Documents are identified by their bytes, so
a file with the same bytes as another document (a copy, or an earlier version of another
file) fails with that reason. A file that cannot be read or parsed counts as failed and keeps
whatever version it had. A pass never removes more than half of a collection's documents (or
all of them) unless told to: an empty or unmounted folder is refused, not mirrored.

Ctrl-C or SIGTERM stops after the file being synced, so every document stays at one complete
version; a second Ctrl-C stops at once. `--watch` looks only at the paths that changed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from watchfiles import Change, DefaultFilter, watch

from ingest.folder_walk import Walk, ignored, temporary, walk
from rag.access import DEFAULT_TENANT, Reader
from rag.documents.indexer import ALL_DOCUMENTS, DocumentIndexer
from rag.errors import InvalidInput, RagError, UnsupportedType
from rag.stores.uploads import sha256_file
from rag.types import Document

# The folder mirrors the collection in the tenant it writes (`default`, as `rag ingest`):
# another tenant's documents of the same collection are not its to replace or remove.
SYNCED_TENANT = Reader(DEFAULT_TENANT, all_groups=True)

DEBOUNCE_MS = 1600  # changes within this long of each other are synced as one batch


@dataclass
class SyncReport:
    """What one pass did, by file name (failed and skipped: name -> why)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # counted in the summary only
    interrupted: bool = False  # stopped between two files: the rest is left for next time

    def counts(self) -> dict[str, int]:
        """The `--json` line: {"added", "updated", "removed", "unchanged", "failed"}."""
        return {"added": len(self.added), "updated": len(self.updated),
                "removed": len(self.removed), "unchanged": len(self.unchanged),
                "failed": len(self.failed)}

    def summary(self) -> str:
        line = ", ".join(f"{n} {name}" for name, n in self.counts().items())
        line += f", {len(self.skipped)} skipped"
        if self.skipped:
            reasons: dict[str, int] = {}
            for why in self.skipped.values():
                reasons[why] = reasons.get(why, 0) + 1
            line += " (" + ", ".join(f"{n} {why}" for why, n in reasons.items()) + ")"
        if self.failed:
            line += "; failed: " + "; ".join(f"{k} ({v})" for k, v in self.failed.items())
        if self.interrupted:
            line += "; interrupted: the rest is left for the next sync"
        return line


FileEvent = Callable[[str, str, str], None]  # (outcome, file name, detail)


def _quiet(outcome: str, name: str, detail: str) -> None:
    """Default per-file callback: say nothing."""


class FolderSync:
    """Syncs one folder into one collection through the engine's document indexer.

    `stop` (set by a signal handler, or anyone) ends a pass between two files. Across the
    passes of one `FolderSync` it remembers each file's digest by (size, mtime) and the files
    that failed, which are not processed again until their bytes change.
    """

    def __init__(self, documents: DocumentIndexer, folder: Path, collection: str,
                 delete_many: bool = False, stop: threading.Event | None = None) -> None:
        if not folder.is_dir():
            raise InvalidInput(f"{folder} is not a folder.", "Give the folder to mirror.")
        self.documents = documents
        self.folder = folder.absolute()
        self.collection = collection
        self.delete_many = delete_many
        self.stop = stop or threading.Event()
        self._digests: dict[str, tuple[int, int, str]] = {}  # name -> size, mtime_ns, digest
        self._failed: dict[str, tuple[str, str]] = {}  # name -> digest, why (not retried)
        self._conflicts: set[str] = set()  # same bytes as another document: checked each pass
        self._unsupported: dict[str, str] = {}  # name -> digest

    def current(self) -> dict[str, Document]:
        """Name -> the collection's current document of that name: its indexed version, else
        its newest."""
        docs, _ = self.documents.page(self.collection, 0, ALL_DOCUMENTS, SYNCED_TENANT)
        best: dict[str, Document] = {}
        for doc in docs:
            if doc.access:  # an upload for a group: not the folder's (sync writes none)
                continue
            kept = best.get(doc.filename)
            if kept is None or _rank(doc) > _rank(kept):
                best[doc.filename] = doc
        return best

    def run(self, on_file: FileEvent = _quiet, report: SyncReport | None = None) -> SyncReport:
        """A full pass over the folder: remove, add, update; a file that fails does not stop
        the others. `report` (filled as it goes) is returned."""
        self._check_folder()
        return self._pass(walk(self.folder), lambda name: True, on_file, report or SyncReport())

    def run_changes(self, paths: set[str], on_file: FileEvent = _quiet,
                    report: SyncReport | None = None) -> SyncReport:
        """A pass over the changed paths only (files or folders, added, changed or gone), and
        the files that failed for having another document's bytes; a full pass when a path
        lies outside the folder (a followed link)."""
        self._check_folder()
        names = {self._name(Path(p)) for p in paths}
        if None in names:
            return self.run(on_file, report)
        tops = {n for n in names if n is not None and not ignored(n)}
        found = Walk()
        for name in sorted(tops | self._conflicts):
            found.merge(walk(self.folder, self.folder / name))
        found.files = dict(sorted(found.files.items()))
        scope = tops | self._conflicts

        def inside(name: str) -> bool:
            return any(name == top or name.startswith(top + "/") for top in scope)

        return self._pass(found, inside, on_file, report or SyncReport())

    def _pass(self, found: Walk, inside: Callable[[str], bool], on_file: FileEvent,
              report: SyncReport) -> SyncReport:
        current = self.current()
        gone = [n for n, doc in current.items() if inside(n) and not found.holds(n)]
        self._check_removals(gone, len(current))
        report.skipped.update(found.skipped)
        for folder, why in found.blocked.items():
            report.failed[folder + "/"] = why
            on_file("failed", folder + "/", why)
        for name in gone:
            if self._stopped(report):
                return report
            self._remove(name, current[name], report, on_file)
        self._conflicts &= set(found.files)  # a file gone is no longer in conflict
        for name, path in found.files.items():
            if self._stopped(report):
                return report
            self._sync_file(name, path, current.get(name), report, on_file)
        return report

    def _stopped(self, report: SyncReport) -> bool:
        if self.stop.is_set():
            report.interrupted = True
        return report.interrupted

    def _check_folder(self) -> None:
        if not self.folder.is_dir():
            raise InvalidInput(f"{self.folder} is gone or no longer a folder; nothing was "
                               "changed.", "Check that it is mounted, then sync again.")

    def _check_removals(self, gone: list[str], total: int) -> None:
        """Refuse a pass that would remove all of the collection or more than half of it."""
        if self.delete_many or not gone or (len(gone) < total and 2 * len(gone) <= total):
            return
        some = ", ".join(gone[:3]) + (", ..." if len(gone) > 3 else "")
        raise InvalidInput(
            f"This sync would remove {len(gone)} of the {total} documents of collection "
            f"'{self.collection}' ({some}); nothing was changed.",
            f"Check that {self.folder} is the right folder and is mounted, and that "
            "--collection names the collection that mirrors it; pass --delete-many to "
            "remove them.")

    def _remove(self, name: str, doc: Document, report: SyncReport, on_file: FileEvent) -> None:
        try:
            self.documents.delete(doc.id)
        except Exception as exc:  # one document's trouble does not stop the sync
            self._fail(report, on_file, name, f"could not be removed: {_why(exc)}")
            return
        for memo in (self._digests, self._failed, self._unsupported):
            memo.pop(name, None)
        report.removed.append(name)
        on_file("removed", name, "")

    def _sync_file(self, name: str, path: Path, doc: Document | None, report: SyncReport,
                   on_file: FileEvent) -> None:
        self._conflicts.discard(name)
        try:
            digest = self._digest(name, path)
            owner = self.documents.get(digest)
        except OSError as exc:
            self._fail(report, on_file, name, f"unreadable: {exc.strerror or exc}")
            return
        except Exception as exc:
            self._fail(report, on_file, name, _why(exc))
            return
        if owner is not None and (owner.collection, owner.filename) != (self.collection, name):
            self._conflicts.add(name)
            self._fail(report, on_file, name, _same_bytes(owner))
        elif self._unsupported.get(name) == digest:
            report.skipped[name] = "not a supported type"
        elif name in self._failed and self._failed[name][0] == digest:
            report.failed[name] = self._failed[name][1]  # the same bytes failed before
        elif owner is not None and owner.state == "indexed":
            self._failed.pop(name, None)
            report.unchanged.append(name)
        else:
            self._ingest(name, path, digest, doc, report, on_file)

    def _ingest(self, name: str, path: Path, digest: str, doc: Document | None,
                report: SyncReport, on_file: FileEvent) -> None:
        try:
            made = self.documents.ingest_file(path, name, self.collection)
        except UnsupportedType:
            self._unsupported[name] = digest
            report.skipped[name] = "not a supported type"
            return
        except OSError as exc:
            self._fail(report, on_file, name, f"unreadable: {exc.strerror or exc}")
            return
        except Exception as exc:  # RagError or not: this file failed, the others go on
            self._failed[name] = (digest, _why(exc))
            self._fail(report, on_file, name, _why(exc))
            return
        if (made.collection, made.filename) != (self.collection, name):
            self._conflicts.add(name)  # taken by another name since we looked
            self._fail(report, on_file, name, _same_bytes(made))
            return
        if made.state != "indexed":
            self._fail(report, on_file, name, made.error or f"left {made.state}")
            return
        self._failed.pop(name, None)
        outcome = "updated" if doc is not None and doc.state == "indexed" else "added"
        getattr(report, outcome).append(name)
        on_file(outcome, name, f"version {made.version}, {made.chunk_count} chunks, "
                               f"{made.reused_chunks} kept their vectors")

    def _fail(self, report: SyncReport, on_file: FileEvent, name: str, why: str) -> None:
        report.failed[name] = why
        on_file("failed", name, why)

    def _digest(self, name: str, path: Path) -> str:
        """The file's sha256, hashed again only when its size or mtime changed."""
        st = os.stat(path)
        kept = self._digests.get(name)
        if kept is not None and kept[:2] == (st.st_size, st.st_mtime_ns):
            return kept[2]
        digest = sha256_file(path)
        self._digests[name] = (st.st_size, st.st_mtime_ns, digest)
        return digest

    def _name(self, path: Path) -> str | None:
        """A changed path's name under the folder; None when it lies outside it."""
        try:
            return path.relative_to(self.folder).as_posix()
        except ValueError:
            return None

    def watch(self, on_file: FileEvent = _quiet,
              begin: Callable[[], SyncReport] = SyncReport) -> Iterator[SyncReport]:
        """A report (made by `begin`) for each batch of changes, debounced, until `stop`."""
        changes = watch(self.folder, watch_filter=_VisibleFilter(self.folder),
                        debounce=DEBOUNCE_MS, stop_event=self.stop, raise_interrupt=False)
        for batch in changes:
            if self.stop.is_set():
                return
            yield self.run_changes({path for _, path in batch}, on_file, begin())


def _rank(doc: Document) -> tuple[bool, int]:
    return doc.state == "indexed", doc.version


def _why(exc: Exception) -> str:
    return exc.message if isinstance(exc, RagError) else f"{type(exc).__name__}: {exc}"


def _same_bytes(owner: Document) -> str:
    which = "an earlier version of " if owner.state == "replaced" else ""
    return (f"same bytes as {which}{owner.filename} in collection {owner.collection}; "
            "documents are identified by content")


class _VisibleFilter(DefaultFilter):
    """watchfiles' default filter, and no hidden or temporary files under the synced folder."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def __call__(self, change: Change, path: str) -> bool:
        try:
            name = Path(path).relative_to(self.folder).as_posix()
        except ValueError:
            name = Path(path).name
        return not ignored(name) and not temporary(name) and super().__call__(change, path)

