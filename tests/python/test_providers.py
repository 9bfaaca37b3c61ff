"""No client change needed: the official `openai` and `anthropic` SDKs, pointed at Sluice,
work for plain, tool-calling and streaming requests, whichever provider answers behind it.

Sluice runs in front of the fake provider (one process speaking OpenAI's, Anthropic's and
Gemini's wire formats): model `gpt` is sent as OpenAI chat completions, `claude` as
Anthropic messages, `gemini` as Gemini generateContent. Every (SDK, model) pair is tried.
The fake answers `fake answer #N` with 10 input and 5 output tokens; given tools, it calls
the first one with `{"query": <the user's words>}`; given a tool result, it answers
`tool said: <result>`."""

import json
import uuid

import anthropic
import openai
import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion

MODELS = ["gpt", "claude", "gemini"]

WEATHER = {
    "name": "lookup",
    "description": "Looks a thing up",
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string"}},
        "required": ["query"],
    },
}


def unique(text: str) -> str:
    """A prompt no earlier test sent, so the answer is not a cache hit."""
    return f"{text} {uuid.uuid4().hex[:8]}"


@pytest.fixture()
def oai(providers):
    return openai.OpenAI(
        base_url=f"{providers['base_url']}/v1", api_key=providers["key"], max_retries=0
    )


