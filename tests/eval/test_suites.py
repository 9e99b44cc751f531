"""Suite loaders: valid inputs load, malformed ones name the line or field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.suites import SuiteError, load_beir, load_jsonl, load_squad, load_suite

SUITES = Path(__file__).parents[2] / "eval" / "suites"
SAMPLE = SUITES / "sample"
NOTRE_DAME = SUITES / "notre-dame"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, *objects: object) -> Path:
    return _write(path, "\n".join(json.dumps(o) for o in objects) + "\n")


def test_shipped_sample_suite() -> None:
    suite = load_suite(SAMPLE)
    assert suite.name == "sample"
    assert len(suite.items) >= 30
    assert sum(not i.answerable for i in suite.items) == 6
    keys = {d.key for d in suite.corpus}
    assert len(keys) == 8
    assert all(d.path is not None and d.path.is_file() for d in suite.corpus)
    assert {k for i in suite.items for k in i.relevant} == keys  # every document is asked about
    assert all(i.answers and i.relevant for i in suite.items if i.answerable)


def test_shipped_notre_dame_suite() -> None:
    suite = load_suite(NOTRE_DAME)
    assert (suite.name, len(suite.items), len(suite.corpus)) == ("notre-dame", 269, 55)
    assert all(i.answerable and len(i.relevant) == 1 for i in suite.items)
    texts = {d.key: d.path.read_text(encoding="utf-8") for d in suite.corpus if d.path}
    assert len(texts) == 55 and len(set(texts.values())) == 55  # no two paragraphs alike
    # every reference answer is in the paragraph marked relevant, as SQuAD promises
    assert all(any(a in texts[k] for a in i.answers) for i in suite.items for k in i.relevant)
    assert {k for i in suite.items for k in i.relevant} == set(texts)
    readme = (NOTRE_DAME / "README.md").read_text(encoding="utf-8")
    assert "SQuAD v1.1" in readme and "CC BY-SA 4.0" in readme and "Rajpurkar" in readme


def test_jsonl_defaults_and_graded_relevance(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl",
                  {"question": "Q one?", "answers": ["a"], "relevant": ["x.txt"]},
                  {"id": 7, "question": "Q two?", "relevant": {"x.txt": 2, "y.txt": 1}},
                  {"id": "u", "question": "Q three?", "answerable": False})
    suite = load_jsonl(path)
    first, second, third = suite.items
    assert (first.id, first.answers, dict(first.relevant)) == ("line-1", ("a",), {"x.txt": 1})
    assert (second.id, dict(second.relevant)) == ("7", {"x.txt": 2, "y.txt": 1})
    assert not third.answerable and suite.corpus == ()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"question": "ok?"}\n{"question": "bad?"', "line 2: invalid JSON"),
        ('{"question": "ok?"}\n\n["q"]', "line 3: expected a JSON object"),
        ('{"answers": ["a"]}', "line 1: field 'question' is missing"),
        ('{"question": 5}', "line 1: field 'question' must be str"),
        ('{"question": "  "}', "line 1: field 'question' is empty"),
        ('{"question": "q?", "answers": "a"}', "line 1: field 'answers' must be a list"),
        ('{"question": "q?", "answerable": "no"}', "line 1: field 'answerable' must be bool"),
        ('{"question": "q?", "relevant": {"d": -1}}', "line 1: field 'relevant' must be"),
        ('{"question": "q?", "answerable": false, "answers": ["a"]}', "line 1: an unanswerable"),
        ('{"id": "a", "question": "q?"}\n{"id": "a", "question": "r?"}', "id 'a' appears"),
        ("\n\n", "holds no questions"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, lines: str, message: str) -> None:
    path = _write(tmp_path / "q.jsonl", lines)
    with pytest.raises(SuiteError, match=message) as info:
        load_jsonl(path)
    assert str(path) in str(info.value)


def test_suite_folder_checks_relevant_documents_exist(tmp_path: Path) -> None:
    _write(tmp_path / "docs" / "a.txt", "alpha")
    _jsonl(tmp_path / "s" / "q.jsonl", {"id": "q1", "question": "q?", "relevant": ["b.txt"]})
    _write(tmp_path / "s" / "suite.json",
           json.dumps({"name": "s", "questions": "q.jsonl", "corpus": "../docs"}))
    with pytest.raises(SuiteError, match="question 'q1': relevant document 'b.txt'"):
        load_suite(tmp_path / "s")


def test_suite_folder_errors(tmp_path: Path) -> None:
    _write(tmp_path / "suite.json", json.dumps({"name": "s", "format": "csv", "questions": "q"}))
    with pytest.raises(SuiteError, match="field 'format' must be jsonl, squad or beir"):
        load_suite(tmp_path)
    _write(tmp_path / "suite.json", json.dumps({"name": "s"}))
    with pytest.raises(SuiteError, match="field 'questions' is missing"):
        load_suite(tmp_path)
    with pytest.raises(SuiteError, match="no such file"):
        load_suite(tmp_path / "missing.jsonl")


def _squad(qas: list[object], version: str = "v2.0") -> dict[str, object]:
    return {"version": version, "data": [{"title": "Normans", "paragraphs": [
        {"context": "The Normans were in Normandy.", "qas": qas}]}]}


def test_squad_v2(tmp_path: Path) -> None:
    data = _squad([
        {"id": "a1", "question": "Where were the Normans?",
         "answers": [{"text": "Normandy", "answer_start": 20},
                     {"text": "Normandy", "answer_start": 20}]},
        {"id": "a2", "question": "Who ruled Mars?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Normans", "answer_start": 4}]},
    ])
    suite = load_squad(_write(tmp_path / "dev.json", json.dumps(data)))
    answerable, impossible = suite.items
    assert len(suite.corpus) == 1
    doc = suite.corpus[0]
    assert doc.text == "The Normans were in Normandy." and doc.key.startswith("Normans-")
    assert answerable.answers == ("Normandy",) and dict(answerable.relevant) == {doc.key: 1}
    assert not impossible.answerable and impossible.relevant == {}


@pytest.mark.parametrize(
    ("qas", "message"),
    [
        ([{"id": "a", "answers": []}], r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: field 'question'"),
        ([{"id": "a", "question": "q?", "answers": [{"answer_start": 1}]}],
         r"qas\[0\]\.answers\[0\]: field 'text'"),
        ([{"id": "a", "question": "q?", "answers": []}], r"qas\[0\]: an answerable question"),
    ],
)
def test_squad_errors_name_the_field(tmp_path: Path, qas: list[object], message: str) -> None:
    path = _write(tmp_path / "dev.json", json.dumps(_squad(qas, "1.1")))
    with pytest.raises(SuiteError, match=message):
        load_squad(path)


def test_squad_needs_data(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="field 'data'"):
        load_squad(_write(tmp_path / "x.json", '{"version": "1.1"}'))


def _beir(folder: Path, qrels: str) -> Path:
    _jsonl(folder / "corpus.jsonl", {"_id": "d1", "title": "T", "text": "one"},
           {"_id": "d2", "text": "two"}, {"_id": "d3", "text": "three"})
    _jsonl(folder / "queries.jsonl", {"_id": "q1", "text": "first?"},
           {"_id": "q2", "text": "second?"}, {"_id": "q3", "text": "unjudged?"})
    _write(folder / "qrels" / "test.tsv", qrels)
    return folder


def test_beir(tmp_path: Path) -> None:
    folder = _beir(tmp_path / "b", "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\nq2\td3\t1\n")
    suite = load_suite(folder)
    assert suite.format == "beir"
    assert [i.id for i in suite.items] == ["q1", "q2"]  # q3 has no judgement
    assert dict(suite.items[0].relevant) == {"d1": 2, "d2": 1}
    assert suite.corpus[0].text == "T\n\none" and suite.corpus[1].text == "two"
    assert len({d.filename for d in suite.corpus}) == 3


@pytest.mark.parametrize(
    ("qrels", "message"),
    [
        ("q1\td9\t1\n", r"test.tsv: line 1: document 'd9' is not in corpus.jsonl"),
        ("query-id\tcorpus-id\tscore\nq1\td1\n", r"test.tsv: line 2: expected 3"),
        ("q1\td1\thigh\n", r"line 1: score 'high' is not an integer"),
        ("q7\td1\t1\n", r"line 1: query 'q7' is not in queries.jsonl"),
    ],
)
def test_beir_errors_name_the_line(tmp_path: Path, qrels: str, message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        load_beir(_beir(tmp_path / "b", qrels))


def test_beir_corpus_errors(tmp_path: Path) -> None:
    folder = _beir(tmp_path / "b", "q1\td1\t1\n")
    _write(folder / "corpus.jsonl", '{"_id": "d1", "text": "one"}\n{"_id": "d2"}\n')
    with pytest.raises(SuiteError, match=r"corpus.jsonl: line 2: field 'text' is missing"):
        load_beir(folder)


def test_limit_keeps_the_first_items() -> None:
    suite = load_suite(SAMPLE).limited(3)
    assert [i.id for i in suite.items] == ["q01", "q02", "q03"]


def test_shipped_followups_suite() -> None:
    suite = load_suite(SUITES / "followups")
    conversations = {i.conversation for i in suite.items}
    assert len(conversations) >= 20 and all(conversations)
    later = [i for i in suite.items if i.turn > 1]
    assert len(later) >= 30 and all(i.followup and len(i.history) == i.turn - 1 for i in later)
    assert all(i.answers and i.relevant for i in suite.items)
    assert {k for i in suite.items for k in i.relevant} <= {d.key for d in suite.corpus}
    # Later turns lean on the earlier ones: each says "it", "that", "and ..." or the like.
    from rag.ask.rewrite import refers_back

    assert all(refers_back(i.question) for i in later), [
        i.question for i in later if not refers_back(i.question)]
    first = next(i for i in suite.items if i.id == "c01.3")
    assert [t.question for t in first.history][0].startswith("Which embedding model")
    assert first.history[1].answer == "384"  # the first reference is what was said


def test_conversation_lines_and_history(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl",
                  {"id": "c1", "turns": [{"question": "What is X?", "answers": ["x"]},
                                         {"question": "And its size?", "answerable": False}]},
                  {"id": "h1", "question": "Why?",
                   "history": [{"question": "What is X?", "answer": "x"}]})
    items = {i.id: i for i in load_jsonl(path).items}
    assert set(items) == {"c1.1", "c1.2", "h1"}
    assert items["c1.2"].history[0].answer == "x" and items["c1.2"].turn == 2
    assert items["h1"].followup and items["h1"].turn == 2 and items["h1"].conversation == "h1"
    assert not items["c1.1"].followup


@pytest.mark.parametrize(("obj", "message"), [
    ({"id": "c", "turns": []}, "non-empty list"),
    ({"id": "c", "turns": [{"answers": ["x"]}]}, "turn 1: field 'question' is missing"),
    ({"question": "Why?", "history": [{"question": "q"}]}, "field 'history'"),
])
def test_conversation_errors_name_the_turn(tmp_path: Path, obj: object, message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        load_jsonl(_jsonl(tmp_path / "bad.jsonl", obj))
