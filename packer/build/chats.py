"""Chat records in the formats people have, normalized to one: OpenAI-style messages.

    openai    {"messages": [{"role", "content", "tool_calls", "reasoning_content", ...}], "tools": [...]}
              content may be a string, null (an assistant turn that only calls tools) or a list of
              parts ([{"type": "text", "text": ...}]; other part types are refused: Packer packs text)
    sharegpt  {"conversations": [{"from": "human" | "gpt" | "system" | "tool" | "function_call", "value"}],
               "system": "...", "tools": [...]}   (a top-level system prompt becomes the first turn)
    auto      openai when the record holds the messages field, sharegpt when it holds `conversations`
              (or its turns have from/value)

A normalized message keeps only the keys that carry something (a Parquet struct's absent fields come
back as None and are dropped), so a template's `message.tool_calls is defined` means what it says.
The per-message training switch (`weight`, 0 or 1, as in OpenAI's fine-tuning format; the field name
is configurable) is taken out of the message and returned beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from packer.core.config import CHAT_FORMATS, PARTS, TRAIN_ROLES, train_on
from packer.core.errors import ConfigError, InputError

ROLES = ("system", "developer", "user", "assistant", "tool", "ipython")
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "model": "assistant", "bard": "assistant", "bing": "assistant",
    "tool": "tool", "observation": "tool", "function_response": "tool", "ipython": "tool",
    "function_call": "assistant",  # the value is a JSON {"name", "arguments"}: a tool call
}


@dataclass(frozen=True)
class TrainOn:
    """Which turns and parts are trained on: roles, and within assistant turns, parts (config.train_on)."""

    roles: frozenset[str]
    parts: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> "TrainOn":
        return cls(*train_on(text))


@dataclass(frozen=True)
class Chat:
    """A normalized conversation: messages as a template takes them, the record's tools, and per
    message the weight override (True/False) or None (the role decides)."""

    messages: list[dict]
    tools: list | None
    weights: list[bool | None]
    images: tuple = ()
    """With images=True: the image parts, in the order the messages hold them, as (field, part); each stays
    in its message's content as {"type": "image"} for the chat template."""


def normalize(obj: dict, *, messages_field: str, chat_format: str, tools_field: str, weight_field: str,
              where: str, line: int | None, images: bool = False) -> Chat:
    """One record as a Chat, or an InputError naming the record, the field and what is wrong. images: keep
    image parts (OpenAI and datasets forms, packer.build.images) instead of refusing them."""
    fmt, field = _detect(obj, messages_field, chat_format, where, line)
    turns = obj[field]
    if isinstance(turns, str):  # some exports store the list as a JSON string
        turns = _json(turns, where, line, field)
    if not isinstance(turns, list) or not turns:
        raise InputError(where, line, field, "must be a non-empty list of messages")
    messages, weights, found = [], [], []
    for i, m in enumerate(turns):
        at = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise InputError(where, line, at, f"is {type(m).__name__}, expected an object")
        m = {k: v for k, v in m.items() if v is not None}
        msg = _from_sharegpt(m, at, where, line) if fmt == "sharegpt" else \
            _from_openai(m, at, where, line, found if images else None)
        weights.append(_weight(msg.pop(weight_field, None), f"{at}.{weight_field}", where, line))
        messages.append(msg)
    system = obj.get("system") if fmt == "sharegpt" else None
    if isinstance(system, str) and system.strip() and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})  # ShareGPT exports keep it beside the turns
        weights.insert(0, None)
    tools = obj.get(tools_field)
    if isinstance(tools, str):
        tools = _json(tools, where, line, tools_field)
    if tools is not None and not isinstance(tools, list):
        raise InputError(where, line, tools_field, f"is {type(tools).__name__}, expected a list of tool schemas")
    return Chat(messages, tools, weights, tuple(found))  # tools as given: [] is "tools", as transformers' tools=[] is


def _detect(obj: dict, messages_field: str, chat_format: str, where: str, line: int | None) -> tuple[str, str]:
    if chat_format not in CHAT_FORMATS:
        raise ConfigError(f"chat_format '{chat_format}' is not one of {', '.join(CHAT_FORMATS)}")
    if chat_format == "sharegpt" and messages_field == "messages" and "conversations" in obj:
        return "sharegpt", "conversations"
    if messages_field in obj:
        field = messages_field
    elif chat_format != "openai" and "conversations" in obj:
        field = "conversations"
    else:
        keys = ", ".join(sorted(obj)) or "none"
        raise InputError(where, line, messages_field, f"missing (keys: {keys})", "pass --messages-field")
    if chat_format != "auto":
        return chat_format, field
    turns = obj[field]
    first = turns[0] if isinstance(turns, list) and turns else None
    # By the turns' own keys: some exports keep OpenAI {role, content} turns under `conversations`.
    if isinstance(first, dict) and ("role" in first or "from" in first):
        sharegpt = "from" in first and "role" not in first
    else:
        sharegpt = field == "conversations"
    return ("sharegpt" if sharegpt else "openai"), field


