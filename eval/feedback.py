"""Rated answers as a JSONL suite: a thumbs-down becomes a regression case.

Each rating is one item: the question, the turns it was asked after (`history`), and what to
score it by. A rating up makes its answer the reference and its cited documents the relevant
ones; a rating down scores by the expected answer, when the rater gave one. Every item keeps the
rating, comment and the answer that was rated under `feedback`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from rag.types import Feedback

Which = Literal["all", "up", "down"]


def suite_item(feedback: Feedback) -> dict[str, Any]:
    """One JSONL item of the rating (the format `rag eval run` loads)."""
    item: dict[str, Any] = {"id": feedback.id, "question": feedback.question}
    if feedback.history:
        item["history"] = [{"question": t.question, "answer": t.answer}
                           for t in feedback.history]
    answers = [feedback.expected] if feedback.expected else []
    if feedback.rating == "up":
        answers = answers or [feedback.answer]
        if feedback.documents:
            item["relevant"] = list(feedback.documents)
    if answers:
        item["answers"] = answers
    item["feedback"] = {"rating": feedback.rating, "comment": feedback.comment,
                        "answer": feedback.answer, "answer_id": feedback.answer_id,
                        "created_at": feedback.created_at}
    return item


def export(feedback: Iterable[Feedback], out: Path, which: Which = "all") -> int:
    """Write the chosen ratings to `out` as JSONL; returns how many."""
    items = [suite_item(f) for f in feedback if which in ("all", f.rating)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items),
                   encoding="utf-8")
    return len(items)


def counts(feedback: Sequence[Feedback]) -> dict[str, int]:
    return {r: sum(f.rating == r for f in feedback) for r in ("up", "down")}
