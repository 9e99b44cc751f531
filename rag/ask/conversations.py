"""The conversation policy the service follows: an ask's history and where its answer goes.

`Conversations.thread` resolves what an ask continues (turns sent by the client, or those of a
stored conversation, cut to the newest `max_turns`; an expired conversation starts afresh with a
note, an unknown id is refused); `keep` stores the answer, `rate` takes feedback on it. The
stores themselves are in rag.stores.conversations, the record types in rag.types.

A conversation and its answers are their owner's (the key that asked; "" in open mode): another
owner's conversation or answer is NotFound exactly like an unknown one, and counted in
`REFUSED` (`conversation`, `feedback`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rag.access import REFUSED
from rag.errors import InvalidInput, NotFound, NotReady
from rag.stores.conversations import ConversationStore
from rag.types import AnswerRecord, Conversation, Feedback, Rating, Turn, new_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thread:
    """What an ask continues: its conversation (None: none kept), the turns before it, and a
    note for the response (an expired conversation started afresh)."""

    conversation_id: str | None
    history: tuple[Turn, ...] = ()
    note: str = ""


class Conversations:
    """Conversations as the service uses them: resolve an ask's history, keep its answer,
    list, show and delete conversations, and take feedback on answers."""

    def __init__(self, store: ConversationStore, max_turns: int) -> None:
        self.store = store
        self.max_turns = max_turns

    def thread(self, conversation_id: str | None, history: Sequence[Turn], keep: bool,
               owner: str = "") -> Thread:
        """The history of an ask: sent by the client, or that of a stored conversation."""
        if conversation_id is not None and history:
            raise InvalidInput("Both a conversation id and earlier turns were sent.",
                               "Send one: the id of a stored conversation, or the turns.")
        if conversation_id is None:
            return Thread(new_id("conv") if keep else None, self._recent(history))
        state, found = self.store.lookup(conversation_id, owner)
        if state == "unknown":
            self._count_refused(conversation_id, owner)
            raise NotFound(f"Conversation {conversation_id!r} is unknown.",
                           "Leave the conversation id out to start a new one, or list your "
                           "conversations to find the one you meant.")
        if state == "expired" or found is None:
            return Thread(conversation_id, (), f"Conversation {conversation_id} had expired; "
                          "this question started it afresh, without the earlier turns.")
        return Thread(conversation_id,
                      self._recent([Turn(t.question, t.answer) for t in found.turns]))

    def _recent(self, turns: Sequence[Turn]) -> tuple[Turn, ...]:
        """The newest `max_turns` turns, oldest first."""
        return tuple(turns)[len(turns) - self.max_turns:] if self.max_turns else ()

    def keep(self, record: AnswerRecord) -> bool:
        """Keep the answer; False (logged) when the store is unreachable: the answer stands,
        but its conversation cannot be continued nor the answer rated."""
        try:
            self.store.save(record)
        except NotReady as exc:
            log.warning("answer %s not kept: %s", record.id, exc)
            return False
        return True

    def get(self, conversation_id: str, owner: str = "") -> Conversation:
        """A live conversation with its turns; NotFound when it expired or is unknown."""
        state, found = self.store.lookup(conversation_id, owner)
        if state == "unknown":
            self._count_refused(conversation_id, owner)
        if found is None:
            hint = ("It expired; its next turn starts it afresh." if state == "expired"
                    else "List your conversations to find its id.")
            raise NotFound(f"Conversation {conversation_id!r} is {state}.", hint)
        return found

    def recent(self, owner: str = "", limit: int = 50) -> list[Conversation]:
        """Live conversations of `owner`, most recently used first (turns left out)."""
        return self.store.recent(owner, limit)

    def delete(self, conversation_id: str, owner: str = "") -> None:
        """Forget a conversation and its turns; NotFound when it is not `owner`'s."""
        if not self.store.delete(conversation_id, owner):
            self._count_refused(conversation_id, owner)
            raise NotFound(f"Conversation {conversation_id!r} is unknown.",
                           "List your conversations to find its id.")

    def _count_refused(self, conversation_id: str, owner: str) -> None:
        """Count a lookup that found the conversation `unknown` because it is another's."""
        if self.store.owner(conversation_id) not in (None, owner):
            REFUSED.add("conversation")

    def rate(self, answer_id: str, rating: Rating, comment: str = "",
             expected: str = "", owner: str = "") -> Feedback:
        """Feedback on an answer given to `owner` within the conversation TTL; NotFound for an
        unknown or expired answer, or one given to another owner (counted as refused)."""
        record = self.store.answer(answer_id)
        if record is not None and record.owner != owner:
            REFUSED.add("feedback")
            record = None
        if record is None:
            raise NotFound(f"Answer {answer_id!r} is unknown or has expired.",
                           "Rate an answer by the `answer_id` (or chat completion `id`) it "
                           "came with, within the conversation TTL.")
        feedback = Feedback(new_id("fb"), answer_id, rating, record.question, record.answer,
                            record.history, record.documents, comment.strip(),
                            expected.strip(), time.time())
        self.store.add_feedback(feedback)
        return feedback
