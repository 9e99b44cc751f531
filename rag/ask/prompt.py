"""Prompt assembly: a stable system prompt, numbered sources that fit the budget, the question.

A source is a retrieved chunk: either its whole text (`chunks` context) or the evidence
sentences chosen from it (`evidence` context, see rag.ask.evidence). Rows of a table are shown
under its header line, one a line; a lone row as its cells named by the header.

The budget is counted with the generator's own tokenizer on the fully rendered chat template,
so `len(prompt.input_ids) + max_new_tokens <= context_window` holds for any input.

`build_prompt` and `build_evidence_prompt` assemble it, `PromptStage` is the ask stage; the
`Prompt` they return is in `rag.types` (the generators take it too).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from rag.ask.context import AskContext, quiet
from rag.documents.sentences import with_header
from rag.errors import ConfigError, InvalidInput
from rag.types import Evidence, Prompt, ScoredChunk, ScoredSentence, Sentence, Turn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from rag.generation.base import Generator

# Kept short for a 135M model, and never formatted: the KV cache of this prefix can be reused.
SYSTEM_PROMPT = (
    "Answer the question in one short sentence, using only the numbered sources. "
    "Cite the source you use like [1]. "
    'If the sources do not answer it, say "The documents do not contain this."'
)
# Bump when SYSTEM_PROMPT or the layout below changes: it is part of the response cache key.
PROMPT_TEMPLATE_VERSION = "3"

# Earlier turns may take at most this share of the room left beside the question; the rest
# is the sources'. Turns are kept newest first; the oldest are dropped first.
HISTORY_SHARE = 0.5
_CITATION_MARK = re.compile(r"\s*\[\d+\]")

# A sentence ends at . ! or ? (closing quotes or brackets included) followed by space or the end.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


@dataclass(frozen=True)
class _Block:
    """One numbered source as the prompt shows it."""

    scored: ScoredChunk
    sentences: tuple[ScoredSentence, ...] = ()

    @property
    def text(self) -> str:
        if not self.sentences:
            return self.scored.chunk.text
        runs = _runs([s.sentence for s in self.sentences])
        parts = [_run_text(runs[0])]
        for before, after in zip(runs, runs[1:], strict=False):
            gap = after[0].start - before[-1].end
            # Neighbouring sentences read on; a gap between them is shown as one; a table
            # stands on lines of its own.
            table = bool(before[0].header or after[0].header)
            parts.append(("\n" if table else " " if gap <= 3 else " … ") + _run_text(after))
        return "".join(parts)


def _runs(sentences: Sequence[Sentence]) -> list[list[Sentence]]:
    """Sentences (in document order) in runs: the rows of one table together, each other
    sentence alone."""
    runs: list[list[Sentence]] = []
    for s in sentences:
        last = runs[-1][-1] if runs else None
        if last is not None and s.header and (last.header, last.document_id) == (
                s.header, s.document_id):
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def _run_text(run: Sequence[Sentence]) -> str:
    """A sentence as it is; a table's rows under its header line, a lone row with it."""
    if len(run) == 1:
        return with_header(run[0])
    return "\n".join([run[0].header or "", *(s.text for s in run)])


def build_prompt(
    question: str,
    chunks: Sequence[ScoredChunk],
    tokenizer: PreTrainedTokenizerBase,
    context_window: int,
    max_new_tokens: int,
    turns: Sequence[Turn] = (),
) -> Prompt:
    """Fit the best-ranked chunks beside `question` into `context_window - max_new_tokens` tokens.

    Chunks are taken in rank order while they fit; the first one that does not is cut to its
    longest sentence prefix that fits (or dropped if no sentence does), and the rest are dropped.
    Earlier `turns` (oldest first) come before the question, the newest that fit in
    `HISTORY_SHARE` of the room; the question itself is never dropped.
    """
    return _build(question, [_Block(c) for c in chunks], tokenizer, context_window,
                  max_new_tokens, turns)


def build_evidence_prompt(
    question: str,
    evidence: Evidence,
    tokenizer: PreTrainedTokenizerBase,
    context_window: int,
    max_new_tokens: int,
    turns: Sequence[Turn] = (),
) -> Prompt:
    """Like `build_prompt`, with each chunk shown as its evidence sentences (best chunk first)."""
    blocks = [_Block(scored, sentences) for scored, sentences in evidence.groups]
    return _build(question, blocks, tokenizer, context_window, max_new_tokens, turns)


def _build(
    question: str,
    blocks: Sequence[_Block],
    tokenizer: PreTrainedTokenizerBase,
    context_window: int,
    max_new_tokens: int,
    turns: Sequence[Turn] = (),
) -> Prompt:
    if tokenizer.chat_template is None:
        raise ConfigError(
            "The generator's tokenizer has no chat template.",
            "Use an instruction-tuned (chat) model for RAG_GENERATOR_MODEL.",
        )
    limit = context_window - max_new_tokens
    base = _render(tokenizer, question, ())
    if len(base) > limit:
        raise _question_too_long(question, tokenizer, limit)
    room = len(base) + int(HISTORY_SHARE * (limit - len(base)))
    kept = _fit_turns(tokenizer, question, turns, room)
    asked = _Asked(question, kept)
    used, dropped = _fit_sources(tokenizer, asked, blocks, limit)
    input_ids = _render(tokenizer, asked, used)
    return Prompt(
        messages=_messages(asked, used),
        input_ids=input_ids,
        sources=tuple(b.scored for b in used),
        dropped=tuple(b.scored for b in dropped),
        prompt_tokens=len(input_ids),
        budget=limit - len(base),
        evidence=tuple(b.sentences for b in used),
        turns=kept,
        dropped_turns=len(turns) - len(kept),
    )


