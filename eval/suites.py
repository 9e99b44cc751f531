"""Evaluation suites: questions with references and relevant documents, and their corpus.

Formats: a suite folder (`suite.json` naming a corpus and a question file), JSONL question
files, SQuAD v1.1/v2.0 JSON (its paragraphs become the corpus) and BEIR folders (corpus.jsonl,
queries.jsonl, qrels/*.tsv). Every loader validates its input and names the line or field that
is wrong in a `SuiteError`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import UnionType
from typing import Any, Literal

from rag.types import Turn

SuiteFormat = Literal["jsonl", "squad", "beir"]
CORPUS_SUFFIXES = (".md", ".txt", ".rst", ".html", ".htm", ".pdf", ".docx", ".pptx", ".xlsx",
                   ".csv", ".json", ".xml", ".eml", ".epub", ".odt", ".rtf")


class SuiteError(ValueError):
    """A suite file is malformed; the message names the file and the line or field."""


@dataclass(frozen=True)
class SuiteItem:
    """One question: its references, the relevant documents (key -> grade) and answerability."""

    id: str
    question: str
    answers: tuple[str, ...] = ()
    relevant: Mapping[str, int] = field(default_factory=dict)
    answerable: bool = True
    # A turn of a conversation: the turns before it (their first reference as the answer).
    history: tuple[Turn, ...] = ()
    conversation: str = ""
    turn: int = 1

    @property
    def followup(self) -> bool:
        return bool(self.history)


@dataclass(frozen=True)
class CorpusDocument:
    """A document to ingest: a file on disk, or a text to write into `filename` first."""

    key: str
    filename: str
    path: Path | None = None
    text: str | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    format: SuiteFormat
    source: str
    items: tuple[SuiteItem, ...]
    corpus: tuple[CorpusDocument, ...] = ()
    description: str = ""

    def limited(self, limit: int | None, skip: int = 0) -> Suite:
        """`limit` items (all when None) after the first `skip`: a fixed slice of the suite."""
        if limit is None and not skip:
            return self
        end = None if limit is None else skip + limit
        return Suite(self.name, self.format, self.source, self.items[skip:end], self.corpus,
                     self.description)


def load_suite(path: Path, split: str = "test") -> Suite:
    """Load a suite folder, a JSONL or SQuAD file, or a BEIR folder (qrels `split`)."""
    if path.is_dir():
        if (path / "suite.json").is_file():
            return load_suite_folder(path)
        if (path / "corpus.jsonl").is_file():
            return load_beir(path, split)
        raise SuiteError(f"{path}: a suite folder needs suite.json, a BEIR folder corpus.jsonl.")
    if not path.is_file():
        raise SuiteError(f"{path}: no such file or folder.")
    if path.suffix == ".jsonl":
        return load_jsonl(path)
    if path.suffix == ".json":
        return load_squad(path)
    raise SuiteError(f"{path}: expected a .jsonl or SQuAD .json file, or a folder.")


# --- suite folders ------------------------------------------------------------------------


def load_suite_folder(folder: Path) -> Suite:
    """`suite.json`: {name, format, questions, corpus?, description?}; paths are relative."""
    spec_path = folder / "suite.json"
    spec = _read_json(spec_path)
    if not isinstance(spec, dict):
        raise SuiteError(f"{spec_path}: expected a JSON object.")
    name = _field(spec, "name", str, spec_path, default=folder.name)
    fmt = _field(spec, "format", str, spec_path, default="jsonl")
    questions = folder / _field(spec, "questions", str, spec_path)
    corpus_name = _field(spec, "corpus", str, spec_path, default="")
    description = _field(spec, "description", str, spec_path, default="")
    match fmt:
        case "jsonl":
            suite = load_jsonl(questions, (folder / corpus_name).resolve() if corpus_name else None)
        case "squad":
            suite = load_squad(questions)
        case "beir":
            suite = load_beir(questions)
        case _:
            raise SuiteError(f"{spec_path}: field 'format' must be jsonl, squad or beir, "
                             f"not {fmt!r}.")
    return Suite(name, suite.format, str(folder), suite.items, suite.corpus, description)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}.") from exc
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read: {exc.strerror}.") from exc


def _field(data: Mapping[str, Any], name: str, kind: type[Any] | UnionType, where: object,
           default: Any = ...) -> Any:
    """`data[name]` checked to be a `kind`; `where` prefixes the error message."""
    if name not in data:
        if default is ...:
            raise SuiteError(f"{where}: field {name!r} is missing.")
        return default
    value = data[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        wanted = getattr(kind, "__name__", str(kind))
        raise SuiteError(f"{where}: field {name!r} must be {wanted}, not {type(value).__name__}.")
    return value


def folder_corpus(folder: Path) -> tuple[CorpusDocument, ...]:
    """Every non-hidden file under `folder`, keyed by its path relative to it."""
    if not folder.is_dir():
        raise SuiteError(f"{folder}: the corpus folder does not exist.")
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".")
                                              for part in p.relative_to(folder).parts))
    return tuple(CorpusDocument(p.relative_to(folder).as_posix(), p.name, path=p) for p in files)


# --- JSONL --------------------------------------------------------------------------------


def load_jsonl(path: Path, corpus: Path | None = None) -> Suite:
    """One question per line: {id?, question, answers?, relevant?, answerable?}, or one
    conversation per line: {id?, turns: [{question, answers?, relevant?, answerable?}, ...]}
    (its turns become items `<id>.<n>`, each with the turns before it as history)."""
    items = [item for n, obj in _jsonl_lines(path)
             for item in _jsonl_items(obj, f"{path}: line {n}", n)]
    _check_unique(items, path)
    if not items:
        raise SuiteError(f"{path}: holds no questions.")
    docs = folder_corpus(corpus) if corpus is not None else ()
    _check_relevant_known(items, docs, path)
    return Suite(path.stem, "jsonl", str(path), tuple(items), docs)


def _jsonl_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read: {exc.strerror}.") from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{path}: line {n}: invalid JSON: {exc.msg}.") from exc
        if not isinstance(obj, dict):
            raise SuiteError(f"{path}: line {n}: expected a JSON object.")
        yield n, obj


def _jsonl_items(obj: Mapping[str, Any], where: str, n: int) -> list[SuiteItem]:
    if "turns" not in obj:
        return [_jsonl_item(obj, where, n)]
    turns = _field(obj, "turns", list, where)
    if not turns or not all(isinstance(t, dict) for t in turns):
        raise SuiteError(f"{where}: field 'turns' must be a non-empty list of objects.")
    conversation = str(obj.get("id", f"line-{n}"))
    items: list[SuiteItem] = []
    history: tuple[Turn, ...] = ()
    for number, turn in enumerate(turns, start=1):
        item = _jsonl_item({**turn, "id": f"{conversation}.{number}"},
                           f"{where}: turn {number}", n)
        items.append(replace(item, history=history, conversation=conversation, turn=number))
        said = item.answers[0] if item.answers else "The documents do not contain this."
        history = (*history, Turn(item.question, said))
    return items


def _jsonl_item(obj: Mapping[str, Any], where: str, n: int) -> SuiteItem:
    question = _field(obj, "question", str, where).strip()
    if not question:
        raise SuiteError(f"{where}: field 'question' is empty.")
    item_id = obj.get("id", f"line-{n}")
    if not isinstance(item_id, str | int) or isinstance(item_id, bool):
        raise SuiteError(f"{where}: field 'id' must be a string or an integer.")
    answers = _string_list(obj.get("answers", []), "answers", where)
    answerable = _field(obj, "answerable", bool, where, default=True)
    relevant = _grades(obj.get("relevant", []), where)
    if not answerable and (answers or relevant):
        raise SuiteError(f"{where}: an unanswerable question has no answers or relevant docs.")
    history = _history(obj.get("history", []), where)
    return SuiteItem(str(item_id), question, tuple(answers), relevant, answerable, history,
                     str(item_id) if history else "", len(history) + 1)


def _history(value: Any, where: str) -> tuple[Turn, ...]:
    """`history`: earlier turns [{question, answer}], oldest first."""
    if not isinstance(value, list) or not all(
            isinstance(t, dict) and isinstance(t.get("question"), str)
            and isinstance(t.get("answer"), str) for t in value):
        raise SuiteError(f"{where}: field 'history' must be a list of "
                         "{\"question\": ..., \"answer\": ...} objects.")
    return tuple(Turn(t["question"], t["answer"]) for t in value)


def _string_list(value: Any, name: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise SuiteError(f"{where}: field {name!r} must be a list of non-empty strings.")
    return value


def _grades(value: Any, where: str) -> dict[str, int]:
    """`relevant`: a list of document keys (grade 1) or an object key -> integer grade."""
    if isinstance(value, list):
        return dict.fromkeys(_string_list(value, "relevant", where), 1)
    if isinstance(value, dict) and all(isinstance(g, int) and not isinstance(g, bool) and g >= 0
                                       for g in value.values()):
        return {str(k): int(v) for k, v in value.items()}
    raise SuiteError(f"{where}: field 'relevant' must be a list of document names or an "
                     "object mapping names to grades (integers >= 0).")


def _check_unique(items: list[SuiteItem], path: Path) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise SuiteError(f"{path}: id {item.id!r} appears more than once.")
        seen.add(item.id)


def _check_relevant_known(
    items: list[SuiteItem], docs: tuple[CorpusDocument, ...], path: Path
) -> None:
    """With a corpus, every relevant key must name one of its documents."""
    if not docs:
        return
    keys = {d.key for d in docs} | {d.filename for d in docs}
    for item in items:
        unknown = sorted(set(item.relevant) - keys)
        if unknown:
            raise SuiteError(f"{path}: question {item.id!r}: relevant document {unknown[0]!r} "
                             "is not in the corpus.")


# --- SQuAD --------------------------------------------------------------------------------


def load_squad(path: Path) -> Suite:
    """SQuAD v1.1/v2.0: each paragraph is a corpus document, relevant to its questions."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise SuiteError(f"{path}: field 'data' must be a list of articles (SQuAD format).")
    items: list[SuiteItem] = []
    docs: list[CorpusDocument] = []
    for a, article in enumerate(data["data"]):
        where = f"{path}: data[{a}]"
        if not isinstance(article, dict):
            raise SuiteError(f"{where}: expected an object.")
        title = _field(article, "title", str, where, default=f"article-{a}")
        paragraphs = _field(article, "paragraphs", list, where)
        for p, paragraph in enumerate(paragraphs):
            key = f"{_slug(title)}-{a:04d}-{p:03d}.txt"
            pwhere = f"{where}.paragraphs[{p}]"
            if not isinstance(paragraph, dict):
                raise SuiteError(f"{pwhere}: expected an object.")
            context = _field(paragraph, "context", str, pwhere)
            docs.append(CorpusDocument(key, key, text=context))
            for q, qa in enumerate(_field(paragraph, "qas", list, pwhere)):
                items.append(_squad_item(qa, key, f"{pwhere}.qas[{q}]"))
    _check_unique(items, path)
    if not items:
        raise SuiteError(f"{path}: holds no questions.")
    return Suite(path.stem, "squad", str(path), tuple(items), tuple(docs))


