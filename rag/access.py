"""Who may read what: a key's tenant and groups, a document's tenant and access groups.

Every key has a tenant (`default` unless its entry names one) and groups; every document belongs
to the tenant of the key that uploaded it, and its optional `access` groups narrow it further: a
document with groups is read only by keys holding one of them (and the tenant's admin keys). A
key of tenant `*` is the operator's and reads every tenant. Open mode (no keys) reads everything.

A `Reader` goes with every read (retrieval before ranking, the response cache, listings, source
views); `REFUSED` counts the reads it turned away, by kind, for /metrics (never naming a document).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_TENANT = "default"
ALL_TENANTS = "*"  # a key of this tenant (the operator) reads and manages every tenant
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # a tenant or group name
_NAME = re.compile(NAME_PATTERN)


def valid_name(name: str) -> bool:
    """Whether `name` is a well-formed tenant or group name (letters, digits, `._-`, <= 64)."""
    return bool(_NAME.fullmatch(name))


@dataclass(frozen=True)
class Reader:
    """Who reads: a tenant and groups. `all_groups` (a tenant's admin) ignores document groups;
    tenant `*` reads every tenant."""

    tenant: str = DEFAULT_TENANT
    groups: frozenset[str] = frozenset()
    all_groups: bool = False

    @property
    def everything(self) -> bool:
        """Whether this reader may read every document of every tenant."""
        return self.tenant == ALL_TENANTS

    def may_read(self, tenant: str, access: Sequence[str]) -> bool:
        """Whether a document of `tenant` with `access` groups (empty: the whole tenant) is
        readable."""
        if self.everything:
            return True
        if tenant != self.tenant:
            return False
        return self.all_groups or not access or not self.groups.isdisjoint(access)

    def fingerprint(self) -> str:
        """What distinguishes what this reader sees (for cache keys): equal readers, equal text."""
        if self.everything:
            return ALL_TENANTS
        groups = "*" if self.all_groups else ",".join(sorted(self.groups))
        return f"{self.tenant}|{groups}"


EVERYONE = Reader(ALL_TENANTS, all_groups=True)  # open mode, and the in-process CLI


def document_id(sha256: str, tenant: str, access: Sequence[str] = ()) -> str:
    """A document's id: the SHA-256 of its bytes in the default tenant without access groups;
    otherwise the SHA-256 of the tenant, the groups and that hash. Two tenants, or two sets of
    groups, uploading the same bytes get two documents, and neither learns of the other's."""
    if tenant in (DEFAULT_TENANT, ALL_TENANTS) and not access:
        return sha256
    scope = f"tenant:{tenant}" + (f"\0access:{','.join(group_list(access))}" if access else "")
    return hashlib.sha256(f"{scope}\0{sha256}".encode()).hexdigest()


@dataclass
class RefusedReads:
    """Reads turned away because the reader may not see the record, counted by kind (`document`,
    `job`, `view`, `cache`, `conversation`, `feedback`)."""

    counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


REFUSED = RefusedReads()


def group_list(groups: Iterable[str]) -> tuple[str, ...]:
    """Groups as a document keeps them: distinct and sorted."""
    return tuple(sorted(set(groups)))
