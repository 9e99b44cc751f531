"""Metadata filters on asks: `{"year": {"$gte": 2020}, "dept": {"$in": ["hr", "legal"]}}`.

A filter is a JSON object of fields; every field's conditions must hold (AND). It is parsed
once, when the request arrives (`MetadataFilter.parse`, which raises `InvalidFilter`, a 400
naming the field), and applied before ranking to the documents the asker may read (`select`).

Writing a filter
- `{"dept": "hr"}` (a string, number or boolean) is equality, the same as `{"dept": {"$eq": "hr"}}`.
- Operators: `$eq`, `$ne`, `$in` (a non-empty list of at most 100 values, all of one kind),
  `$gte`, `$lte`. Several in one object are ANDed: `{"$gte": 2019, "$lte": 2021}`; they must
  all compare the same kind. Anything else is refused: another operator (`$gt`, `$regex`),
  `$or`/`$and` or any field starting with `$`, an empty object, a nested object or a list as a
  value.
- `null` is not a filter value: a document whose value is null counts as lacking the field,
  and there is no way to ask for "field absent".
- Field names are plain keys of the top-level metadata: non-empty, at most 100 characters, at
  most 20 per filter. A dotted name (`"author.name"`) is a key with a dot in it, not a path:
  metadata keys may hold dots (file names, URLs), and a path syntax would make them unreachable.

Kinds and comparison
- Four kinds: number (int or float, finite; a boolean is not a number), string, date, boolean.
  Document values are taken as JSON decodes them (exact `int`, `float`, `str`, `bool`).
- A string that reads as an ISO 8601 date or date-time (`2021-03-04`, `2021-03-04T10:00:00Z`,
  `2021-03-04 10:00+01:00`) is a date; one without an offset is taken as UTC, so naive and
  aware values compare. One that only looks like a date (`2021-02-30`) is a plain string.
  In a filter, a date without a time stands for the whole day: `$gte` from its first instant,
  `$lte` to its last, equality any instant of it. In a document, it is its first instant.
- `$gte`/`$lte` take a number, a date or a string (compared by code point); a boolean has no
  order. Values compare only with values of the same kind (2020 equals 2020.0; 2020 never
  equals "2020").

Matching
- A document lacking the field (or holding null there) does not match, not even `$ne`.
- A document value of another kind than the filter's does not match, not even `$ne`.
- A document value that is a list matches when any of its elements does (tags:
  `{"tags": "hr"}` matches `["hr", "legal"]`); `$ne` matches a list holding values of the
  filter's kind, none of them equal. Each condition looks at the whole list on its own.
- Type mismatch: when some of the documents given to `select` hold the field but none of them
  holds a value of the filter's kind there (`$gte 2020` where every document stores the year
  as the string "2020"), `select` raises `InvalidFilter` saying what the documents hold. When no
  document holds the field, nothing matches and the ask abstains; that is not an error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

from rag.errors import InvalidFilter

Kind = Literal["number", "string", "date", "boolean"]

OPERATORS = ("$eq", "$ne", "$in", "$gte", "$lte")
MAX_FIELDS = 20
MAX_FIELD_LENGTH = 100
MAX_IN_VALUES = 100

OPERATORS_HINT = ('Use {"field": value} for equality, or an object of the operators $eq, $ne, '
                  '$in, $gte, $lte, e.g. {"year": {"$gte": 2020}, "dept": {"$in": ["hr"]}}.')
VALUE_HINT = "Give a string, a number, a boolean or an ISO 8601 date such as \"2021-03-04\"."

ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
                      r"(?:[T ][0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?)?"
                      r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?")
DAY = timedelta(days=1) - timedelta(microseconds=1)  # first to last instant of a day

ARTICLE = {"number": "a number", "string": "a string", "date": "a date", "boolean": "a boolean"}
PLURAL = {"number": "numbers", "string": "strings", "date": "dates", "boolean": "booleans",
          "object": "objects", "list": "lists", "other": "other values"}


@dataclass(frozen=True)
class Operand:
    """One filter value, parsed: its kind, the inclusive range it stands for, its canonical form.

    `low == high` except for a date without a time, which spans its day.
    """

    kind: Kind
    low: Any
    high: Any
    canonical: Any  # JSON form for the cache key: 2020.0 -> 2020, dates in UTC


@dataclass(frozen=True)
class Condition:
    """One test on one field: `field op value`, with the value parsed once."""

    field: str
    op: str
    value: Any  # as given (a tuple for $in), for messages
    kind: Kind
    operands: tuple[Operand, ...]
    # built from the above once (not compared): the per-document tests `select` runs
    accepts: Callable[[Any], bool] = dataclass_field(init=False, repr=False, compare=False)
    equal: Callable[[Any], bool] = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        equal = equality(self.kind, self.operands)
        object.__setattr__(self, "equal", equal)
        object.__setattr__(self, "accepts", scalar_test(self.kind, self.op, self.operands, equal))

    def comparable(self, raw: Any) -> Any:
        """`raw` as a value of this condition's kind, or None when it is of another kind."""
        return CONVERTERS[self.kind](raw)

    def matches(self, raw: Any) -> bool:
        """Whether a document's raw value of the field (a list: any element) satisfies this."""
        if type(raw) not in SEQUENCES:
            return self.accepts(raw)
        if self.op != "$ne":
            return any(map(self.accepts, raw))
        hits = [v for v in map(self.comparable, raw) if v is not None]
        return bool(hits) and not any(map(self.equal, hits))

    def canonical(self) -> list[Any]:
        """`[field, op, value]` in canonical form; `$in` values deduplicated and sorted."""
        if self.op == "$in":
            return [self.field, self.op, sorted({o.canonical for o in self.operands})]
        return [self.field, self.op, self.operands[0].canonical]

    def shown(self) -> str:
        """The condition as the user wrote it, shortened, for messages."""
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        text = json.dumps(value, ensure_ascii=False)
        return f"{self.op} {text if len(text) <= 60 else text[:57] + '...'}"


