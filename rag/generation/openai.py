"""The `openai` generator backend: chat completions streamed (SSE) from a compatible server.

`build_generator` imports it only for that backend; it needs httpx-sse.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Generator as PieceGenerator
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedTokenizerBase

from rag.errors import ConfigError, NotReady, Overloaded
from rag.generation.base import TokenCounts, TokenStream
from rag.generation.model_files import load_tokenizer
from rag.settings import Settings
from rag.types import Prompt

if TYPE_CHECKING:
    import httpx


class OpenAIGenerator:
    """Streams chat completions from an OpenAI-compatible server (vLLM, TGI, llama.cpp, Ollama).

    Prompts are still budgeted locally, with the tokenizer of `generator_model`.
    """

    def __init__(self, settings: Settings) -> None:
        self.name = settings.generator_model
        self._settings = settings
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._client: httpx.Client | None = None
        self._context_window = settings.context_window

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._ready()[1]

    @property
    def context_window(self) -> int:
        self._ready()
        return self._context_window

    def load(self) -> None:
        """Load the tokenizer and open the HTTP client (the server is reached per request)."""
        import httpx

        try:
            import httpx_sse  # noqa: F401
        except ImportError as error:
            raise ConfigError(
                "The openai generator backend needs the httpx-sse package.",
                "Install it with `pip install httpx-sse`.",
            ) from error
        tokenizer = load_tokenizer(self._settings)
        limit = tokenizer.model_max_length
        if isinstance(limit, int) and 0 < limit < 10**7:
            self._context_window = min(self._settings.context_window, limit)
        headers = {}
        if self._settings.openai_api_key:
            headers["Authorization"] = f"Bearer {self._settings.openai_api_key}"
        self._client = httpx.Client(
            base_url=self._settings.openai_base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(10.0, read=self._settings.openai_timeout_s),
        )
        self._tokenizer = tokenizer

    def stats(self) -> dict[str, float]:
        """Nothing is scheduled here: the server batches on its side."""
        return {}

    def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            self._client.close()

    def stream(
        self, prompt: Prompt, max_new_tokens: int, stop: threading.Event | None = None
    ) -> TokenStream:
        """POST /chat/completions with stream=true and yield the content deltas."""
        client, tokenizer = self._ready()
        counts = TokenCounts(prompt_tokens=len(prompt.input_ids))
        if stop is not None and stop.is_set():
            return TokenStream.cancelled(counts)
        body = {
            "model": self.name,
            "messages": list(prompt.messages),
            "max_tokens": max_new_tokens,
            "temperature": self._settings.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        pieces = _server_pieces(client, body, counts, tokenizer, stop)
        return TokenStream(pieces, counts)

    def _ready(self) -> tuple[httpx.Client, PreTrainedTokenizerBase]:
        if self._client is None or self._tokenizer is None:
            raise NotReady("The generator is not loaded yet.", "Call load() first.")
        return self._client, self._tokenizer


def _server_pieces(
    client: httpx.Client,
    body: dict[str, Any],
    counts: TokenCounts,
    tokenizer: PreTrainedTokenizerBase,
    stop: threading.Event | None,
) -> PieceGenerator[str, None, None]:
    """Content deltas of one streamed completion; counts from the server's usage when sent."""
    import httpx
    from httpx_sse import SSEError, connect_sse

    text: list[str] = []
    reported = False
    try:
        with connect_sse(client, "POST", "chat/completions", json=body) as source:
            _check_status(source.response)
            for event in source.iter_sse():
                if (stop is not None and stop.is_set()) or event.data.strip() == "[DONE]":
                    break
                chunk = json.loads(event.data)
                reported = _take_usage(chunk, counts) or reported
                for piece in _deltas(chunk):
                    text.append(piece)
                    yield piece
    except (httpx.HTTPError, SSEError, json.JSONDecodeError) as error:
        raise NotReady(
            f"The generation server at {client.base_url} failed: {error}",
            "Check that it is running and speaks the OpenAI API (RAG_OPENAI_BASE_URL).",
        ) from error
    if not reported:  # the server sent no usage: count with the local tokenizer
        counts.completion_tokens = len(tokenizer.encode("".join(text), add_special_tokens=False))


def _check_status(response: httpx.Response) -> None:
    """Raise a ConfigError for a refused request, NotReady for a failing server."""
    if response.status_code == 200:
        return
    response.read()
    message = f"The generation server answered {response.status_code}: {response.text[:300]}"
    if response.status_code in (400, 401, 403, 404, 422):
        raise ConfigError(message, "Check RAG_OPENAI_BASE_URL, RAG_OPENAI_API_KEY and the model.")
    if response.status_code == 429:  # the server is busy: the same 503 + Retry-After as ours
        seconds = retry_after_s(response.headers.get("retry-after", ""))
        raise Overloaded(message, f"Retry in {seconds} s.", retry_after_s=seconds)
    raise NotReady(message, "Try again later.")


def retry_after_s(value: str, default: int = 2) -> int:
    """Whole seconds from a Retry-After header: delay-seconds or an HTTP date (RFC 9110
    10.2.3), at least 1; `default` where it is missing or unreadable."""
    value = value.strip()
    if value.isdigit():
        return max(1, int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(1, math.ceil((when - datetime.now(UTC)).total_seconds()))


def _take_usage(chunk: dict[str, Any], counts: TokenCounts) -> bool:
    """Copy the server's token counts from a chunk that carries them."""
    usage = chunk.get("usage")
    if not isinstance(usage, dict):
        return False
    counts.prompt_tokens = int(usage.get("prompt_tokens", counts.prompt_tokens))
    counts.completion_tokens = int(usage.get("completion_tokens", counts.completion_tokens))
    return True


def _deltas(chunk: dict[str, Any]) -> Iterator[str]:
    """The content pieces of one streamed chat-completion chunk."""
    for choice in chunk.get("choices") or []:
        content = (choice.get("delta") or {}).get("content")
        if content:
            yield str(content)
