"""Retrieval of follow-up turns four ways, for the closing note of conversations.

    python -m tests.eval.measure_followups

Over the shipped sample corpus and eval/suites/followups (gold history: earlier questions and
their first reference answer), each follow-up turn is retrieved with: its own words alone; the
deterministic terms rewrite (rag.ask.rewrite, what the service does); a standalone question the
packaged generator condenses from the history; and the last two fused by reciprocal rank.
Prints JSON: document-level hit@1, hit@3 and MRR of each, and the condense time per turn.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval import metrics as m
from eval.suites import SuiteItem, load_suite
from rag.ask.ranking import fuse
from rag.ask.rewrite import rewrite
from rag.service import RagService
from rag.settings import Settings
from rag.types import Prompt, Query, ScoredChunk, Turn

ROOT = Path(__file__).resolve().parents[2]
DEPTH = 10
CONDENSE = ("Rewrite the last question so that it can be understood without the conversation. "
            "Keep it short. Answer with the rewritten question only.")


def condense(service: RagService, question: str, history: Sequence[Turn]) -> str:
    """The generator's standalone version of `question` (greedy, at most 40 tokens)."""
    lines = "".join(f"Q: {t.question}\nA: {t.answer}\n" for t in history)
    messages = [{"role": "system", "content": CONDENSE},
                {"role": "user", "content": f"{lines}Last question: {question}"}]
    tokenizer = service.generator.tokenizer
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    prompt = Prompt(tuple(messages), tuple(ids), (), (), len(ids), 0)
    text = "".join(service.generator.stream(prompt, 40, None)).strip().split("\n")[0]
    return text or question


def ranking(chunks: Sequence[ScoredChunk]) -> list[str]:
    return [c.filename for c in chunks]


def scores(rank: list[str], item: SuiteItem) -> dict[str, float | None]:
    return {"hit@1": m.hit_at_k(rank, item.relevant, 1),
            "hit@3": m.hit_at_k(rank, item.relevant, 3),
            "mrr": m.reciprocal_rank(rank, item.relevant)}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    suite = load_suite(ROOT / "eval" / "suites" / "followups")
    with tempfile.TemporaryDirectory() as tmp:
        service = RagService(Settings(data_dir=Path(tmp),
                                      converted_models_dir=ROOT / "data" / "models"))
        service.load()
        for path in sorted((ROOT / "rag" / "samples").iterdir()):
            service.documents.ingest_file(path)
        retriever = service.asking.retriever
        assert retriever is not None

        def search(text: str) -> list[ScoredChunk]:
            assert retriever is not None
            return retriever.retrieve(Query(text, DEPTH))

        rows: dict[str, list[dict[str, float | None]]] = {
            "alone": [], "terms": [], "condensed": [], "terms+condensed": []}
        seconds, examples = [], []
        for item in (i for i in suite.items if i.followup):
            started = time.perf_counter()
            condensed = condense(service, item.question, item.history)
            seconds.append(time.perf_counter() - started)
            terms_query = rewrite(item.question, item.history)
            rows["alone"].append(scores(ranking(search(item.question)), item))
            by_terms, by_condensed = search(terms_query), search(condensed)
            rows["terms"].append(scores(ranking(by_terms), item))
            rows["condensed"].append(scores(ranking(by_condensed), item))
            fused = fuse([(c.chunk.id, c.score) for c in by_terms],
                         [(c.chunk.id, c.score) for c in by_condensed], 60)
            names = {c.chunk.id: c.filename for c in (*by_terms, *by_condensed)}
            rows["terms+condensed"].append(scores([names[i] for i, _ in fused], item))
            examples.append({"id": item.id, "question": item.question, "terms": terms_query,
                             "condensed": condensed})
        service.store.close()
    result: dict[str, Any] = {
        "turns": len(seconds),
        **{way: {name: m.mean(r[name] for r in found) for name in ("hit@1", "hit@3", "mrr")}
           for way, found in rows.items()},
        "condense_ms_mean": round(1000 * sum(seconds) / len(seconds), 1),
        "examples": examples[:8],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
