"""What a model span says it sent and got back: request messages, parameters and response.

Pure functions over a span's attributes, for :func:`ingest.otlp.model_data`. Three spellings
are read, the first one present wins:

- OpenInference (``openinference-instrumentation-openai`` and its siblings):
  ``llm.input_messages.N.message.{role,content,name,tool_call_id,contents.M...,tool_calls.M...}``,
  ``llm.output_messages.N.message.*``, ``llm.invocation_parameters`` (a JSON string),
  ``llm.tools.N.tool.json_schema``;
- the GenAI semantic conventions: ``gen_ai.input.messages`` / ``gen_ai.output.messages`` /
  ``gen_ai.system_instructions`` (JSON, messages of typed ``parts``) and
  ``gen_ai.tool.definitions``;
- the older GenAI spelling: ``gen_ai.prompt.N.*`` / ``gen_ai.completion.N.*``.

Request parameters also come from ``gen_ai.request.*`` (temperature, max_tokens, ...). Everything
is written as an OpenAI chat-completions request (``request``: {messages, params}) and answer
(``response``: {content, tool_calls, finish_reason}), so a step replay can send it again.

Bounds (the contract's event limit is 1 MiB): a request over :data:`REQUEST_BOUND_BYTES` keeps its
leading messages that fit (the last one cut) and ends with a marker message of role
:data:`TRUNCATED_ROLE` saying what was left out; a step replay never re-sends such a request. A
response over :data:`RESPONSE_BOUND_BYTES` keeps the start of its content, ending with
``[truncated by tachograph at ingest: kept N of M bytes]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tachograph.contract.canonical import dumps, loads
from tachograph.contract.events import ModelRequest, ModelResponse

REQUEST_BOUND_BYTES = 64 * 1024
"""Most canonical JSON bytes of one call's request (messages and params) kept at ingest."""
RESPONSE_BOUND_BYTES = 16 * 1024
"""Most canonical JSON bytes of one call's response kept at ingest."""
TRUNCATED_ROLE = "tachograph.truncated"
"""Role of the marker message that ends a request cut to :data:`REQUEST_BOUND_BYTES`."""
RESPONSE_TRUNCATED = re.compile(r"\[truncated by tachograph at ingest: kept \d+ of \d+ bytes\]$")
"""How a response content cut to :data:`RESPONSE_BOUND_BYTES` ends."""

_NAME_MAX = 512
_GENAI_PARAMS = {
    "gen_ai.request.temperature": "temperature",
    "gen_ai.request.max_tokens": "max_tokens",
    "gen_ai.request.top_p": "top_p",
    "gen_ai.request.top_k": "top_k",
    "gen_ai.request.frequency_penalty": "frequency_penalty",
    "gen_ai.request.presence_penalty": "presence_penalty",
    "gen_ai.request.stop_sequences": "stop",
    "gen_ai.request.seed": "seed",
    "gen_ai.request.choice.count": "n",
}


# --- reading attributes -----------------------------------------------------------------------------
def _json(value: Any) -> Any:
    """A JSON attribute's value: parsed when a string (None when it is not JSON), else as is."""
    if isinstance(value, str):
        try:
            return loads(value)
        except ValueError:
            return None
    return value


