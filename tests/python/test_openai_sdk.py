"""The official `openai` Python SDK, pointed at Sluice, works unchanged and returns its typed
objects: chat completions, embeddings (the SDK asks for base64 and decodes it), streaming,
and typed errors."""

import openai
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion


@pytest.fixture()
def client(sluice):
    return openai.OpenAI(base_url=sluice["base_url"], api_key=sluice["key"], max_retries=0)


def test_chat_completion_is_a_typed_chat_completion(client):
    completion = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to the SDK"},
        ],
        temperature=0,
        seed=7,
    )
    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Mock response to: Say hello to the SDK"
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_repeated_chat_is_a_cache_hit(client):
    messages = [{"role": "user", "content": "cache me through the SDK"}]
    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    second = client.chat.completions.with_raw_response.create(model="fast", messages=messages)
    assert first.headers["x-sluice-cache"] == "miss"
    assert second.headers["x-sluice-cache"] == "hit"
    assert first.parse().id == second.parse().id


def test_embedding_is_a_typed_embedding_response(client):
    response = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    assert isinstance(response, CreateEmbeddingResponse)
    assert len(response.data) == 2
    vector = response.data[0].embedding
    assert len(vector) == 16 and all(isinstance(x, float) for x in vector)
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-3
    assert response.data[0].embedding != response.data[1].embedding
    assert response.usage.prompt_tokens > 0


def test_streaming_iterator(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text == "Mock response to: stream please"
    assert usage is not None and usage.completion_tokens == 5


def test_errors_are_typed(sluice, client):
    bad = openai.OpenAI(base_url=sluice["base_url"], api_key="sk-sluice-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert e.value.param == "messages"