@dataclass(frozen=True)
class _Asked:
    """The question and the earlier turns shown before it."""

    question: str
    turns: tuple[Turn, ...] = ()


def _fit_turns(
    tokenizer: PreTrainedTokenizerBase, question: str, turns: Sequence[Turn], limit: int
) -> tuple[Turn, ...]:
    """The newest turns (kept oldest first) whose prompt, without sources, fits `limit`."""
    kept: tuple[Turn, ...] = ()
    for turn in reversed(turns):
        if len(_render(tokenizer, _Asked(question, (turn, *kept)), ())) > limit:
            break
        kept = (turn, *kept)
    return kept


def _fit_sources(
    tokenizer: PreTrainedTokenizerBase,
    question: _Asked,
    blocks: Sequence[_Block],
    limit: int,
) -> tuple[tuple[_Block, ...], tuple[_Block, ...]]:
    """Split `blocks` into the sources that fit under `limit` tokens and the dropped rest."""
    used: tuple[_Block, ...] = ()
    for rank, block in enumerate(blocks):
        if len(_render(tokenizer, question, (*used, block))) <= limit:
            used = (*used, block)
            continue
        cut = _cut_to_fit(tokenizer, question, used, block, limit)
        if cut is None:
            return used, tuple(blocks[rank:])
        return (*used, cut), tuple(blocks[rank + 1 :])
    return used, ()


def _cut_to_fit(
    tokenizer: PreTrainedTokenizerBase,
    question: _Asked,
    used: tuple[_Block, ...],
    block: _Block,
    limit: int,
) -> _Block | None:
    """The longest sentence prefix of `block` that still fits after `used`, or None."""
    if block.sentences:
        cuts = [_Block(block.scored, block.sentences[:n]) for n in
                range(1, len(block.sentences))]
    else:
        ends = [match.end() for match in _SENTENCE_END.finditer(block.scored.chunk.text)]
        cuts = [_Block(_truncated(block.scored, end)) for end in ends]
    best: _Block | None = None
    low, high = 0, len(cuts) - 1
    while low <= high:  # binary search: longer prefixes never take fewer tokens
        middle = (low + high) // 2
        if len(_render(tokenizer, question, (*used, cuts[middle]))) <= limit:
            best, low = cuts[middle], middle + 1
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
    tokenizer: PreTrainedTokenizerBase, question: str | _Asked, sources: tuple[_Block, ...]
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


def _messages(
    question: str | _Asked, sources: tuple[_Block, ...]
) -> tuple[dict[str, str], ...]:
    """System prompt first, then one user message: numbered sources, the earlier turns, then
    the question."""
    asked = question if isinstance(question, _Asked) else _Asked(question)
    blocks = [_source_block(number, block) for number, block in enumerate(sources, start=1)]
    user = "".join(blocks) + _turns_block(asked.turns) + f"Question: {asked.question}"
    return ({"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user})


def _turns_block(turns: tuple[Turn, ...]) -> str:
    """Earlier turns as plain lines; their `[n]` marks cited other sources, so they go."""
    if not turns:
        return ""
    lines = [f"Q: {t.question}\nA: {_CITATION_MARK.sub('', t.answer).strip()}\n" for t in turns]
    return "Earlier in this conversation:\n" + "".join(lines) + "\n"


def _source_block(number: int, block: _Block) -> str:
    """`[n] filename (p. X): text` followed by a blank line."""
    chunk = block.scored.chunk
    label = block.scored.filename or f"document {chunk.document_id[:12]}"
    page = f" (p. {chunk.page})" if chunk.page is not None else ""
    return f"[{number}] {label}{page}: {block.text}\n\n"


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


class PromptStage:
    """Ask stage: the prompt, with each source as its evidence sentences (`evidence`) or as
    the whole retrieved chunk (`chunks`)."""

    name = "prompt"

    def __init__(self, generator: Generator, context: Literal["evidence", "chunks"],
                 max_new_tokens: int) -> None:
        self.generator = generator
        self.context = context
        self.max_new_tokens = max_new_tokens

    @quiet
    def run(self, ctx: AskContext) -> AskContext:
        g, limit = self.generator, ctx.max_new_tokens or self.max_new_tokens
        if self.context == "evidence" and ctx.evidence is not None:
            prompt = build_evidence_prompt(ctx.question, ctx.evidence, g.tokenizer,
                                           g.context_window, limit, ctx.history)
        else:
            prompt = build_prompt(ctx.question, ctx.chunks, g.tokenizer, g.context_window,
                                  limit, ctx.history)
        return dataclasses.replace(ctx, prompt=prompt)