def indexed(attrs: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """``{prefix}.{N}.{rest}`` attributes grouped by N, in index order, each as {rest: value}."""
    groups: dict[int, dict[str, Any]] = {}
    head = prefix + "."
    for key, value in attrs.items():
        if not key.startswith(head):
            continue
        index, dot, rest = key[len(head):].partition(".")
        if dot and index.isdigit():
            groups.setdefault(int(index), {})[rest] = value
    return [groups[i] for i in sorted(groups)]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else dumps(value).decode()


def _role(value: Any) -> str:
    role = str(value) if value not in (None, "") else "unknown"
    return role[:_NAME_MAX]


def _tool_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    """One tool call in the chat-completions shape (arguments as a JSON string)."""
    call: dict[str, Any] = {"type": "function",
                            "function": {"name": str(name or ""), "arguments": _text(arguments or "")}}
    if call_id not in (None, ""):
        call["id"] = str(call_id)
    return call


# --- OpenInference ---------------------------------------------------------------------------------
def _oi_message(m: Mapping[str, Any]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": _role(m.get("message.role"))}
    if "message.content" in m:
        msg["content"] = m["message.content"]
    else:
        parts = [_oi_part(p) for p in indexed(m, "message.contents")]
        if parts:
            msg["content"] = parts
    if m.get("message.name") not in (None, ""):
        msg["name"] = str(m["message.name"])
    if m.get("message.tool_call_id") not in (None, ""):
        msg["tool_call_id"] = str(m["message.tool_call_id"])
    calls = [_tool_call(c.get("tool_call.id"), c.get("tool_call.function.name"),
                        c.get("tool_call.function.arguments"))
             for c in indexed(m, "message.tool_calls")]
    if not calls and m.get("message.function_call_name"):
        calls = [_tool_call(None, m["message.function_call_name"],
                            m.get("message.function_call_arguments_json"))]
    if calls:
        msg["tool_calls"] = calls
    return msg


def _oi_part(p: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(p.get("message_content.type") or "text")
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": str(p.get("message_content.image.image.url", ""))}}
    return {"type": "text", "text": str(p.get("message_content.text", ""))}


def _openinference(attrs: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    messages = [_oi_message(m) for m in indexed(attrs, "llm.input_messages")]
    outputs = [_oi_message(m) for m in indexed(attrs, "llm.output_messages")]
    response = _answer(outputs[0], attrs.get("llm.finish_reason")) if outputs else None
    return messages, response


def _oi_params(attrs: Mapping[str, Any]) -> dict[str, Any]:
    params = _json(attrs.get("llm.invocation_parameters"))
    out = {k: v for k, v in params.items() if k not in ("model", "messages")} \
        if isinstance(params, dict) else {}
    tools = [t for t in (_json(d.get("tool.json_schema")) for d in indexed(attrs, "llm.tools")) if t]
    if tools and "tools" not in out:
        out["tools"] = tools
    return out


# --- GenAI semantic conventions ----------------------------------------------------------------------
def _genai_message(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One GenAI message of typed parts as chat-completions messages (tool results become
    messages of their own, role ``tool``)."""
    role = _role(m.get("role"))
    texts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for part in m.get("parts") or []:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind == "text":
            texts.append({"type": "text", "text": str(part.get("content", ""))})
        elif kind == "tool_call":
            calls.append(_tool_call(part.get("id"), part.get("name"), part.get("arguments")))
        elif kind == "tool_call_response":
            result: dict[str, Any] = {"role": "tool", "content": _text(part.get("response", ""))}
            if part.get("id") not in (None, ""):
                result["tool_call_id"] = str(part["id"])
            results.append(result)
        else:
            texts.append(dict(part))  # images, files: kept as they were given
    out: list[dict[str, Any]] = []
    if texts or calls or not results:
        msg: dict[str, Any] = {"role": role}
        if len(texts) == 1 and texts[0].get("type") == "text":
            msg["content"] = texts[0]["text"]
        elif texts:
            msg["content"] = texts
        else:
            msg["content"] = None
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    return out + results


def _genai(attrs: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    given = _json(attrs.get("gen_ai.input.messages"))
    messages: list[dict[str, Any]] = []
    system = _json(attrs.get("gen_ai.system_instructions"))
    if isinstance(system, list):
        text = "\n".join(str(p.get("content", "")) for p in system if isinstance(p, Mapping))
        messages.append({"role": "system", "content": text})
    elif isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    for m in given if isinstance(given, list) else []:
        if isinstance(m, Mapping):
            messages.extend(_genai_message(m))
    outputs = _json(attrs.get("gen_ai.output.messages"))
    response = None
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], Mapping):
        first = _genai_message(outputs[0])[0]
        response = _answer(first, outputs[0].get("finish_reason"))
    return messages, response


def _legacy_message(m: Mapping[str, Any]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": _role(m.get("role")), "content": m.get("content")}
    if m.get("tool_call_id") not in (None, ""):
        msg["tool_call_id"] = str(m["tool_call_id"])
    calls = [_tool_call(c.get("id"), c.get("name"), c.get("arguments")) for c in indexed(m, "tool_calls")]
    if calls:
        msg["tool_calls"] = calls
    return msg


def _legacy(attrs: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    messages = [_legacy_message(m) for m in indexed(attrs, "gen_ai.prompt")]
    completions = indexed(attrs, "gen_ai.completion")
    response = _answer(_legacy_message(completions[0]), completions[0].get("finish_reason")) \
        if completions else None
    return messages, response


def _genai_params(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {name: attrs[key] for key, name in _GENAI_PARAMS.items() if key in attrs}
    tools = _json(attrs.get("gen_ai.tool.definitions"))
    if isinstance(tools, list) and tools:
        out["tools"] = [_chat_tool(t) for t in tools if isinstance(t, Mapping)]
    return out


def _chat_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A tool definition in the chat-completions shape ({type, function: {name, ...}})."""
    if "function" in tool or tool.get("type", "function") != "function":
        return dict(tool)
    return {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}


# --- the request and the response ------------------------------------------------------------------
def _answer(message: Mapping[str, Any], finish_reason: Any) -> dict[str, Any]:
    response: dict[str, Any] = {"content": message.get("content")}
    if message.get("tool_calls"):
        response["tool_calls"] = list(message["tool_calls"])
    if isinstance(finish_reason, list):
        finish_reason = finish_reason[0] if finish_reason else None
    if finish_reason not in (None, ""):
        response["finish_reason"] = str(finish_reason)
    return response


def exchange(attrs: Mapping[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The request and the response a model span records (each None when it records none),
    bounded and valid per the contract's ``ModelRequest`` / ``ModelResponse``."""
    for read in (_openinference, _genai, _legacy):
        messages, response = read(attrs)
        if messages or response:
            break
    request: dict[str, Any] | None = None
    if messages:
        params = {**_genai_params(attrs), **_oi_params(attrs)}
        request = {"messages": messages, **({"params": params} if params else {})}
        request = _checked(ModelRequest, bound_request(request))
    if response is not None:
        response = _checked(ModelResponse, bound_response(response))
    return request, response


def _checked(model: type[ModelRequest] | type[ModelResponse], value: dict[str, Any]) -> dict[str, Any] | None:
    """``value`` if the contract accepts it, else None (the call is still recorded, without it)."""
    try:
        model.model_validate(value)
    except ValidationError:
        return None
    return value


def _size(value: Any) -> int:
    return len(dumps(value))


def _cut_text(text: str, room: int) -> str:
    """The longest start of ``text`` whose JSON encoding fits in ``room`` bytes (about)."""
    cut = text[: max(0, room)]
    while cut and _size(cut) > room:
        cut = cut[: int(len(cut) * 0.9)]
    return cut


def bound_request(request: dict[str, Any], limit: int = REQUEST_BOUND_BYTES) -> dict[str, Any]:
    """``request`` if it fits in ``limit`` bytes; else its leading messages that fit (the last
    one cut), params if they fit in half, and a :data:`TRUNCATED_ROLE` marker message."""
    total = _size(request)
    if total <= limit:
        return request
    budget = limit - 1024  # the marker and the JSON around the messages
    params = request.get("params")
    kept_params = params if params is not None and _size(params) <= budget // 2 else None
    used = _size(kept_params or {})
    kept: list[dict[str, Any]] = []
    cut_last = False
    for message in request["messages"]:
        size = _size(message) + 1
        if used + size <= budget:
            kept.append(message)
            used += size
            continue
        room = budget - used - _size({**message, "content": ""})
        if isinstance(message.get("content"), str) and room > 256:
            kept.append({**message, "content": _cut_text(message["content"], room)})
            cut_last = True
        break
    marker = {"role": TRUNCATED_ROLE, "content": {
        "original_bytes": total, "bound_bytes": limit, "messages": len(request["messages"]),
        "messages_kept": len(kept), "last_kept_message_cut": cut_last,
        "params_dropped": params is not None and kept_params is None,
    }}
    out: dict[str, Any] = {"messages": [*kept, marker]}
    if kept_params is not None:
        out["params"] = kept_params
    return out


def bound_response(response: dict[str, Any], limit: int = RESPONSE_BOUND_BYTES) -> dict[str, Any]:
    """``response`` if it fits in ``limit`` bytes; else the start of its content with a marker."""
    total = _size(response)
    if total <= limit:
        return response
    content = response.get("content")
    text = content if isinstance(content, str) else _text(content)
    rest = {k: v for k, v in response.items() if k not in ("content", "tool_calls")}
    room = limit - _size(rest) - 128
    kept = _cut_text(text, room)
    mark = f"[truncated by tachograph at ingest: kept {len(kept.encode())} of {total} bytes]"
    return {**rest, "content": kept + mark}
