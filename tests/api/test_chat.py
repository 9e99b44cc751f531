"""The OpenAI chat-completions protocol, driven by the official `openai` package against a live
server (uvicorn, packaged models), streaming and not; its bad input in OpenAI's error shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from api.app import create_app
from rag.service import RagService
from tests.api.helpers import (
    ADMIN_KEY,
    ASK_KEY,
    INGEST_KEY,
    KEYS,
    app_settings,
    live_server,
    serving,
)
from tests.api.test_ask import (
    HONEY,
    ODUYA,
    PASSES,
    REJECTED,
    SECOND_REJECTED,
    ScriptedGenerator,
    scripted_service,
)

pytestmark = pytest.mark.slow

BEES = "Who is the beekeeper of the Larkspur apiary?"
FOLLOW_UP = "How much honey do they produce per hive?"


@pytest.fixture(scope="module")
def base_url(corpus_service: RagService) -> Iterator[str]:
    """A live server over the session's engine, with keys."""
    app = create_app(app_settings(corpus_service, api_keys=KEYS), service=corpus_service)
    with live_server(app) as base:
        yield base


@pytest.fixture()
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=ASK_KEY, max_retries=0,
                         timeout=120)


def model_id(client: openai.OpenAI) -> str:
    models = client.models.list().data
    assert len(models) == 1 and models[0].owned_by == "rag-service"
    return models[0].id


def rag_of(extra: Any) -> dict[str, Any]:
    """The service's extra field (the SDK keeps unknown fields as extras)."""
    assert extra.model_extra and "rag" in extra.model_extra, extra
    rag: dict[str, Any] = extra.model_extra["rag"]
    return rag


def test_a_conversation_through_the_openai_client(
    client: openai.OpenAI, corpus_service: RagService
) -> None:
    corpus_service.cache.clear()
    model = model_id(client)
    assert model == corpus_service.generator.name
    first = client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": BEES}])
    assert first.id.startswith("chatcmpl-ans_") and first.object == "chat.completion"
    assert first.model == model and first.created > 0
    choice = first.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    rag = rag_of(choice.message)
    assert rag["citations"][0]["filename"] == "bees.txt" and rag["history_turns"] == 0
    # The answer is in bees.txt: generated, or the checked quote of it; never an abstention.
    assert rag["mode"] in ("generated", "quote"), rag
    assert "Miriam Oduya" in choice.message.content
    assert any("Miriam Oduya" in quote["text"] for quote in rag["evidence"]), rag["evidence"]
    assert first.usage is not None and first.usage.total_tokens == (
        first.usage.prompt_tokens + first.usage.completion_tokens) > 0

    # The follow-up says "they": the earlier turns carry the apiary into retrieval and prompt.
    follow = client.chat.completions.create(model=model, messages=[
        {"role": "user", "content": BEES},
        {"role": "assistant", "content": choice.message.content},
        {"role": "user", "content": [{"type": "text", "text": FOLLOW_UP}]},
    ])
    follow_rag = rag_of(follow.choices[0].message)
    assert follow_rag["history_turns"] == 1
    assert follow_rag["citations"][0]["filename"] == "bees.txt"
    assert follow.id != first.id


