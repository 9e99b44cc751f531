"""API keys: each key's scopes, tenant and groups, parsed once at start into a table of hashes.

Keys come from `RAG_API_KEYS`, a JSON object whose values are a list of scopes (tenant
`default`, no groups) or `{"scopes": [...], "tenant": "acme", "groups": ["legal"]}`, and from
`RAG_API_KEYS_FILE`, a JSON list of `{"sha256": "<hex>", "scopes": [...], ...}` entries that holds
only the keys' SHA-256 (`rag keys new` makes a key and prints its entry). The table keeps the
digests, never a key: a presented key is hashed and compared with every digest in constant time.
A malformed entry stops start-up with a `ConfigError` that names its position, never its key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.access import ALL_TENANTS, DEFAULT_TENANT, Reader, valid_name
from rag.errors import ConfigError
from rag.settings import Settings

SCOPES = ("ask", "ingest", "admin")
SHORT_KEY = 16  # characters; a shorter key draws a warning at start (`rag keys new`: 43)
FIELDS = frozenset({"scopes", "tenant", "groups", "name"})
MAX_NAME = 100  # characters of an entry's label
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
ENV_HINT = ('Each RAG_API_KEYS entry is "<key>": ["ask"] or "<key>": {"scopes": ["ask", '
            '"ingest"], "tenant": "acme", "groups": ["legal"]}; the scopes are ask, ingest and '
            "admin.")
FILE_HINT = ('RAG_API_KEYS_FILE holds a JSON list of entries {"sha256": "<64 hex digits>", '
             '"scopes": ["ask"], "tenant": "acme", "groups": ["legal"], "name": "a label"}; '
             "`rag keys new` makes a key and prints its entry.")


def digest(key: str) -> bytes:
    """The SHA-256 of a key: what the table keeps and compares."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class KeySpec:
    """What a key may do: its scopes, its tenant (`*`: the operator's, every tenant), the
    groups it reads, and an optional label for people (never logged with the key)."""

    scopes: frozenset[str]
    tenant: str = DEFAULT_TENANT
    groups: frozenset[str] = frozenset()
    name: str = ""

    @property
    def reader(self) -> Reader:
        """What this key reads: its tenant's documents of its groups (all of them for admin)."""
        if self.tenant == ALL_TENANTS:
            return Reader(ALL_TENANTS)
        return Reader(self.tenant, self.groups, all_groups="admin" in self.scopes)

    def file_entry(self, sha256: str) -> dict[str, Any]:
        """This key's entry in a RAG_API_KEYS_FILE, under its hash `sha256` (hex)."""
        entry: dict[str, Any] = {"sha256": sha256,
                                 "scopes": [s for s in SCOPES if s in self.scopes],
                                 "tenant": self.tenant, "groups": sorted(self.groups)}
        return {**entry, "name": self.name} if self.name else entry


@dataclass(frozen=True)
class KeyTable:
    """Every configured key, as (SHA-256, spec) pairs; empty means open mode. `seed` is what
    view-URL secrets are derived from (the same for every process with the same keys)."""

    entries: tuple[tuple[bytes, KeySpec], ...] = ()
    seed: bytes = field(default=b"", repr=False)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[KeySpec]:
        return (spec for _, spec in self.entries)

    def find(self, presented: str) -> KeySpec | None:
        """The spec of `presented`, or None if it is no configured key.

        Every digest is compared, in constant time and without stopping at a match, so timing
        says nothing about which key matched, how much of one, or how long keys are.
        """
        candidate = digest(presented)
        found: KeySpec | None = None
        for stored, spec in self.entries:
            if hmac.compare_digest(stored, candidate):
                found = spec
        return found

    def tenants(self) -> list[str]:
        """The tenants that keys belong to, sorted."""
        return sorted({spec.tenant for spec in self})

    def groups_of(self, tenant: str) -> frozenset[str]:
        """The groups some key of `tenant` holds (operator keys hold none: they read all)."""
        return frozenset().union(*(spec.groups for spec in self if spec.tenant == tenant))


def load_keys(settings: Settings) -> KeyTable:
    """The key table of `settings` (RAG_API_KEYS, then RAG_API_KEYS_FILE); a ConfigError that
    names the entry's position when one is malformed or a key is configured twice."""
    entries: list[tuple[bytes, KeySpec]] = []
    seen: dict[bytes, str] = {}
    lines: list[str] = []
    for n, (key, spec) in enumerate(env_keys(settings.api_keys), start=1):
        entries.append((_unique(digest(key), f"RAG_API_KEYS entry {n}", seen), spec))
        lines.append(f"key {key}\t{_who(spec)}")  # the secret part of the seed
    if settings.api_keys_file is not None:
        where = f"RAG_API_KEYS_FILE ({settings.api_keys_file})"
        for n, (hashed, spec) in enumerate(file_keys(settings.api_keys_file), start=1):
            entries.append((_unique(hashed, f"{where} entry {n}", seen), spec))
            lines.append(f"sha256 {hashed.hex()}\t{_who(spec)}")
    seed = hashlib.sha256("\n".join(sorted(lines)).encode()).digest() if lines else b""
    return KeyTable(tuple(entries), seed)


def _who(spec: KeySpec) -> str:
    return f"{spec.tenant}\t{','.join(sorted(spec.groups))}"


def _unique(hashed: bytes, where: str, seen: dict[bytes, str]) -> bytes:
    if hashed in seen:
        raise ConfigError(f"{where}: the same key as {seen[hashed]}.",
                          "Configure each key once, with all its scopes and groups.")
    seen[hashed] = where
    return hashed


