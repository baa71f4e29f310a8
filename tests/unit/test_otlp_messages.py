"""What a model span sent and got back, read from the GenAI conventions' spellings, bounded."""

from __future__ import annotations

import json
from decimal import Decimal

from ingest.otlp import SpanView, model_data
from ingest.otlp_messages import (
    REQUEST_BOUND_BYTES,
    RESPONSE_BOUND_BYTES,
    RESPONSE_TRUNCATED,
    TRUNCATED_ROLE,
    exchange,
)
from tachograph.contract.canonical import dumps
from tachograph.contract.events import ModelCalled


def _span(attrs: dict) -> SpanView:
    base = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 2}
    return SpanView("ab" * 16, "cd" * 8, "", "chat", 1_767_225_600_000_000_000, 1_767_225_601_000_000_000,
                    False, "", {**base, **attrs})


def test_genai_input_and_output_messages_become_a_chat_request_and_answer():
    attrs = {
        "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}]),
        "gen_ai.input.messages": json.dumps([
            {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
            {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "weather",
                                             "arguments": {"city": "Paris"}}]},
            {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "rain"}]},
        ]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "finish_reason": "stop",
                                               "parts": [{"type": "text", "content": "Rainy."}]}]),
        "gen_ai.request.temperature": Decimal("0.5"),
        "gen_ai.request.max_tokens": 64,
        "gen_ai.tool.definitions": json.dumps([{"type": "function", "name": "weather",
                                                "parameters": {"type": "object"}}]),
    }
    data = model_data(_span(attrs))
    assert data["request"] == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "content": "rain", "tool_call_id": "c1"},
        ],
        "params": {"temperature": Decimal("0.5"), "max_tokens": 64, "tools": [
            {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]},
    }
    assert data["response"] == {"content": "Rainy.", "finish_reason": "stop"}
    ModelCalled.model_validate(data)


def test_older_genai_prompt_and_completion_attributes_are_read_too():
    attrs = {"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "hi",
             "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "",
             "gen_ai.completion.0.finish_reason": "tool_calls",
             "gen_ai.completion.0.tool_calls.0.id": "t1", "gen_ai.completion.0.tool_calls.0.name": "lookup",
             "gen_ai.completion.0.tool_calls.0.arguments": '{"q": 1}'}
    request, response = exchange(attrs)
    assert request == {"messages": [{"role": "user", "content": "hi"}]}
    assert response == {"content": "", "finish_reason": "tool_calls", "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}]}


def test_a_span_without_messages_keeps_no_request():
    data = model_data(_span({"gen_ai.response.finish_reasons": ["length"]}))
    assert "request" not in data and data["response"] == {"finish_reason": "length"}


def test_a_request_over_the_bound_keeps_what_fits_and_ends_with_a_marker():
    big = "x" * (REQUEST_BOUND_BYTES // 2)
    attrs = {f"llm.input_messages.{i}.message.role": "user" for i in range(3)}
    attrs |= {f"llm.input_messages.{i}.message.content": f"{i}{big}" for i in range(3)}
    attrs["llm.output_messages.0.message.role"] = "assistant"
    attrs["llm.output_messages.0.message.content"] = "y" * (RESPONSE_BOUND_BYTES * 2)
    data = model_data(_span(attrs))
    messages = data["request"]["messages"]
    assert len(dumps(data["request"])) <= REQUEST_BOUND_BYTES
    assert messages[0]["content"] == f"0{big}"  # the first whole, the second cut, the third left out
    assert messages[1]["content"].startswith("1x") and len(messages[1]["content"]) < len(big)
    assert messages[-1]["role"] == TRUNCATED_ROLE
    assert messages[-1]["content"]["messages"] == 3 and messages[-1]["content"]["messages_kept"] == 2
    assert messages[-1]["content"]["last_kept_message_cut"] is True
    content = data["response"]["content"]
    assert len(dumps(data["response"])) <= RESPONSE_BOUND_BYTES and RESPONSE_TRUNCATED.search(content)
    ModelCalled.model_validate(data)
    assert len(dumps(data)) < 1_048_576


def test_openinference_message_parts_and_invocation_parameters():
    attrs = {"llm.input_messages.0.message.role": "user",
             "llm.input_messages.0.message.contents.0.message_content.type": "text",
             "llm.input_messages.0.message.contents.0.message_content.text": "what is this?",
             "llm.input_messages.0.message.contents.1.message_content.type": "image",
             "llm.input_messages.0.message.contents.1.message_content.image.image.url": "data:image/png;base64,AA",
             "llm.invocation_parameters": '{"model": "gpt-4o-mini", "top_p": 0.9, "stream": true}'}
    request, response = exchange(attrs)
    assert request == {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}],
        "params": {"top_p": Decimal("0.9"), "stream": True}}
    assert response is None
