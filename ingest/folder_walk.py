"""Which files of a folder `rag sync` mirrors, by name (their path under the folder, with /).

Hidden files and folders (a name starting with ".") are ignored and not counted. Editor and
office temporary files (`~$*`, `*~`, `*.swp`, `.#*`) and things that are neither files nor
folders are skipped and counted. A symlinked folder is followed once: a folder reached a
second time (a link loop, or a link to a folder already walked) is skipped and counted. A
dangling link is listed (it fails as unreadable). A folder that cannot be listed is `blocked`:
the documents under it are kept, not removed as if its files were gone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

TEMPORARY = ("~$*", "*~", "*.swp", ".#*")  # Office lock files, editor backups and swap files


@dataclass
class Walk:
    """What a walk found: files by name, skipped names (-> why), blocked folders (-> why)."""

    files: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)

    def merge(self, other: Walk) -> None:
        self.files.update(other.files)
        self.skipped.update(other.skipped)
        self.blocked.update(other.blocked)

    def holds(self, name: str) -> bool:
        """Whether `name` is listed, or lies under a folder that could not be listed (so its
        document must be kept)."""
        return name in self.files or any(name.startswith(b + "/") for b in self.blocked)


def ignored(name: str) -> bool:
    """A hidden file or a file in a hidden folder: never synced, never counted."""
    return any(part.startswith(".") for part in name.split("/"))


def temporary(name: str) -> bool:
    """An editor or office temporary file (by its own name)."""
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch(base, pattern) for pattern in TEMPORARY)


def walk(folder: Path, top: Path | None = None) -> Walk:
    """Every file under `top` (a folder or file inside `folder`; default the whole folder),
    named relative to `folder`, sorted by name."""
    found = Walk()
    seen: set[tuple[int, int]] = set()
    start = top or folder
    pending = [start]
    while pending:
        here = pending.pop()
        name = _name(folder, here)
        if name and ignored(name):
            continue
        if not here.is_dir():
            _file(found, name, here)
            continue
        try:
            st = here.stat()
            entries = sorted(os.scandir(here), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            found.blocked[name] = f"folder unreadable: {exc.strerror or exc}"
            continue
        if (st.st_dev, st.st_ino) in seen:
            found.skipped[name + "/"] = "a folder already synced through a link"
            continue
        seen.add((st.st_dev, st.st_ino))
        pending.extend(here / entry.name for entry in entries)
    found.files = dict(sorted(found.files.items()))
    return found


def _file(found: Walk, name: str, path: Path) -> None:
    if temporary(name):
        found.skipped[name] = "a temporary file"
    elif path.is_file() or (path.is_symlink() and not path.exists()):
        found.files[name] = path
    elif path.exists():
        found.skipped[name] = "not a regular file"


def _name(folder: Path, path: Path) -> str:
    relative = path.relative_to(folder).as_posix()
    return "" if relative == "." else relative
