"""Ranking helpers shared by the ask stages: reciprocal rank fusion of two ranked lists.

Retrieval fuses dense and BM25 chunk rankings with it (`rag.ask.retrieve`), and evidence
selection fuses dense and BM25 sentence rankings the same way (`rag.ask.evidence`).
"""

from __future__ import annotations

from collections.abc import Sequence


def fuse(
    dense: Sequence[tuple[int, float]], sparse: Sequence[tuple[int, float]], k: int
) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: score(d) = sum over lists of 1 / (k + rank), rank from 1."""
    totals: dict[int, float] = {}
    for ranking in (dense, sparse):
        for rank, (cid, _) in enumerate(ranking, start=1):
            totals[cid] = totals.get(cid, 0.0) + 1.0 / (k + rank)
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))