def _squad_item(qa: Any, key: str, where: str) -> SuiteItem:
    if not isinstance(qa, dict):
        raise SuiteError(f"{where}: expected an object.")
    qid = str(_field(qa, "id", str | int, where))
    question = _field(qa, "question", str, where).strip()
    impossible = _field(qa, "is_impossible", bool, where, default=False)
    answers = []
    for n, answer in enumerate(_field(qa, "answers", list, where)):
        if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
            raise SuiteError(f"{where}.answers[{n}]: field 'text' must be a string.")
        answers.append(answer["text"])
    if not question:
        raise SuiteError(f"{where}: field 'question' is empty.")
    if not impossible and not answers:
        raise SuiteError(f"{where}: an answerable question needs at least one answer.")
    if impossible:
        return SuiteItem(qid, question, (), {}, answerable=False)
    return SuiteItem(qid, question, tuple(dict.fromkeys(answers)), {key: 1})


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "untitled"


# --- BEIR ---------------------------------------------------------------------------------


def load_beir(folder: Path, split: str = "test") -> Suite:
    """corpus.jsonl {_id, title?, text}, queries.jsonl {_id, text}, qrels/<split>.tsv."""
    docs = tuple(_beir_doc(obj, n, f"{folder / 'corpus.jsonl'}: line {n}")
                 for n, obj in _jsonl_lines(folder / "corpus.jsonl"))
    if len({d.key for d in docs}) != len(docs):
        raise SuiteError(f"{folder / 'corpus.jsonl'}: a document _id appears more than once.")
    queries: dict[str, str] = {}
    for n, obj in _jsonl_lines(folder / "queries.jsonl"):
        where = f"{folder / 'queries.jsonl'}: line {n}"
        queries[str(_field(obj, "_id", str | int, where))] = _field(obj, "text", str, where)
    qrels = _beir_qrels(_qrels_file(folder, split), {d.key for d in docs}, set(queries))
    items = tuple(SuiteItem(qid, queries[qid], (), grades) for qid, grades in qrels.items())
    if not items:
        raise SuiteError(f"{folder}: no query has a relevance judgement.")
    return Suite(folder.name, "beir", str(folder), items, docs)


