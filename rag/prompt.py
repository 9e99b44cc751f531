"""Prompt assembly: a stable system prompt, numbered sources that fit the budget, the question.

The budget is counted with the generator's own tokenizer on the fully rendered chat template,
so `len(prompt.input_ids) + max_new_tokens <= context_window` holds for any input.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from rag.errors import ConfigError, InvalidInput
from rag.types import ScoredChunk

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Kept short for a 135M model, and never formatted: the KV cache of this prefix can be reused.
SYSTEM_PROMPT = (
    "Answer the question using only the numbered sources. "
    "Cite the sources you use like [1]. "
    'If the sources do not answer it, say "The documents do not contain this."'
)
# Bump when SYSTEM_PROMPT or the layout below changes: it is part of the response cache key.
PROMPT_TEMPLATE_VERSION = "1"

# A sentence ends at . ! or ? (closing quotes or brackets included) followed by space or the end.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


@dataclass(frozen=True)
class Prompt:
    """A prompt ready to generate from, and which retrieved chunks it holds."""

    messages: tuple[dict[str, str], ...]
    input_ids: tuple[int, ...]
    sources: tuple[ScoredChunk, ...]
    dropped: tuple[ScoredChunk, ...]
    prompt_tokens: int
    budget: int


def build_prompt(
    question: str,
    chunks: Sequence[ScoredChunk],
    tokenizer: PreTrainedTokenizerBase,
    context_window: int,
    max_new_tokens: int,
) -> Prompt:
    """Fit the best-ranked chunks beside `question` into `context_window - max_new_tokens` tokens.

    Chunks are taken in rank order while they fit; the first one that does not is cut to its
    longest sentence prefix that fits (or dropped if no sentence does), and the rest are dropped.
    """
    if tokenizer.chat_template is None:
        raise ConfigError(
            "The generator's tokenizer has no chat template.",
            "Use an instruction-tuned (chat) model for RAG_GENERATOR_MODEL.",
        )
    limit = context_window - max_new_tokens
    base = _render(tokenizer, question, ())
    if len(base) > limit:
        raise _question_too_long(question, tokenizer, limit)
    sources, dropped = _fit_sources(tokenizer, question, chunks, limit)
    input_ids = _render(tokenizer, question, sources)
    return Prompt(
        messages=_messages(question, sources),
        input_ids=input_ids,
        sources=sources,
        dropped=dropped,
        prompt_tokens=len(input_ids),
        budget=limit - len(base),
    )


def _fit_sources(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    chunks: Sequence[ScoredChunk],
    limit: int,
) -> tuple[tuple[ScoredChunk, ...], tuple[ScoredChunk, ...]]:
    """Split `chunks` into the sources that fit under `limit` tokens and the dropped rest."""
    used: tuple[ScoredChunk, ...] = ()
    for rank, scored in enumerate(chunks):
        if len(_render(tokenizer, question, (*used, scored))) <= limit:
            used = (*used, scored)
            continue
        cut = _cut_to_fit(tokenizer, question, used, scored, limit)
        if cut is None:
            return used, tuple(chunks[rank:])
        return (*used, cut), tuple(chunks[rank + 1 :])
    return used, ()


def _cut_to_fit(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    used: tuple[ScoredChunk, ...],
    scored: ScoredChunk,
    limit: int,
) -> ScoredChunk | None:
    """The longest sentence prefix of `scored` that still fits after `used`, or None."""
    ends = [match.end() for match in _SENTENCE_END.finditer(scored.chunk.text)]
    best: ScoredChunk | None = None
    low, high = 0, len(ends) - 1
    while low <= high:  # binary search: longer prefixes never take fewer tokens
        middle = (low + high) // 2
        candidate = _truncated(scored, ends[middle])
        if len(_render(tokenizer, question, (*used, candidate))) <= limit:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return best


def _truncated(scored: ScoredChunk, length: int) -> ScoredChunk:
    """`scored` with its text cut to `length` characters; offsets still point at that span."""
    chunk = scored.chunk
    # token_count counts embedding tokens of the whole window; 0 marks it unknown after a cut.
    cut = dataclasses.replace(
        chunk, text=chunk.text[:length], end=chunk.start + length, token_count=0
    )
    return dataclasses.replace(scored, chunk=cut)


def _render(
    tokenizer: PreTrainedTokenizerBase, question: str, sources: tuple[ScoredChunk, ...]
) -> tuple[int, ...]:
    """Token ids of the chat template with the assistant turn opened."""
    ids = tokenizer.apply_chat_template(
        list(_messages(question, sources)),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
        # Uploaded text must not smuggle in control tokens such as <|im_end|>.
        sanitize_control_tokens=True,
    )
    return tuple(cast("list[int]", ids))


def _messages(question: str, sources: tuple[ScoredChunk, ...]) -> tuple[dict[str, str], ...]:
    """System prompt first, then one user message: numbered sources, then the question."""
    blocks = [_source_block(number, scored) for number, scored in enumerate(sources, start=1)]
    user = "".join(blocks) + f"Question: {question}"
    return ({"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user})


def _source_block(number: int, scored: ScoredChunk) -> str:
    """`[n] filename (p. X): text` followed by a blank line."""
    chunk = scored.chunk
    label = scored.filename or f"document {chunk.document_id[:12]}"
    page = f" (p. {chunk.page})" if chunk.page is not None else ""
    return f"[{number}] {label}{page}: {chunk.text}\n\n"


def _question_too_long(
    question: str, tokenizer: PreTrainedTokenizerBase, limit: int
) -> InvalidInput:
    """The error for a question that leaves no room in the window, with its numbers."""
    question_tokens = len(tokenizer.encode(question, add_special_tokens=False))
    template_tokens = len(_render(tokenizer, "", ()))
    allowed = max(limit - template_tokens, 0)
    return InvalidInput(
        f"The question has {question_tokens} tokens; at most {allowed} fit in the model's "
        f"context window.",
        "Shorten the question.",
    )