def env_keys(raw: Mapping[str, Any]) -> list[tuple[str, KeySpec]]:
    """The (key, spec) pairs of RAG_API_KEYS, in order; a ConfigError names a bad entry's
    position (1 = the first)."""
    pairs: list[tuple[str, KeySpec]] = []
    for n, (key, value) in enumerate(raw.items(), start=1):
        where = f"RAG_API_KEYS entry {n}"
        if not key.strip():
            raise ConfigError(f"{where}: the key is empty.", ENV_HINT)
        if key != key.strip():
            raise ConfigError(f"{where}: the key starts or ends with white space, which "
                              "requests cannot send.", "Remove the white space.")
        try:
            pairs.append((key, parse_entry({"scopes": value} if isinstance(value, list)
                                           else value, where, ENV_HINT)))
        except ConfigError as exc:  # messages name kinds, never values: and never the key
            if key in exc.message:
                raise ConfigError(f"{where}: the entry is malformed.", ENV_HINT) from None
            raise
    return pairs


def file_keys(path: Path) -> list[tuple[bytes, KeySpec]]:
    """The (SHA-256, spec) pairs of a key file, in order; a ConfigError names the file and a
    bad entry's position (1 = the first)."""
    label = f"RAG_API_KEYS_FILE ({path})"
    data = _read_json(path, label)
    if not isinstance(data, list):
        raise ConfigError(f"{label} must hold a JSON list of entries, not {_kind(data)}.",
                          FILE_HINT)
    if not data:
        raise ConfigError(f"{label} holds no keys.",
                          "Add one (`rag keys new` prints its entry), or unset RAG_API_KEYS_FILE.")
    pairs: list[tuple[bytes, KeySpec]] = []
    for n, item in enumerate(data, start=1):
        where = f"{label} entry {n}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be an object, not {_kind(item)}.", FILE_HINT)
        if "key" in item:
            raise ConfigError(f"{where} holds a plain key: the file keeps only hashes.",
                              'Replace "key" by "sha256", the hex SHA-256 of the key '
                              "(`rag keys new` prints such an entry), and keep the key itself "
                              "elsewhere.")
        sha256 = item.get("sha256")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise ConfigError(f'{where}: "sha256" must be the key\'s SHA-256 as 64 hex digits.',
                              FILE_HINT)  # not shown: it might be a key put there by mistake
        rest = {k: v for k, v in item.items() if k != "sha256"}
        pairs.append((bytes.fromhex(sha256), parse_entry(rest, where, FILE_HINT)))
    return pairs


def _read_json(path: Path, label: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{label} cannot be read: {exc.strerror or exc}.",
                          "Point RAG_API_KEYS_FILE at a readable JSON file.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{label} is not UTF-8 text.", FILE_HINT) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:  # its message says where, never what is there
        raise ConfigError(f"{label} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                          f"column {exc.colno}.", FILE_HINT) from None


def parse_entry(value: Any, where: str, hint: str) -> KeySpec:
    """The spec an entry object describes (`scopes`, optional `tenant`, `groups`, `name`); a
    ConfigError that starts with `where` when it is malformed."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a list of scopes or an object, not "
                          f"{_kind(value)}.", hint)
    unknown = sorted(str(k) for k in value if k not in FIELDS)
    if unknown:
        raise ConfigError(f"{where}: {len(unknown)} unknown field(s); the known ones are "
                          f"{', '.join(sorted(FIELDS))}.", hint)  # a field name may be a key
    if "scopes" not in value:
        raise ConfigError(f'{where}: "scopes" is missing.', hint)
    tenant = _tenant(value.get("tenant", DEFAULT_TENANT), where, hint)
    groups = _groups(value.get("groups", []), where, hint)
    if tenant == ALL_TENANTS and groups:
        raise ConfigError(f'{where}: an operator key (tenant "*") reads every group; give it '
                          'no "groups".', hint)
    return KeySpec(_scopes(value["scopes"], where, hint), tenant, groups,
                   _label(value.get("name", ""), where, hint))


def _scopes(value: Any, where: str, hint: str) -> frozenset[str]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, str) and s in SCOPES for s in value)):
        raise ConfigError(f'{where}: "scopes" must be a non-empty list of "ask", "ingest" and '
                          f'"admin" (got {_described(value)}).', hint)
    return frozenset(value)


def _tenant(value: Any, where: str, hint: str) -> str:
    if not isinstance(value, str) or not (value == ALL_TENANTS or valid_name(value)):
        raise ConfigError(f'{where}: "tenant" must be a name of letters, digits, ".", "_" or '
                          f'"-" (up to 64), or "*" for the operator (got {_described(value)}).',
                          hint)
    return value


def _groups(value: Any, where: str, hint: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(g, str) and valid_name(g)
                                              for g in value):
        raise ConfigError(f'{where}: "groups" must be a list of names of letters, digits, ".", '
                          f'"_" or "-" (up to 64 each) (got {_described(value)}).', hint)
    return frozenset(value)


def _label(value: Any, where: str, hint: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME or not value.isprintable():
        raise ConfigError(f'{where}: "name" must be a printable label of up to {MAX_NAME} '
                          "characters.", hint)
    return value


def short_keys(raw: Mapping[str, Any]) -> list[int]:
    """Positions (1 = the first) of RAG_API_KEYS entries whose key is shorter than SHORT_KEY."""
    return [n for n, key in enumerate(raw, start=1) if len(key) < SHORT_KEY]


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true or false",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _described(value: Any) -> str:
    """What a wrong value is, never what it says (it might be a key put in the wrong place)."""
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    return _kind(value)
