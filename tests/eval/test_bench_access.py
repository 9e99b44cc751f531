"""`rag bench`'s access section: a tenant's key over a corpus it may read a tenth of, at a
small size (nothing is timed; the invariants are checked)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from eval.bench.access import ACME, NOTRE_DAME, access_corpus, bench_access
from eval.bench.measure import BenchOptions
from eval.bench.run import access_figures
from eval.suites import load_suite


def test_corpus_gives_acme_a_tenth_and_the_others_remixes(embedder: Any) -> None:
    from rag.documents.chunking import Chunker
    from rag.documents.sentences import sentence_spans

    suite = load_suite(NOTRE_DAME)
    chunker = Chunker(embedder.tokenizer, 200, 40)
    docs = access_corpus(suite, 800, chunker)
    chunks: dict[str, int] = {}
    for doc in docs:
        chunks[doc.document.tenant] = chunks.get(doc.document.tenant, 0) + len(doc.chunks)
    assert sum(chunks.values()) == 800 and chunks[ACME] == 80 and len(chunks) == 10
    paragraphs = {d.filename: (d.path.read_text() if d.path else d.text) for d in suite.corpus}
    acme = {d.document.filename for d in docs if d.document.tenant == ACME}
    assert set(paragraphs) <= acme  # the answering paragraphs are acme's, and only acme's
    others = [d for d in docs if d.document.tenant != ACME]
    assert not {d.document.filename for d in others} & set(paragraphs)
    assert all(len(d.chunks) == 1 for d in others)
    # another tenant's document is made of Notre Dame sentences (hard distractors)
    sentences = sorted({str(t)[a:b] for t in paragraphs.values()
                        for a, b in sentence_spans(str(t))}, key=len, reverse=True)
    assert all(not _without(d.chunks[0].text, sentences).strip() for d in others)
    assert len({d.document.id for d in docs}) == len(docs)
    with pytest.raises(ValueError, match="740 or more"):
        access_corpus(suite, 500, chunker)


@pytest.mark.slow
def test_a_restricted_key_keeps_its_recall_and_sees_only_its_tenant(
    make_service: Any, tmp_path: Path
) -> None:
    service = make_service(max_new_tokens=8)
    options = BenchOptions(access_chunks=1000, access_questions=40, access_asks=2)
    result = json.loads(json.dumps(bench_access(service, options, tmp_path / "bench",
                                                lambda *_: None)))
    assert (result["chunks"], result["acme_chunks"], result["tenants"]) == (1000, 100, 10)
    assert result["questions"] == 40 and result["index_kind"] == "flat"
    assert result["restricted_foreign_results"] == 0  # never another tenant's chunk
    # filtering before ranking costs no recall that filtering afterwards would keep
    assert result["restricted_recall_at_5"] >= result["post_filter_recall_at_5"]
    assert result["restricted_recall_at_5"] > 0.5
    assert result["post_filter_mean_results"] < 5  # others' remixes took slots
    ask = result["ask"]
    assert ask["questions"] == 2 and ask["max_new_tokens"] == 8
    for side in ("restricted", "unrestricted"):
        assert ask[side]["cached"] == 0  # every answer made afresh
        assert ask[side]["answered"] + ask[side]["abstained"] == 2
    assert ask["restricted"]["foreign_citations"] == 0
    figures = access_figures(result)
    assert figures["restricted_recall_at_5"] == result["restricted_recall_at_5"]
    numbers = {k: v for k, v in figures.items() if k != "ask_both_answered_p50_ratio"}
    assert all(isinstance(v, int | float) and math.isfinite(v) and v >= 0
               for v in numbers.values()), numbers
    for ratio in ("retrieval_p50_ratio", "ask_p50_ratio"):
        assert figures[ratio] > 0
    assert access_figures({}) == {}


def _without(text: str, parts: list[str]) -> str:
    for part in parts:
        text = text.replace(part, "")
    return text