def _beir_doc(obj: Mapping[str, Any], n: int, where: str) -> CorpusDocument:
    key = str(_field(obj, "_id", str | int, where))
    title = _field(obj, "title", str, where, default="")
    text = _field(obj, "text", str, where)
    body = f"{title}\n\n{text}" if title.strip() else text
    if not body.strip():
        raise SuiteError(f"{where}: document {key!r} has no text.")
    return CorpusDocument(key, f"{n:07d}-{_slug(key)}.txt", text=body)


def _qrels_file(folder: Path, split: str) -> Path:
    qrels = folder / "qrels"
    wanted = qrels / f"{split}.tsv"
    if wanted.is_file():
        return wanted
    found = sorted(qrels.glob("*.tsv"))
    if len(found) == 1:
        return found[0]
    raise SuiteError(f"{qrels}: expected {wanted.name}"
                     + (f" (found {', '.join(p.name for p in found)})." if found else "."))


def _beir_qrels(path: Path, docs: set[str], queries: set[str]) -> dict[str, dict[str, int]]:
    """query id -> {document id: grade}; the header line is optional."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not row or (n == 1 and row[0] == "query-id"):
                continue
            where = f"{path}: line {n}"
            if len(row) != 3:
                raise SuiteError(f"{where}: expected 3 tab-separated columns "
                                 "(query-id, corpus-id, score).")
            qid, did, score = row
            if qid not in queries:
                raise SuiteError(f"{where}: query {qid!r} is not in queries.jsonl.")
            if did not in docs:
                raise SuiteError(f"{where}: document {did!r} is not in corpus.jsonl.")
            try:
                qrels.setdefault(qid, {})[did] = int(score)
            except ValueError as exc:
                raise SuiteError(f"{where}: score {score!r} is not an integer.") from exc
    return qrels
