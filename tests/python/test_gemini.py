"""Gemini 3 tool calling through the official SDKs, unchanged: Gemini 3 refuses a second turn
whose function call comes back without its thought signature, and Sluice carries the
signature in the tool call's id. The SDKs send back what they received in the ways their
users do — the message object itself, a dict rebuilt from id/type/function, a streamed call
accumulated from its deltas, Anthropic content blocks — and each second turn is answered.

The fake (tests/src/fake_upstream/gemini.rs) refuses a Gemini 3 history without the
signature it issued, with Google's message, as the real API does."""

import json
import uuid

import anthropic
import openai
import pytest

LOOKUP = {
    "name": "lookup",
    "description": "Looks a thing up",
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string"}},
        "required": ["query"],
        "additionalProperties": False,
    },
}
TOOLS = [{"type": "function", "function": {**LOOKUP, "strict": True}}]


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


@pytest.fixture()
def oai(providers):
    return openai.OpenAI(
        base_url=f"{providers['base_url']}/v1", api_key=providers["key"], max_retries=0
    )


@pytest.fixture()
def claude(providers):
    return anthropic.Anthropic(
        base_url=providers["base_url"], api_key=providers["key"], max_retries=0
    )


def finish_turn(oai, messages, call_id):
    messages.append({"role": "tool", "tool_call_id": call_id, "content": "Ibsen"})
    second = oai.chat.completions.create(model="gemini3", messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == 'tool said: {"content":"Ibsen"}'


@pytest.mark.parametrize("echo", ["message object", "rebuilt dict"])
def test_openai_sdk_two_turns_on_gemini_3(oai, echo):
    messages = [{"role": "user", "content": unique("Who wrote Peer Gynt?")}]
    first = oai.chat.completions.create(model="gemini3", messages=messages, tools=TOOLS)
    message = first.choices[0].message
    call = message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup"
    if echo == "message object":
        messages.append(message)
    else:
        messages.append(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": call.function.arguments,
                        },
                    }
                ],
            }
        )
    finish_turn(oai, messages, call.id)


def test_openai_sdk_streamed_call_on_gemini_3(oai):
    messages = [{"role": "user", "content": unique("Who wrote Brand?")}]
    calls = {}
    stream = oai.chat.completions.create(
        model="gemini3", messages=messages, tools=TOOLS, stream=True
    )
    for chunk in stream:
        deltas = (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []
        for delta in deltas:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
    call = calls[0]
    assert json.loads(call["arguments"])["query"].startswith("Who wrote Brand?")
    messages.append(
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        }
    )
    finish_turn(oai, messages, call["id"])


def test_anthropic_sdk_two_turns_on_gemini_3(claude):
    tools = [
        {
            "name": LOOKUP["name"],
            "description": LOOKUP["description"],
            "input_schema": LOOKUP["parameters"],
        }
    ]
    messages = [{"role": "user", "content": unique("Who wrote Ghosts?")}]
    first = claude.messages.create(model="gemini3", max_tokens=100, messages=messages, tools=tools)
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    # The SDK's own content blocks, sent back as they came.
    messages.append({"role": "assistant", "content": first.content})
    messages.append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Ibsen"}],
        }
    )
    second = claude.messages.create(model="gemini3", max_tokens=100, messages=messages, tools=tools)
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == 'tool said: {"content":"Ibsen"}'