def test_streamed_completion_through_the_openai_client(
    client: openai.OpenAI, corpus_service: RagService
) -> None:
    corpus_service.cache.clear()
    chunks = list(client.chat.completions.create(
        model=model_id(client), messages=[{"role": "user", "content": BEES}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-ans_")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].choices[0].finish_reason in ("stop", "length")
    rag = rag_of(final[0])
    assert rag["citations"][0]["filename"] == "bees.txt" and rag["answer"]
    assert text == rag["answer"]  # checked sentences (or the quote instead), joined
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.fixture(scope="module")
def scripted_chat(tmp_path_factory: pytest.TempPathFactory, embedder: Any, generator: Any
                  ) -> Iterator[tuple[openai.OpenAI, RagService, ScriptedGenerator]]:
    """An OpenAI client of a live server whose model says what the test scripts."""
    root: Path = tmp_path_factory.mktemp("scripted-chat")
    service, model = scripted_service(root, embedder, generator)
    app = create_app(app_settings(service, api_keys=KEYS), service=service)
    with live_server(app) as base:
        yield (openai.OpenAI(base_url=f"{base}/v1", api_key=ASK_KEY, max_retries=0,
                             timeout=120), service, model)
    service.close()


@pytest.mark.parametrize(("answer", "deltas", "mode"), [
    (PASSES, [ODUYA, f" {HONEY}"], "generated"),
    (REJECTED, None, "quote"),
    (SECOND_REJECTED, [ODUYA], "generated"),
], ids=["passes", "rejected", "second-rejected"])
def test_the_stream_is_the_checked_answer(
    scripted_chat: tuple[openai.OpenAI, RagService, ScriptedGenerator], answer: str,
    deltas: list[str] | None, mode: str,
) -> None:
    """Deltas are sentences that passed the check, or the quote that replaces the answer; a
    rejected sentence is never sent, and the deltas joined are the completion's content."""
    client, service, model = scripted_chat
    model.answer = answer
    messages: Any = [{"role": "user", "content": BEES}]
    service.cache.clear()
    whole = client.chat.completions.create(model=model.name, messages=messages)
    service.cache.clear()
    chunks = list(client.chat.completions.create(model=model.name, messages=messages,
                                                 stream=True))
    sent = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    rag = rag_of(final[0])
    assert "".join(sent) == rag["answer"] == whole.choices[0].message.content
    assert rag["mode"] == mode and not rag["cached"]
    assert sent == (deltas or [rag["answer"]])
    assert rag["short_answer"] == (None if mode == "quote" else "Miriam Oduya")
    assert (rag["short_answer_span"] is None) == (mode == "quote")
    assert not [w for w in ("Joe", "400", "Paris") if w in "".join(sent)]


def test_the_stream_ends_with_done(base_url: str, corpus_service: RagService) -> None:
    body = {"model": corpus_service.generator.name, "stream": True,
            "messages": [{"role": "user", "content": BEES}]}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {ASK_KEY}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.text.splitlines() if line.strip()]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_max_tokens_and_stop(client: openai.OpenAI, corpus_service: RagService) -> None:
    model = model_id(client)
    short = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": BEES}], max_tokens=2)
    assert short.usage is not None and short.usage.completion_tokens <= 2
    assert short.choices[0].finish_reason == "length"
    full = client.chat.completions.create(model=model,
                                          messages=[{"role": "user", "content": BEES}])
    content = full.choices[0].message.content or ""
    words = content.split()
    assert len(words) > 2, content
    stop = words[2]
    cut = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": BEES}], stop=[stop])
    assert cut.choices[0].message.content == content[: content.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": BEES}], stop=stop, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == content[: content.find(stop)]


BAD_MESSAGES = [
    ([{"role": "system", "content": "Only a system prompt."}], "no user message"),
    ([{"role": "user", "content": BEES}, {"role": "tool", "content": "x"}], "role 'tool'"),
    ([{"role": "user", "content": BEES}, {"role": "assistant", "content": "An answer."}],
     "must be the user's question"),
    ([{"role": "user", "content": [{"type": "image_url",
                                    "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
     "reads text only"),
    ([{"role": "user", "content": "   "}], "The question is empty"),
]


@pytest.mark.parametrize(("messages", "says"), BAD_MESSAGES)
def test_bad_messages_are_400_in_the_openai_shape(
    client: openai.OpenAI, messages: list[dict[str, Any]], says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id(client), messages=messages)  # type: ignore[arg-type]
    error = caught.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error", error
    assert says in error["message"] and error["code"], error


def test_keys_and_model_errors_in_the_openai_shape(base_url: str, client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": BEES}]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    assert "GET /v1/models" in missing.value.message
    wrong = openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong.models.list()
    assert isinstance(denied.value.body, dict) and denied.value.body["code"] == "invalid_api_key"
    ingest_only = openai.OpenAI(base_url=f"{base_url}/v1", api_key=INGEST_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        ingest_only.models.list()
    raw = httpx.post(f"{base_url}/v1/chat/completions", content=b"{not json",
                     headers={"Authorization": f"Bearer {ASK_KEY}",
                              "Content-Type": "application/json"})
    assert raw.status_code == 400 and set(raw.json()) == {"error"}
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    # The other routes keep the service's own error body.
    other = httpx.post(f"{base_url}/v1/ask", json={"question": " "},
                       headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert other.status_code == 422 and {"error", "message", "hint"} <= set(other.json())


def test_rate_limit_is_in_the_openai_shape(corpus_service: RagService) -> None:
    with serving(corpus_service, api_keys=KEYS, rate_limit_per_minute=1) as client:
        headers = {"Authorization": f"Bearer {ASK_KEY}"}
        assert client.get("/v1/models", headers=headers).status_code == 200
        limited = client.get("/v1/models", headers=headers)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"


def test_openapi_documents_the_chat_routes(corpus_service: RagService) -> None:
    with serving(corpus_service, api_keys=KEYS) as client:
        paths = client.get("/schema/openapi.json").json()["paths"]
    chat = paths["/v1/chat/completions"]["post"]
    assert set(chat["responses"]) >= {"200", "400", "401", "403", "404", "429", "503"}
    assert chat["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "OpenAIErrorOut")
    assert "Bearer" in chat["description"] and "get" in paths["/v1/models"]
    for path in ("/v1/conversations", "/v1/conversations/{conversation_id}", "/v1/feedback"):
        assert path in paths, sorted(paths)
    assert {"get", "delete"} <= set(paths["/v1/conversations/{conversation_id}"])