@pytest.fixture()
def claude(providers):
    # The SDK appends /v1/messages itself and sends the key as x-api-key.
    return anthropic.Anthropic(
        base_url=providers["base_url"], api_key=providers["key"], max_retries=0
    )


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_plain(oai, model):
    completion = oai.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": unique("hello")},
        ],
        max_tokens=50,
    )
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content.startswith("fake answer #")
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 5)


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_tool_calling(oai, model):
    question = unique("find cats")
    messages = [{"role": "user", "content": question}]
    tools = [{"type": "function", "function": WEATHER}]
    first = oai.chat.completions.create(model=model, messages=messages, tools=tools)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"query": question}

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "3 cats"})
    second = oai.chat.completions.create(model=model, messages=messages, tools=tools)
    assert second.choices[0].finish_reason == "stop"
    assert "3 cats" in second.choices[0].message.content
    assert second.choices[0].message.content.startswith("tool said: ")


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_streaming(oai, model):
    stream = oai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": unique("stream")}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text.startswith("fake answer #")
    assert finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (10, 5)


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_plain(claude, model):
    message = claude.messages.create(
        model=model,
        max_tokens=50,
        system="Be brief.",
        messages=[{"role": "user", "content": unique("hello")}],
    )
    assert isinstance(message, Message)
    assert message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("fake answer #")
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 5)
    # Anthropic's usage shape whatever answered: nothing cached here, every field typed.
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_creation.ephemeral_5m_input_tokens == 0
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 0


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_tool_use(claude, model):
    question = unique("find dogs")
    tools = [
        {
            "name": WEATHER["name"],
            "description": WEATHER["description"],
            "input_schema": WEATHER["parameters"],
        }
    ]
    messages = [{"role": "user", "content": question}]
    first = claude.messages.create(model=model, max_tokens=100, messages=messages, tools=tools)
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "lookup"
    assert use.input == {"query": question}

    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "2 dogs"}],
        }
    )
    second = claude.messages.create(model=model, max_tokens=100, messages=messages, tools=tools)
    assert second.stop_reason == "end_turn"
    assert "2 dogs" in second.content[0].text


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_streaming(claude, model):
    with claude.messages.stream(
        model=model,
        max_tokens=50,
        messages=[{"role": "user", "content": unique("stream")}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("fake answer #")
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5


def test_anthropic_sdk_prompt_caching_usage_is_typed(claude):
    """`cache_control` reaches Anthropic; the usage the SDK reads has the cached tokens apart
    from `input_tokens` (the fake writes 1,000 tokens per breakpoint, then reads them), in
    the message, in `message_start` and in the streamed final message."""
    rules = [
        {
            "type": "text",
            "text": unique("Long house rules."),
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    first = claude.messages.create(
        model="claude",
        max_tokens=50,
        system=rules,
        messages=[{"role": "user", "content": unique("first")}],
    )
    usage = first.usage
    assert (usage.input_tokens, usage.output_tokens) == (10, 5)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (1000, 0)
    assert usage.cache_creation.ephemeral_1h_input_tokens == 1000
    assert usage.cache_creation.ephemeral_5m_input_tokens == 0

    with claude.messages.stream(
        model="claude",
        max_tokens=50,
        system=rules,
        messages=[{"role": "user", "content": unique("second")}],
    ) as stream:
        start = None
        for event in stream:
            if event.type == "message_start":
                start = event.message.usage
        final = stream.get_final_message()
    assert (start.input_tokens, start.cache_read_input_tokens) == (10, 1000)
    assert start.cache_creation.ephemeral_1h_input_tokens == 0
    usage = final.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (10, 1000, 5)
    assert usage.cache_creation_input_tokens == 0


def test_openai_sdk_cache_control_reaches_claude(oai):
    """Anthropic-style `cache_control` on OpenAI content parts: the cached prefix is reported
    as OpenAI reports it (`prompt_tokens` has every input token, `cached_tokens` the reads)."""
    system = [
        {"type": "text", "text": unique("Long house rules."), "cache_control": {"type": "ephemeral"}}
    ]
    usages = [
        oai.chat.completions.create(
            model="claude",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": unique(q)}],
        ).usage
        for q in ["first", "second"]
    ]
    assert [u.prompt_tokens for u in usages] == [1010, 1010]
    assert [u.prompt_tokens_details.cached_tokens for u in usages] == [0, 1000]


def test_anthropic_sdk_thinking_survives_a_tool_use_cycle(claude):
    """Thinking blocks come back typed with their signatures; sent back with the tool result,
    the fake checks the signature (a changed block is a 400, as at Anthropic)."""
    tools = [
        {
            "name": WEATHER["name"],
            "description": WEATHER["description"],
            "input_schema": WEATHER["parameters"],
        }
    ]
    thinking = {"type": "enabled", "budget_tokens": 2000}
    messages = [{"role": "user", "content": unique("weather in Oslo")}]
    first = claude.messages.create(
        model="claude", max_tokens=4000, thinking=thinking, tools=tools, messages=messages
    )
    assert first.content[0].type == "thinking"
    assert first.content[0].signature.startswith("fakesig")
    use = next(b for b in first.content if b.type == "tool_use")
    messages.append(
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]}
    )
    messages.append(
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "-3C"}]}
    )
    second = claude.messages.create(
        model="claude", max_tokens=4000, thinking=thinking, tools=tools, messages=messages
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "thinking"
    assert "-3C" in second.content[-1].text

    messages[1]["content"][0]["thinking"] = "Something else."
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(
            model="claude", max_tokens=4000, thinking=thinking, tools=tools, messages=messages
        )
    assert "signature" in e.value.body["error"]["message"]

    with claude.messages.stream(
        model="claude",
        max_tokens=4000,
        thinking=thinking,
        messages=[{"role": "user", "content": unique("think")}],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking.startswith("The user said: think")
    assert final.content[0].signature.startswith("fakesig")


def test_anthropic_sdk_errors_are_typed(providers, claude):
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(
            base_url=providers["base_url"], api_key="sk-sluice-nope", max_retries=0
        ).messages.create(
            model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("model", ["cut", "cut-claude", "truncated"])
def test_a_stream_the_provider_breaks_off_raises_in_the_openai_sdk(broken_providers, model):
    """The provider sends half a stream, then drops the connection (or just stops): the SDK
    gets the first chunks, then an error it raises, never a stream that looks complete."""
    oai = openai.OpenAI(
        base_url=f"{broken_providers['base_url']}/v1",
        api_key=broken_providers["key"],
        max_retries=0,
    )
    stream = oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": unique("cut")}], stream=True
    )
    chunks = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            chunks.append(chunk)
    assert chunks, "the chunks before the break reach the client"
    assert "broke off" in e.value.message


def test_a_stream_the_provider_breaks_off_raises_in_the_anthropic_sdk(broken_providers):
    claude = anthropic.Anthropic(
        base_url=broken_providers["base_url"], api_key=broken_providers["key"], max_retries=0
    )
    with pytest.raises(anthropic.APIError) as e:
        with claude.messages.stream(
            model="cut", max_tokens=50, messages=[{"role": "user", "content": unique("cut")}]
        ) as stream:
            "".join(stream.text_stream)
    assert "broke off" in str(e.value)


def test_a_broken_answer_is_a_clean_error_in_the_openai_sdk(broken_providers):
    """Not streamed: half a JSON body (reset or not) is a 502 the SDK raises as such."""
    oai = openai.OpenAI(
        base_url=f"{broken_providers['base_url']}/v1",
        api_key=broken_providers["key"],
        max_retries=0,
    )
    for model in ["cut", "truncated"]:
        with pytest.raises(openai.InternalServerError) as e:
            oai.chat.completions.create(
                model=model, messages=[{"role": "user", "content": unique("cut")}]
            )
        assert e.value.status_code == 502
        assert e.value.body["code"] in ("upstream_bad_response", "upstream_unreachable")
