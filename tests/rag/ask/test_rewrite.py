"""The follow-up rewrite, and earlier turns in the prompt budget (real tokenizer)."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerBase

from rag.ask.prompt import build_prompt
from rag.ask.rewrite import refers_back, rewrite, terms
from rag.generation.model_files import load_tokenizer
from rag.settings import Settings
from rag.types import Chunk, ScoredChunk, Turn

MODEL_TURN = Turn("Which embedding model does the service use by default?",
                  "The default embedding model is all-MiniLM-L6-v2 [1].")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    return load_tokenizer(Settings(data_dir=tmp_path_factory.mktemp("followup-data")))


def test_terms_keep_identifiers_and_drop_stopwords() -> None:
    assert terms("What is the RAG_CHUNK_SIZE of all-MiniLM-L6-v2 at 23:15?") == [
        "rag_chunk_size", "all-minilm-l6-v2", "23:15"]


def test_a_follow_up_carries_the_earlier_topic() -> None:
    query = rewrite("How many dimensions do its vectors have?", [MODEL_TURN])
    assert query.startswith("How many dimensions do its vectors have? ")
    carried = query.split("? ", 1)[1].split()
    assert "embedding" in carried and "all-minilm-l6-v2" in carried
    assert "dimensions" not in carried  # the question's own words are not repeated


def test_a_standalone_question_is_left_alone() -> None:
    question = "Which library parses uploaded PDF files?"
    assert not refers_back(question)
    assert rewrite(question, [MODEL_TURN]) == question
    assert rewrite("And above that threshold?", []) == "And above that threshold?"
    assert refers_back("And above that threshold?") and refers_back("Why?")


def source(number: int, words: int) -> ScoredChunk:
    text = " ".join(["The index holds vectors of every chunk."] * words)
    return ScoredChunk(Chunk(number, f"d{number}", 0, text, 0, len(text)), 1.0, filename="f.txt")


def test_old_turns_are_dropped_first_and_the_question_kept(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    turns = [Turn(f"Question number {n} about the index?", "Answer. " * 40) for n in range(12)]
    question = "And how large is it?"
    prompt = build_prompt(question, [source(1, 30)], tokenizer, 600, 100, turns)
    assert len(prompt.input_ids) + 100 <= 600
    assert 0 < len(prompt.turns) < len(turns)
    assert prompt.turns == tuple(turns[-len(prompt.turns):])  # the newest, oldest first
    assert prompt.dropped_turns == len(turns) - len(prompt.turns)
    user = prompt.messages[1]["content"]
    assert user.endswith(f"Question: {question}") and "Earlier in this conversation" in user
    assert prompt.sources, "sources keep their share of the budget"
    # Earlier answers' citation marks point at other sources: they are left out.
    cited = build_prompt(question, [], tokenizer, 2048, 100, [MODEL_TURN])
    assert "[1]." not in cited.messages[1]["content"].split("Earlier")[1]


def test_without_turns_the_prompt_is_unchanged(tokenizer: PreTrainedTokenizerBase) -> None:
    a = build_prompt("What is it?", [source(1, 3)], tokenizer, 2048, 100)
    b = build_prompt("What is it?", [source(1, 3)], tokenizer, 2048, 100, [])
    assert a == b and "Earlier" not in a.messages[1]["content"]