def _json(text: str, where: str, line: int | None, field: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(where, line, field, f"is a string that is not JSON ({e.msg})") from None


def _weight(value, at: str, where: str, line: int | None) -> bool | None:
    if value is None:
        return None
    if value in (0, 1) or isinstance(value, bool):  # True == 1, False == 0
        return bool(value)
    raise InputError(where, line, at, f"is {value!r}; a message's weight is 0 or 1")


def _with_images(content: list, at: str, where: str, line: int | None, found: list):
    """A content list holding image parts, as the template takes it: text parts and {"type": "image"} in order
    (the parts themselves collected in `found` with their field); video parts refused."""
    from packer.build.images import part_kind

    out = []
    for k, part in enumerate(content):
        kind = part_kind(part)
        if kind == "video":
            raise InputError(where, line, f"{at}.content[{k}]", "is a video part; Packer packs images only for now",
                             "drop the part, or the record with --skip-bad")
        if kind == "image":
            found.append((f"{at}.content[{k}]", part))
            out.append({"type": "image"})
        elif isinstance(part, str):
            out.append({"type": "text", "text": part})
        elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text") and \
                isinstance(part.get("text"), str):
            out.append({"type": "text", "text": part["text"]})
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise InputError(where, line, f"{at}.content[{k}]", f"is a '{kind}' part; Packer packs text and images",
                             "drop the part, or the record with --skip-bad")
    return out


def _text(content, at: str, where: str, line: int | None, found: list | None = None):
    """A message's content as text: strings as they are, lists of text parts joined, null kept. With `found`
    (a run with images), a list holding image parts stays a list (_with_images)."""
    if content is None or isinstance(content, str):
        return content
    if found is not None and isinstance(content, list):
        from packer.build.images import part_kind

        if any(part_kind(p) for p in content):
            return _with_images(content, at, where, line, found)
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise InputError(where, line, f"{at}.content[{k}]", f"is a '{kind}' part; Packer packs text, and images "
                                 "with --processor DIR (the model's processor folder)",
                                 "drop the part, the record with --skip-bad, or pass --processor for image parts")
        return "".join(texts)
    raise InputError(where, line, f"{at}.content", f"is {type(content).__name__}, expected a string, a list "
                     "of text parts or null")


def _tool_calls(calls, at: str, where: str, line: int | None) -> list[dict]:
    if not isinstance(calls, list):
        raise InputError(where, line, f"{at}.tool_calls", f"is {type(calls).__name__}, expected a list")
    out = []
    for k, call in enumerate(calls):
        here = f"{at}.tool_calls[{k}]"
        if not isinstance(call, dict):
            raise InputError(where, line, here, f"is {type(call).__name__}, expected an object")
        call = {key: v for key, v in call.items() if v is not None}
        fn = call.get("function", call if "name" in call else None)  # {"name", "arguments"} also accepted
        if not isinstance(fn, dict):
            raise InputError(where, line, here, "has no 'function' object", "write {type: function, function: {name, "
                             "arguments}}")
        fn = {key: v for key, v in fn.items() if v is not None}
        if not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise InputError(where, line, f"{here}.function.name", "is missing: a tool call needs a name",
                             "fix the record or pass --skip-bad")
        if "arguments" in fn and not isinstance(fn["arguments"], (str, dict)):
            raise InputError(where, line, f"{here}.function.arguments",
                             f"is {type(fn['arguments']).__name__}, expected a JSON string or an object")
        rest = {key: v for key, v in call.items() if key not in ("function", "name", "arguments")}
        out.append({"type": "function", **rest, "function": fn})
    return out


def _from_openai(m: dict, at: str, where: str, line: int | None, found: list | None = None) -> dict:
    role = m.get("role")
    if not isinstance(role, str):
        raise InputError(where, line, f"{at}.role", "is missing; every message needs a string 'role'")
    if role not in ROLES:
        raise InputError(where, line, f"{at}.role", f"'{role}' is not a known role ({', '.join(ROLES)})",
                         "fix the record or pass --skip-bad")
    msg = dict(m)
    msg["content"] = _text(m.get("content"), at, where, line, found)
    if "reasoning" in msg and "reasoning_content" not in msg:
        msg["reasoning_content"] = msg["reasoning"]  # both kept: the template sees what transformers shows it
    if "reasoning_content" in msg and not isinstance(msg["reasoning_content"], str):
        raise InputError(where, line, f"{at}.reasoning_content",
                         f"is {type(msg['reasoning_content']).__name__}, expected a string")
    if "tool_calls" in msg:
        if role != "assistant":
            raise InputError(where, line, f"{at}.tool_calls", f"on a '{role}' message; only assistant turns call tools")
        msg["tool_calls"] = _tool_calls(msg["tool_calls"], at, where, line)
        if not msg["tool_calls"]:
            del msg["tool_calls"]
    if msg["content"] is None and not msg.get("tool_calls"):
        raise InputError(where, line, f"{at}.content", "is null, and the message calls no tool",
                         "fix the record or pass --skip-bad")
    return msg


def _from_sharegpt(m: dict, at: str, where: str, line: int | None) -> dict:
    who, value = m.get("from"), m.get("value")
    if not isinstance(who, str):
        raise InputError(where, line, f"{at}.from", "is missing; every ShareGPT turn needs 'from'")
    if who not in SHAREGPT_ROLES:
        raise InputError(where, line, f"{at}.from", f"'{who}' is not a known ShareGPT role "
                         f"({', '.join(SHAREGPT_ROLES)})", "fix the record or pass --skip-bad")
    if not isinstance(value, str):
        raise InputError(where, line, f"{at}.value", f"is {type(value).__name__}, expected a string")
    rest = {k: v for k, v in m.items() if k not in ("from", "value")}
    if who == "function_call":
        call = _json(value, where, line, f"{at}.value")
        calls = call if isinstance(call, list) else [call]
        return {"role": "assistant", "content": None, **rest,
                "tool_calls": _tool_calls(calls, at, where, line)}
    return {"role": SHAREGPT_ROLES[who], "content": value, **rest}