@dataclass(frozen=True)
class MetadataFilter:
    """Conditions on document metadata, all of which must hold."""

    conditions: tuple[Condition, ...]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> MetadataFilter:
        """Parse the request's `filters.metadata` object; `InvalidFilter` names the bad field."""
        if not isinstance(raw, Mapping):
            raise InvalidFilter("The metadata filter must be a JSON object of fields.",
                               OPERATORS_HINT)
        if len(raw) > MAX_FIELDS:
            raise InvalidFilter(f"The metadata filter has {len(raw)} fields; at most "
                               f"{MAX_FIELDS} are allowed.", "Filter on fewer fields.")
        conditions: list[Condition] = []
        for name, spec in raw.items():
            check_field_name(name)
            conditions.extend(parse_field(name, spec))
        return cls(tuple(conditions))

    def select(self, docs: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
        """Ids of the documents whose metadata match, in input order.

        Raises `InvalidFilter` when documents hold a field but none of them in the filter's kind.
        """
        for c in self.conditions:
            check_kind(c, docs)
        tests = [(c.field, c.accepts, c.matches) for c in self.conditions]
        chosen: list[str] = []
        for doc_id, metadata in docs:
            for name, accepts, matches in tests:
                raw = metadata.get(name)
                if not (matches(raw) if type(raw) in SEQUENCES else accepts(raw)):
                    break
            else:
                chosen.append(doc_id)
        return chosen

    def cache_key(self) -> Any:
        """A JSON-serializable canonical form: the same for the same filter however written."""
        return sorted((c.canonical() for c in self.conditions),
                      key=lambda c: (c[0], c[1], json.dumps(c[2])))


# --- parsing ---------------------------------------------------------------------------------


def invalid(field: str, problem: str, hint: str = OPERATORS_HINT) -> InvalidFilter:
    """The 400 for a bad condition, naming its field."""
    return InvalidFilter(f'Metadata filter on "{field[:MAX_FIELD_LENGTH]}": {problem}', hint)


def check_field_name(name: Any) -> None:
    """Field names are non-empty strings of at most MAX_FIELD_LENGTH characters, not `$...`."""
    if not isinstance(name, str):
        raise InvalidFilter(f"Metadata filter field {name!r} is not a string.",
                           "Name fields by their metadata keys.")
    if not name:
        raise invalid(name, "the field name is empty.", "Name fields by their metadata keys.")
    if len(name) > MAX_FIELD_LENGTH:
        raise invalid(name, f"the field name is longer than {MAX_FIELD_LENGTH} characters.",
                      "Name fields by their metadata keys.")
    if name.startswith("$"):
        raise invalid(name, "fields cannot start with \"$\"; $or, $and and $not are not "
                      "supported (all fields must match).", OPERATORS_HINT)


def parse_field(name: str, spec: Any) -> list[Condition]:
    """The conditions of one field: a plain value (equality) or an operator object."""
    if isinstance(spec, Mapping):
        pairs = operator_pairs(name, spec)
    elif isinstance(spec, list | tuple):
        raise invalid(name, "a list is not a value; to match any of several, use "
                      '{"$in": [...]}.')
    else:
        pairs = [("$eq", spec)]
    conditions = [parse_condition(name, op, value) for op, value in pairs]
    kinds = sorted({c.kind for c in conditions})
    if len(kinds) > 1:
        raise invalid(name, f"its operators compare different kinds ({', '.join(kinds)}).",
                      "Give every operator on one field values of the same kind.")
    return conditions


def operator_pairs(name: str, spec: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(operator, value) of an operator object, every operator known."""
    if not spec:
        raise invalid(name, "the operator object is empty.")
    if not any(isinstance(k, str) and k.startswith("$") for k in spec):
        raise invalid(name, "a nested object is not a value; only top-level metadata keys "
                      "can be filtered, with a value or an operator object.")
    for op in spec:
        if op not in OPERATORS:
            raise invalid(name, f'unknown operator "{op}".')
    return list(spec.items())


def parse_condition(name: str, op: str, value: Any) -> Condition:
    """One operator and its value, checked and parsed."""
    if op == "$in":
        if not isinstance(value, list | tuple) or not value:
            raise invalid(name, "$in takes a non-empty list of values.")
        if len(value) > MAX_IN_VALUES:
            raise invalid(name, f"$in has {len(value)} values; at most {MAX_IN_VALUES} are "
                          "allowed.", "Split the filter or ask without it.")
        operands = tuple(parse_operand(name, op, v) for v in value)
        kinds = sorted({o.kind for o in operands})
        if len(kinds) > 1:
            raise invalid(name, f"$in mixes kinds ({', '.join(kinds)}).",
                          "Give $in values of one kind, as the documents store them.")
        return Condition(name, op, tuple(value), operands[0].kind, operands)
    operand = parse_operand(name, op, value)
    if op in ("$gte", "$lte") and operand.kind == "boolean":
        raise invalid(name, f"{op} takes a number, a date or a string, not a boolean.",
                      "Booleans have no order; use $eq or $ne.")
    return Condition(name, op, value, operand.kind, (operand,))


def parse_operand(name: str, op: str, value: Any) -> Operand:
    """A single filter value: a string, date, finite number or boolean."""
    if value is None:
        raise invalid(name, f"{op} null is not allowed: a document holding null or lacking "
                      "the field never matches.", VALUE_HINT)
    if isinstance(value, bool):
        return Operand("boolean", value, value, value)
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise invalid(name, f"{op} takes finite numbers only.", VALUE_HINT)
        canonical = int(value) if isinstance(value, float) and value.is_integer() else value
        return Operand("number", value, value, canonical)
    if isinstance(value, str):
        return string_operand(value)
    if isinstance(value, list | tuple):
        several = "single values" if op == "$in" else "one value (use $in for several)"
        raise invalid(name, f"{op} takes {several}, not a list.", VALUE_HINT)
    shape = "an object" if isinstance(value, Mapping) else type(value).__name__
    raise invalid(name, f"{op} takes a string, number, boolean or date, not {shape}.",
                  VALUE_HINT)


def string_operand(text: str) -> Operand:
    """A filter string: a date (a day spans its first to last instant) or a plain string."""
    instant = parse_date(text)
    if instant is None:
        return Operand("string", text, text, text)
    if len(text) == 10:  # a date without a time: the whole day
        # the last instant of 9999-12-31 is datetime.max: no overflow
        return Operand("date", instant, instant + DAY, instant.date().isoformat())
    return Operand("date", instant, instant, instant.isoformat())


# --- documents' values -----------------------------------------------------------------------


def parse_date(text: str) -> datetime | None:
    """The UTC instant an ISO 8601 date or date-time stands for (no offset: UTC); else None."""
    # Longer than any ISO form the pattern takes: never a date, and kept out of the cache
    # (metadata values may be long; caching them would hold them all).
    return None if len(text) > MAX_DATE_CHARS else _parse_date(text)


MAX_DATE_CHARS = 40


@lru_cache(maxsize=16384)
def _parse_date(text: str) -> datetime | None:
    if not ISO_DATE.fullmatch(text):
        return None
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        return None
    if instant.tzinfo is None:
        return instant.replace(tzinfo=UTC)
    try:
        return instant.astimezone(UTC)
    except OverflowError:  # an offset that crosses year 1 or 9999: the calendar's end
        return (datetime.min if instant.year == 1 else datetime.max).replace(tzinfo=UTC)


def as_number(raw: Any) -> Any:
    """`raw` if it is a number (a boolean is not), else None."""
    return raw if type(raw) in NUMBERS else None


def as_boolean(raw: Any) -> Any:
    """`raw` if it is a boolean, else None."""
    return raw if type(raw) is bool else None


def as_string(raw: Any) -> Any:
    """`raw` if it is a string that is not a date, else None."""
    return raw if type(raw) is str and parse_date(raw) is None else None


def as_date(raw: Any) -> Any:
    """The UTC instant of a date string, else None."""
    return parse_date(raw) if type(raw) is str else None


NUMBERS = (int, float)  # exact types: type(True) is bool, so booleans are not numbers
SEQUENCES = (list, tuple)
CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "number": as_number, "boolean": as_boolean, "string": as_string, "date": as_date}


def equality(kind: Kind, operands: tuple[Operand, ...]) -> Callable[[Any], bool]:
    """Whether a value of `kind` equals an operand: a set lookup, or within a date's range."""
    if kind != "date":
        return frozenset(o.low for o in operands).__contains__
    ranges = tuple((o.low, o.high) for o in operands)
    return lambda v: any(low <= v <= high for low, high in ranges)


def scalar_test(kind: Kind, op: str, operands: tuple[Operand, ...],
                equal: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """The test of one raw document value: of `kind`, and passing the operator."""
    convert = CONVERTERS[kind]
    low, high = operands[0].low, operands[0].high
    if op == "$gte":
        return lambda raw: (v := convert(raw)) is not None and v >= low
    if op == "$lte":
        return lambda raw: (v := convert(raw)) is not None and v <= high
    if op == "$ne":
        return lambda raw: (v := convert(raw)) is not None and not equal(v)
    return lambda raw: (v := convert(raw)) is not None and equal(v)


def check_kind(condition: Condition, docs: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Raise the type-mismatch 400 when documents hold the field, none in the filter's kind."""
    for _, metadata in docs:  # usually stops at the first document holding the field
        values = as_list(metadata.get(condition.field))
        if any(condition.comparable(v) is not None for v in values):
            return
    held = {kind_of(v) for _, metadata in docs
            for v in as_list(metadata.get(condition.field)) if v is not None}
    if held:
        raise mismatch(condition, held)


def as_list(raw: Any) -> list[Any] | tuple[Any, ...]:
    """A document's value as the values it holds: a list's elements, else itself."""
    return raw if isinstance(raw, list | tuple) else (raw,)


def kind_of(value: Any) -> str:
    """The kind of one document value, as the converters see it, or what else it is."""
    for kind, convert in CONVERTERS.items():
        if convert(value) is not None:
            return kind
    if isinstance(value, Mapping):
        return "object"
    return "list" if isinstance(value, list | tuple) else "other"


def mismatch(condition: Condition, held: set[str]) -> InvalidFilter:
    """The 400 for a filter whose kind no document holds in that field."""
    kinds = [PLURAL[k] for k in sorted(held)]
    holds = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]
    what = f"{PLURAL[condition.kind]}" if condition.op == "$in" else ARTICLE[condition.kind]
    verb = "are" if condition.op == "$in" else "is"
    hint = "Send the value as the documents store it"
    hint += (" (a dotted name is a key, not a path into objects)." if held & {"object", "list"}
             else f" ({holds}).")
    return invalid(condition.field, f"{condition.shown()} {verb} {what}, but the documents "
                   f"hold {holds} there.", hint)
