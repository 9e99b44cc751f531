"""The Embedder contract, passed by every implementation: the packaged sentence-transformers
model and the worker's BatchingEmbedder around it (both share the session's loaded model).

Distances are L2 norms of differences between unit vectors: SAME allows for fp16 on a GPU,
and one changed token moves a vector about 0.02.
"""

from __future__ import annotations

import numpy as np
import pytest

from ingest.batching import BatchingEmbedder
from rag.embedding import Embedder, SentenceTransformerEmbedder, Vectors

pytestmark = pytest.mark.slow

SAME = 2e-3
APART = 5e-3
TEXTS = [
    "The lock keeper opens the canal gates at 6:15.",
    "Sourdough bread rises with a starter of wild yeast.",
    "Mount Etna in Sicily is one of the most active volcanoes in Europe.",
    "Größe, 東京 and 🚀 in one line.",
    "",
    "Cats sleep about sixteen hours a day and purr when content.",
]
WORDS = ["harbour", "lighthouse", "keeper", "bell", "dusk", "river", "stone", "bread", "yeast",
         "canal", "gate", "bakery"]  # one token each


@pytest.fixture(params=["sentence-transformers", "batching"])
def model(request: pytest.FixtureRequest, embedder: SentenceTransformerEmbedder) -> Embedder:
    """Each implementation, loaded (the session's packaged model underneath)."""
    if request.param == "batching":
        return BatchingEmbedder(embedder)
    return embedder


def distance(a: Vectors, b: Vectors) -> float:
    return float(np.linalg.norm(a - b))


def test_vectors_are_unit_float32_rows_of_dimension(model: Embedder) -> None:
    assert model.name and model.dimension > 0
    vectors = model.embed(TEXTS)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), model.dimension)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def test_no_texts_give_no_rows(model: Embedder) -> None:
    vectors = model.embed([])
    assert vectors.shape == (0, model.dimension) and vectors.dtype == np.float32


def test_the_same_text_gives_the_same_vector(model: Embedder) -> None:
    alone = model.embed([TEXTS[0]])[0]
    assert distance(model.embed([TEXTS[0]])[0], alone) < SAME
    assert distance(model.embed(TEXTS[::-1])[-1], alone) < SAME  # in a batch, padded
    model.load()  # loading again changes nothing
    assert distance(model.embed([TEXTS[0]])[0], alone) < SAME


def test_a_batch_gives_one_row_per_text_in_order(model: Embedder) -> None:
    batch = model.embed(TEXTS)
    singles = np.concatenate([model.embed([text]) for text in TEXTS])
    for row, single in zip(batch, singles, strict=True):
        assert distance(row, single) < SAME
    for i in range(len(TEXTS)):
        for j in range(i + 1, len(TEXTS)):
            assert distance(batch[i], batch[j]) > 0.1, (TEXTS[i], TEXTS[j])


def test_the_model_sees_the_first_max_tokens_tokens(model: Embedder) -> None:
    """`max_tokens` counts `tokenizer`'s tokens, special ones included; a longer text embeds
    from its first `max_tokens` tokens (so chunks are cut to fit with this tokenizer)."""
    tokenizer = model.tokenizer
    special = len(tokenizer("")["input_ids"])
    window = [WORDS[i % len(WORDS)] for i in range(model.max_tokens - special)]
    assert len(tokenizer(" ".join(window))["input_ids"]) == model.max_tokens  # a word a token
    long_a = " ".join(window + ["volcano"] * 300)
    long_b = " ".join(window + ["penguin"] * 300)
    assert len(tokenizer(long_a)["input_ids"]) > 2 * model.max_tokens
    last_changed = " ".join([*window[:-1], "volcano"])
    full, a, b, changed = model.embed([" ".join(window), long_a, long_b, last_changed])
    np.testing.assert_allclose(np.linalg.norm(a), 1.0, atol=1e-3)
    assert distance(a, full) < SAME and distance(b, full) < SAME  # beyond the window: unseen
    assert distance(changed, full) > APART  # the window's last token is seen


def test_related_texts_score_higher_than_unrelated(model: Embedder) -> None:
    questions = ["How long do cats sleep each day?", "Which European volcano erupts often?",
                 "When do the canal gates open?"]
    answers = [TEXTS[5], TEXTS[2], TEXTS[0]]
    similarity = model.embed(questions) @ model.embed(answers).T  # (questions, answers)
    for q in range(len(questions)):
        others = np.delete(similarity[q], q)
        assert similarity[q, q] > others.max() + 0.1, similarity
