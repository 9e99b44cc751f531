"""Metadata filters: parsing and its 400s, each operator, kinds (numbers, strings, dates,
booleans), list values, missing fields, the type-mismatch rule and the cache key."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import pytest

from rag.errors import InvalidFilter
from rag.filters import MetadataFilter

DOCS: list[tuple[str, Mapping[str, Any]]] = [
    ("a", {"year": 2019, "dept": "hr", "tags": ["hr", "legal"], "draft": True,
           "published": "2019-06-01"}),
    ("b", {"year": 2020, "dept": "legal", "tags": ["legal"], "draft": False,
           "published": "2020-03-04T10:00:00Z"}),
    ("c", {"year": 2021.0, "dept": "it", "tags": [], "published": "2021-12-31T23:30:00"}),
    ("d", {"year": 2022, "dept": "hr", "draft": None}),
    ("e", {}),
]


def select(raw: Mapping[str, Any], docs: list[tuple[str, Mapping[str, Any]]] = DOCS) -> list[str]:
    """The ids that `raw`, parsed, selects from `docs`."""
    return MetadataFilter.parse(raw).select(docs)


def refused(raw: Any) -> InvalidFilter:
    """The InvalidFilter that parsing `raw` raises."""
    with pytest.raises(InvalidFilter) as caught:
        MetadataFilter.parse(raw)
    return caught.value


# --- operators -------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ({"dept": "hr"}, ["a", "d"]),
    ({"dept": {"$eq": "hr"}}, ["a", "d"]),
    ({"year": 2020}, ["b"]),
    ({"year": 2021}, ["c"]),  # an int equals the float the document holds
    ({"year": 2019.0}, ["a"]),
    ({"draft": True}, ["a"]),
    ({"draft": False}, ["b"]),
    ({"dept": "HR"}, []),  # strings compare exactly
])
def test_equality(raw: dict[str, Any], expected: list[str]) -> None:
    assert select(raw) == expected


def test_ne_matches_other_values_but_not_missing_fields() -> None:
    assert select({"dept": {"$ne": "hr"}}) == ["b", "c"]  # e lacks dept
    assert select({"draft": {"$ne": True}}) == ["b"]  # d holds null, c and e lack it


def test_in() -> None:
    assert select({"dept": {"$in": ["hr", "legal"]}}) == ["a", "b", "d"]
    assert select({"year": {"$in": [2019, 2021, 1999]}}) == ["a", "c"]
    assert select({"draft": {"$in": [False]}}) == ["b"]
    assert select({"dept": {"$in": ["nobody"]}}) == []


def test_gte_and_lte_are_inclusive() -> None:
    assert select({"year": {"$gte": 2020}}) == ["b", "c", "d"]
    assert select({"year": {"$lte": 2020}}) == ["a", "b"]
    assert select({"year": {"$gte": 2019.5, "$lte": 2021}}) == ["b", "c"]
    assert select({"year": {"$gte": 2030}}) == []


def test_strings_compare_by_code_point() -> None:
    assert select({"dept": {"$gte": "hr", "$lte": "it"}}) == ["a", "c", "d"]
    assert select({"dept": {"$lte": "i"}}) == ["a", "d"]


def test_fields_are_anded() -> None:
    raw = {"year": {"$gte": 2020}, "dept": {"$in": ["hr", "legal"]}}
    assert select(raw) == ["b", "d"]
    assert select({**raw, "draft": False}) == ["b"]
    assert select({"dept": "hr", "year": 2019, "draft": False}) == []


def test_several_operators_on_one_field_are_anded() -> None:
    assert select({"dept": {"$in": ["hr", "it"], "$ne": "it"}}) == ["a", "d"]
    assert select({"year": {"$eq": 2020, "$ne": 2020}}) == []


def test_result_keeps_input_order_and_empty_filter_selects_all() -> None:
    docs = list(reversed(DOCS))
    assert select({"dept": "hr"}, docs) == ["d", "a"]
    assert select({}, docs) == ["e", "d", "c", "b", "a"]
    assert select({"dept": "hr"}, []) == []


# --- kinds -----------------------------------------------------------------------------------


def test_a_boolean_is_not_a_number() -> None:
    docs: list[tuple[str, Mapping[str, Any]]] = [("t", {"n": True}), ("one", {"n": 1}),
                                                 ("zero", {"n": 0})]
    assert select({"n": 1}, docs) == ["one"]
    assert select({"n": True}, docs) == ["t"]
    assert select({"n": {"$in": [0, 1]}}, docs) == ["one", "zero"]
    assert select({"n": {"$gte": 0}}, docs) == ["one", "zero"]
    assert select({"n": {"$ne": 1}}, docs) == ["zero"]


def test_numbers_never_equal_strings() -> None:
    docs: list[tuple[str, Mapping[str, Any]]] = [("s", {"year": "2020"}), ("n", {"year": 2020})]
    assert select({"year": 2020}, docs) == ["n"]
    assert select({"year": "2020"}, docs) == ["s"]
    assert select({"year": {"$ne": 2021}}, docs) == ["n"]  # another kind never matches


DATED: list[tuple[str, Mapping[str, Any]]] = [
    ("day", {"at": "2021-03-04"}),
    ("utc", {"at": "2021-03-04T10:00:00Z"}),
    ("naive", {"at": "2021-03-04T10:00:00"}),  # taken as UTC
    ("paris", {"at": "2021-03-04T10:30:00+01:00"}),  # 09:30 UTC
    ("late", {"at": "2021-03-04T23:59:59.999999Z"}),
    ("tokyo", {"at": "2021-03-05T01:00:00+09:00"}),  # 2021-03-04 16:00 UTC
    ("next", {"at": "2021-03-05 00:00"}),
    ("before", {"at": "2021-03-03T23:59:59Z"}),
]


@pytest.mark.parametrize(("raw", "expected"), [
    ({"at": "2021-03-04"}, ["day", "utc", "naive", "paris", "late", "tokyo"]),
    ({"at": {"$gte": "2021-03-05"}}, ["next"]),
    ({"at": {"$lte": "2021-03-03"}}, ["before"]),
    ({"at": {"$lte": "2021-03-04"}}, ["day", "utc", "naive", "paris", "late", "tokyo", "before"]),
    ({"at": {"$gte": "2021-03-04T10:00:00Z", "$lte": "2021-03-04T16:00:00Z"}},
     ["utc", "naive", "tokyo"]),
    ({"at": {"$gte": "2021-03-04T11:00:00+01:00"}}, ["utc", "naive", "late", "tokyo", "next"]),
    ({"at": "2021-03-04T10:00:00"}, ["utc", "naive"]),
    ({"at": "2021-03-04T09:30:00Z"}, ["paris"]),
    ({"at": {"$in": ["2021-03-03", "2021-03-05"]}}, ["next", "before"]),
    ({"at": {"$ne": "2021-03-04"}}, ["next", "before"]),
])
def test_dates_compare_as_instants_and_days(raw: dict[str, Any], expected: list[str]) -> None:
    assert select(raw, DATED) == expected


def test_date_strings_do_not_compare_with_plain_strings() -> None:
    docs: list[tuple[str, Mapping[str, Any]]] = [("date", {"v": "2021-03-04"}),
                                                 ("word", {"v": "2021 March"}),
                                                 ("bad", {"v": "2021-02-30"})]
    assert select({"v": {"$gte": "2000"}}, docs) == ["word", "bad"]  # plain strings only
    assert select({"v": {"$gte": "2000-01-01"}}, docs) == ["date"]
    assert select({"v": "2021-02-30"}, docs) == ["bad"]  # not a real date: a plain string


def test_dates_at_the_ends_of_the_calendar_do_not_crash() -> None:
    docs: list[tuple[str, Mapping[str, Any]]] = [("end", {"at": "9999-12-31T12:00:00"}),
                                                 ("start", {"at": "0001-01-01"})]
    assert select({"at": "9999-12-31"}, docs) == ["end"]
    assert select({"at": {"$lte": "0001-01-01T02:00:00+01:00"}}, docs) == ["start"]
    before_year_one = MetadataFilter.parse({"at": {"$lte": "0001-01-01T00:30:00+01:00"}})
    assert before_year_one.conditions[0].kind == "date"
    assert select({"at": {"$gte": "9999-12-31T23:30:00-01:00"}}, docs) == []


# --- list values and missing fields ----------------------------------------------------------


def test_a_list_value_matches_when_any_element_does() -> None:
    assert select({"tags": "hr"}) == ["a"]
    assert select({"tags": "legal"}) == ["a", "b"]
    assert select({"tags": {"$in": ["hr", "it"]}}) == ["a"]
    assert select({"tags": {"$gte": "i"}}) == ["a", "b"]


def test_ne_on_a_list_means_no_element_equals() -> None:
    docs: list[tuple[str, Mapping[str, Any]]] = [("x", {"t": ["hr", "legal"]}),
                                                 ("y", {"t": ["legal"]}),
                                                 ("z", {"t": []}), ("w", {"t": [1, None]})]
    assert select({"t": {"$ne": "hr"}}, docs) == ["y"]  # an empty list holds no string


def test_missing_and_null_fields_never_match() -> None:
    docs: list[tuple[str, Mapping[str, Any]]] = [("none", {"x": None}), ("no", {}),
                                                 ("yes", {"x": 1})]
    for raw in ({"x": {"$ne": 5}}, {"x": {"$gte": 0}}, {"x": {"$in": [1, 5]}}):
        assert select(raw, docs) == ["yes"]


def test_a_field_no_document_holds_matches_nothing_without_error() -> None:
    assert select({"owner": "me"}) == []
    assert select({"draft": {"$gte": 1}}, [("d", {"draft": None}), ("e", {})]) == []


def test_a_dotted_name_is_a_plain_key_not_a_path() -> None:
    docs: list[tuple[str, Mapping[str, Any]]] = [("flat", {"author.name": "ann"}),
                                                 ("nested", {"author": {"name": "ann"}})]
    assert select({"author.name": "ann"}, docs) == ["flat"]


# --- refused filters -------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "words"), [
    ({"year": {"$gt": 2020}}, 'unknown operator "$gt"'),
    ({"year": {"$regex": "20.*"}}, 'unknown operator "$regex"'),
    ({"year": {"$gte": 2020, "gt": 1}}, 'unknown operator "gt"'),
    ({"year": {}}, "empty"),
    ({"year": {"from": 2020}}, "nested object"),
    ({"year": [2020, 2021]}, "$in"),
    ({"year": None}, "null"),
    ({"year": {"$ne": None}}, "null"),
    ({"year": {"$in": []}}, "non-empty list"),
    ({"year": {"$in": 2020}}, "non-empty list"),
    ({"year": {"$in": list(range(101))}}, "at most 100"),
    ({"year": {"$in": [1, "a"]}}, "mixes kinds"),
    ({"year": {"$in": [2020, True]}}, "mixes kinds"),
    ({"year": {"$in": [2020, None]}}, "null"),
    ({"year": {"$in": [[2020]]}}, "not a list"),
    ({"year": {"$gte": True}}, "not a boolean"),
    ({"year": {"$lte": [2020]}}, "not a list"),
    ({"year": {"$eq": [2020]}}, "not a list"),
    ({"year": {"$eq": {"a": 1}}}, "not an object"),
    ({"year": {"$gte": 2019, "$lte": "2021-01-01"}}, "different kinds"),
    ({"year": float("nan")}, "finite"),
    ({"year": {"$gte": float("inf")}}, "finite"),
])
def test_bad_conditions_are_refused_naming_the_field(raw: dict[str, Any], words: str) -> None:
    error = refused(raw)
    assert error.message.startswith('Metadata filter on "year": ')
    assert words in error.message
    assert error.hint


def test_the_unknown_operator_message_lists_the_operators() -> None:
    error = refused({"year": {"$gt": 2020}})
    assert error.message == 'Metadata filter on "year": unknown operator "$gt".'
    assert all(op in error.hint for op in ("$eq", "$ne", "$in", "$gte", "$lte"))


@pytest.mark.parametrize(("raw", "name", "words"), [
    ({"$or": [{"a": 1}, {"b": 2}]}, "$or", "not supported"),
    ({"$and": 1}, "$and", "not supported"),
    ({"": 1}, "", "empty"),
    ({"x" * 101: 1}, "x" * 100, "longer than 100"),
])
def test_bad_field_names_are_refused(raw: dict[str, Any], name: str, words: str) -> None:
    message = refused(raw).message
    assert message.startswith(f'Metadata filter on "{name}": ')
    assert words in message


def test_limits_on_the_filter_as_a_whole() -> None:
    assert "at most 20" in refused({f"f{i}": i for i in range(21)}).message
    assert len(MetadataFilter.parse({f"f{i}": i for i in range(20)}).conditions) == 20
    assert len(MetadataFilter.parse({"x" * 100: 1, "t": {"$in": list(range(100))}})
               .conditions) == 2
    assert "JSON object" in refused(["year", 2020]).message
    assert "not a string" in refused({1: 2}).message


# --- the type-mismatch rule ------------------------------------------------------------------


def test_a_number_where_the_documents_hold_strings_is_refused() -> None:
    docs: list[tuple[str, Mapping[str, Any]]] = [("a", {"year": "2020"}), ("b", {"year": "x"}),
                                                 ("c", {})]
    f = MetadataFilter.parse({"year": {"$gte": 2020}})
    with pytest.raises(InvalidFilter) as caught:
        f.select(docs)
    assert caught.value.message == ('Metadata filter on "year": $gte 2020 is a number, but the '
                                    "documents hold strings there.")
    assert "as the documents store it" in caught.value.hint


@pytest.mark.parametrize(("raw", "docs", "words"), [
    ({"dept": {"$in": [1, 2]}}, [("a", {"dept": "hr"})], '$in [1, 2] are numbers, but the '
     "documents hold strings there."),
    ({"at": {"$gte": "2020-01-01"}}, [("a", {"at": "last spring"})], "is a date, but the "
     "documents hold strings"),
    ({"n": "5"}, [("a", {"n": 5}), ("b", {"n": [True, 2]})], "is a string, but the documents "
     "hold booleans and numbers"),
    ({"draft": 1}, [("a", {"draft": True})], "hold booleans"),
    ({"v": "x"}, [("a", {"v": "2021-03-04"})], "hold dates"),
    ({"author": "ann"}, [("a", {"author": {"name": "ann"}})], "hold objects"),
])
def test_a_filter_kind_no_document_holds_is_refused(
        raw: dict[str, Any], docs: list[tuple[str, Mapping[str, Any]]], words: str) -> None:
    f = MetadataFilter.parse(raw)
    with pytest.raises(InvalidFilter) as caught:
        f.select(docs)
    assert caught.value.message.startswith(f'Metadata filter on "{next(iter(raw))}": ')
    assert words in caught.value.message


def test_mismatch_on_objects_says_a_dotted_name_is_not_a_path() -> None:
    with pytest.raises(InvalidFilter) as caught:
        select({"author": "ann"}, [("a", {"author": {"name": "ann"}})])
    assert "not a path" in caught.value.hint


def test_some_documents_of_the_filter_kind_is_not_a_mismatch() -> None:
    docs: list[tuple[str, Mapping[str, Any]]] = [("s", {"year": "2020"}), ("n", {"year": 2019})]
    assert select({"year": {"$gte": 2020}}, docs) == []
    assert select({"year": {"$lte": 2020}}, docs) == ["n"]


# --- cache key, identity, scale --------------------------------------------------------------


def test_cache_key_is_canonical_and_json() -> None:
    one = MetadataFilter.parse({"year": {"$gte": 2020, "$lte": 2021},
                                "dept": {"$in": ["legal", "hr", "legal"]}})
    two = MetadataFilter.parse({"dept": {"$in": ["hr", "legal"]},
                                "year": {"$lte": 2021.0, "$gte": 2020}})
    assert one.cache_key() == two.cache_key()
    assert json.loads(json.dumps(one.cache_key())) == one.cache_key()
    assert one.cache_key() == [["dept", "$in", ["hr", "legal"]], ["year", "$gte", 2020],
                               ["year", "$lte", 2021]]
    many = MetadataFilter.parse({"d": {"$in": ["pear", "fig", "apple", "kiwi", "date", "fig"]}})
    assert many.cache_key() == [["d", "$in", ["apple", "date", "fig", "kiwi", "pear"]]]


def test_cache_key_tells_different_filters_apart() -> None:
    keys = [MetadataFilter.parse(raw).cache_key() for raw in (
        {"year": 2020}, {"year": "2020"}, {"year": {"$ne": 2020}}, {"year": {"$gte": 2020}},
        {"dept": {"$in": ["hr"]}}, {"dept": {"$in": ["hr", "it"]}}, {"at": "2021-03-04"},
        {"at": "2021-03-04T00:00:00Z"}, {"flag": True}, {"flag": 1}, {})]
    assert len({json.dumps(k) for k in keys}) == len(keys)


def test_cache_key_agrees_where_dates_mean_the_same_instant() -> None:
    keys = {json.dumps(MetadataFilter.parse({"at": {"$gte": at}}).cache_key())
            for at in ("2021-03-04T10:00:00", "2021-03-04T10:00:00Z",
                       "2021-03-04T11:00:00+01:00", "2021-03-04 10:00")}
    assert len(keys) == 1


def test_equal_filters_are_equal_and_hashable() -> None:
    one = MetadataFilter.parse({"dept": "hr", "year": {"$gte": 2020}})
    two = MetadataFilter.parse({"dept": {"$eq": "hr"}, "year": {"$gte": 2020}})
    assert one == two and hash(one) == hash(two)
    assert one != MetadataFilter.parse({"dept": "hr"})


def test_ten_thousand_documents_agree_with_a_plain_reading_of_the_filter() -> None:
    rng = random.Random(7)
    docs: list[tuple[str, Mapping[str, Any]]] = [
        (f"doc{i}", {"year": rng.choice([2018, 2020, 2022.0, "2021", None]),
                     "dept": rng.choice(["hr", "legal", "it", ["hr", "it"]]),
                     "at": f"2021-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T10:00:00Z"})
        for i in range(10_000)]
    raw = {"year": {"$gte": 2019, "$lte": 2022}, "dept": {"$in": ["hr", "legal"]},
           "at": {"$lte": "2021-05-10"}}

    def expected(m: Mapping[str, Any]) -> bool:
        year, dept = m["year"], m["dept"]
        depts = dept if isinstance(dept, list) else [dept]
        return (isinstance(year, int | float) and 2019 <= year <= 2022
                and any(d in ("hr", "legal") for d in depts) and m["at"][:10] <= "2021-05-10")

    chosen = select(raw, docs)
    assert chosen == [i for i, m in docs if expected(m)]
    assert 0 < len(chosen) < len(docs)
