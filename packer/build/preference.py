"""Preference records (--kind preference) in the formats people have, rendered as rows with roles.

One record becomes several tokenized rows sharing its record number, each a whole sequence (prompt then
reply) whose loss mask covers the reply only:

    explicit   {"prompt", "chosen", "rejected"}: strings, or lists of chat messages (TRL's standard and
               conversational formats; a system prompt is a message of the prompt)
    openai     {"input": {"messages": [...], "tools": [...]}, "preferred_output": [...],
                "non_preferred_output": [...]}  (OpenAI's preference fine-tuning records)
    implicit   {"chosen", "rejected"} only: whole conversations (the prompt is every message before the
               last, which must be equal in both) or texts (split where they first differ, as TRL's
               extract_prompt splits them: a space just before the split goes with the replies)
    unpaired   {"prompt", "completion", "label": bool}  (KTO)

    rows: a pair gives (CHOSEN, prompt + chosen) then (REJECTED, prompt + rejected); an unpaired record
    gives (DESIRABLE or UNDESIRABLE, prompt + completion), and the tokenize stage adds its KL row
    (KL, this prompt + the next unpaired record's completion: KTO's mismatched pair, fixed at pack time).

Text replies are trained with the EOS the tokenize stage appends; chat replies are rendered through the
chat template exactly as --kind chat renders an assistant turn (the template closes the turn).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from packer.core.errors import ConfigError, InputError



from packer.core.roles import CHOSEN, DESIRABLE, KL, REJECTED, UNDESIRABLE, UNPAIRED  # noqa: F401

FORMATS = ("auto", "explicit", "openai", "implicit", "unpaired")

Span = tuple[str, bool]
Text = str | list  # a string, or a list of chat messages


@dataclass(frozen=True)
class Row:
    """One tokenized row of a preference record: its role, spans and whether EOS is appended (text)."""

    role: int
    spans: list[Span]
    eos: bool


@dataclass(frozen=True)
class Parsed:
    """A record read in any format: the prompt and its replies with their roles (strings or messages)."""

    prompt: Text
    replies: list[tuple[int, Text]]
    tools: list | None = None


@dataclass(frozen=True)
class Fields:
    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    completion: str = "completion"
    label: str = "label"
    tools: str = "tools"


def detect(obj: dict, f: Fields, fmt: str, where: str, line: int | None) -> str:
    """The record's format (fmt, or by its fields under auto), or an InputError listing its keys."""
    if fmt != "auto":
        return fmt
    if "input" in obj and ("preferred_output" in obj or "non_preferred_output" in obj):
        return "openai"
    if f.completion in obj or f.label in obj:
        return "unpaired"
    if f.chosen in obj or f.rejected in obj:
        return "explicit" if f.prompt in obj else "implicit"
    keys = ", ".join(sorted(obj)) or "none"
    raise InputError(where, line, None, f"is not a preference record (keys: {keys}); expected {f.prompt}/{f.chosen}/"
                     f"{f.rejected}, {f.chosen}/{f.rejected}, input/preferred_output/non_preferred_output or "
                     f"{f.prompt}/{f.completion}/{f.label}", "rename the fields with --prompt-field, --chosen-field, "
                     "--rejected-field, --completion-field, --label-field")


def _get(obj: dict, name: str, where: str, line: int | None, flag: str) -> object:
    if name not in obj or obj[name] is None:
        keys = ", ".join(sorted(obj)) or "none"
        raise InputError(where, line, name, f"missing (keys: {keys})", f"add it, or pass {flag} with the right name")
    return obj[name]


def _text(value: object, field: str, where: str, line: int | None) -> Text:
    """A non-empty string or a non-empty list of message objects."""
    if isinstance(value, str):
        if not value.strip():
            raise InputError(where, line, field, "is empty", "remove the record or pass --skip-bad")
        return value
    if isinstance(value, dict):  # a single message
        value = [value]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return value
    raise InputError(where, line, field, f"is {type(value).__name__}, expected a string or a non-empty list of "
                     "messages")


def _same_kind(prompt: Text, replies: list[tuple[int, Text]], fields: list[str], where: str, line: int | None
               ) -> None:
    """Prompt and replies all strings or all messages: mixing them has no one rendering."""
    for (_, r), name in zip(replies, fields):
        if isinstance(r, str) != isinstance(prompt, str):
            raise InputError(where, line, name, f"is {'a string' if isinstance(r, str) else 'a list of messages'} "
                             f"but the prompt is {'a string' if isinstance(prompt, str) else 'a list of messages'}",
                             "give the prompt and the replies both as strings or both as messages")


def _assistant(reply: Text, field: str, where: str, line: int | None) -> Text:
    if isinstance(reply, list) and not any(m.get("role") == "assistant" for m in reply):
        raise InputError(where, line, field, "holds no assistant message", "the reply must be the assistant's turn")
    return reply


def _differ(a: Text, b: Text, f: Fields, where: str, line: int | None) -> None:
    if a == b:
        raise InputError(where, line, f.rejected, f"equals {f.chosen}: the pair teaches nothing",
                         "remove the record or pass --skip-bad")


def implicit_split(chosen: Text, rejected: Text, f: Fields, where: str, line: int | None
                   ) -> tuple[Text, Text, Text]:
    """(prompt, chosen reply, rejected reply) of an implicit-prompt pair (DECISIONS: TRL's extract_prompt)."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        _differ(chosen, rejected, f, where, line)
        idx = 0
        while idx < min(len(chosen), len(rejected)) and chosen[idx] == rejected[idx]:
            idx += 1
        if idx and chosen[idx - 1] == " ":
            idx -= 1  # the space before the first differing word goes with the replies
        if idx == 0 or not chosen[:idx].strip():
            raise InputError(where, line, f.chosen, f"shares no prompt with {f.rejected} (they differ from the first "
                             "character)", f"give the prompt in its own field ({f.prompt})")
        if idx >= len(chosen) or idx >= len(rejected):
            raise InputError(where, line, f.chosen if idx >= len(chosen) else f.rejected,
                             "has nothing after the shared prompt", "remove the record or pass --skip-bad")
        return chosen[:idx], chosen[idx:], rejected[idx:]
    if isinstance(chosen, list) and isinstance(rejected, list):
        _differ(chosen, rejected, f, where, line)
        for field, conv in ((f.chosen, chosen), (f.rejected, rejected)):
            if conv[-1].get("role") != "assistant":
                raise InputError(where, line, f"{field}[{len(conv) - 1}].role", "is not assistant: an implicit-prompt "
                                 "conversation must end with the reply", "give the prompt in its own field")
        if len(chosen) < 2 or chosen[:-1] != rejected[:-1]:
            raise InputError(where, line, f.rejected, f"does not share every message before the last with {f.chosen}",
                             f"give the prompt in its own field ({f.prompt})")
        return chosen[:-1], chosen[-1:], rejected[-1:]
    raise InputError(where, line, f.rejected, f"is {'a string' if isinstance(rejected, str) else 'a list'} and "
                     f"{f.chosen} is not", "give both as strings or both as messages")


def parse(obj: dict, f: Fields, fmt: str, where: str, line: int | None) -> Parsed:
    """A preference record in any of the formats (see the module docstring) as a Parsed, or an InputError."""
    fmt = detect(obj, f, fmt, where, line)
    tools = obj.get(f.tools)
    if fmt == "openai":
        inp = _get(obj, "input", where, line, "the OpenAI format")
        if not isinstance(inp, dict):
            raise InputError(where, line, "input", f"is {type(inp).__name__}, expected an object with messages")
        prompt = _text(_get(inp, "messages", where, line, "the OpenAI format"), "input.messages", where, line)
        if isinstance(prompt, str):
            raise InputError(where, line, "input.messages", "is a string, expected a list of messages")
        chosen = _text(_get(obj, "preferred_output", where, line, "the OpenAI format"), "preferred_output", where,
                       line)
        rejected = _text(_get(obj, "non_preferred_output", where, line, "the OpenAI format"),
                         "non_preferred_output", where, line)
        replies = [(CHOSEN, _assistant(chosen, "preferred_output", where, line)),
                   (REJECTED, _assistant(rejected, "non_preferred_output", where, line))]
        _same_kind(prompt, replies, ["preferred_output", "non_preferred_output"], where, line)
        if chosen == rejected:
            raise InputError(where, line, "non_preferred_output", "equals preferred_output: the pair teaches nothing",
                             "remove the record or pass --skip-bad")
        return Parsed(prompt, replies, inp.get("tools", tools))
    if fmt == "unpaired":
        prompt = _text(_get(obj, f.prompt, where, line, "--prompt-field"), f.prompt, where, line)
        completion = _text(_get(obj, f.completion, where, line, "--completion-field"), f.completion, where, line)
        label = _get(obj, f.label, where, line, "--label-field")
        if not isinstance(label, bool):
            raise InputError(where, line, f.label, f"is {label!r} ({type(label).__name__}), expected true or false",
                             "KTO labels are booleans: true for a desirable completion")
        replies = [(DESIRABLE if label else UNDESIRABLE, _assistant(completion, f.completion, where, line))]
        _same_kind(prompt, replies, [f.completion], where, line)
        return Parsed(prompt, replies, tools)
    chosen = _text(_get(obj, f.chosen, where, line, "--chosen-field"), f.chosen, where, line)
    rejected = _text(_get(obj, f.rejected, where, line, "--rejected-field"), f.rejected, where, line)
    if fmt == "implicit":
        prompt, chosen, rejected = implicit_split(chosen, rejected, f, where, line)
    elif fmt == "explicit":
        prompt = _text(_get(obj, f.prompt, where, line, "--prompt-field"), f.prompt, where, line)
        if isinstance(chosen, list) and isinstance(rejected, list) and not isinstance(prompt, list):
            raise InputError(where, line, f.prompt, "is a string but the replies are messages",
                             "give the prompt as a list of messages too")
        _differ(chosen, rejected, f, where, line)
    else:
        raise InputError(where, line, None, f"preference format '{fmt}' is not one of {', '.join(FORMATS)}")
    replies = [(CHOSEN, _assistant(chosen, f.chosen, where, line)), (REJECTED, _assistant(rejected, f.rejected,
                                                                                           where, line))]
    _same_kind(prompt, replies, [f.chosen, f.rejected], where, line)
    return Parsed(prompt, replies, tools)


ChatSpans = Callable[[list, list, object, str, int | None], list[Span]]
"""(messages, trained flags, tools, where, line) -> spans: the chat kind's rendering (packer.build.templates)."""


def rows(parsed: Parsed, chat_spans: ChatSpans, where: str, line: int | None) -> list[Row]:
    """The tokenized rows of one parsed record: per reply, prompt + reply (the reply trained on)."""
    return [render(parsed.prompt, reply, role, parsed.tools, chat_spans, where, line) for role, reply in parsed.replies]


def render(prompt: Text, reply: Text, role: int, tools, chat_spans: ChatSpans, where: str, line: int | None) -> Row:
    """prompt + reply as spans: text pairs as (prompt, untrained) + (reply, trained) with EOS appended;
    chats through the chat renderer with every prompt message untrained and the reply's messages trained."""
    if isinstance(prompt, str) and isinstance(reply, str):
        return Row(role, [(prompt, False), (reply, True)], True)
    if isinstance(prompt, str) or isinstance(reply, str):
        raise InputError(where, line, None, "mixes a text prompt and a chat reply (a KTO mismatched pair takes the "
                         "next record's completion)", "give every record of a file as text or every one as messages")
    return Row(role, chat_spans([*prompt, *reply], [False] * len(prompt) + [True] * len(reply), tools, where, line),
               False)


def kl_rows(parsed: list[Parsed | None], chat_spans: ChatSpans, where: list[str], line: list[int | None]
            ) -> list[Row | None]:
    """KTO's mismatched rows for a batch of unpaired records (None for the others): record i's prompt with
    the completion of the next unpaired record of the batch (cyclically; its own when it is alone), as
    TRL pairs them, but fixed at pack time so the KL estimate never depends on which records share a step."""
    idx = [i for i, p in enumerate(parsed) if p is not None and p.replies[0][0] in UNPAIRED]
    out: list[Row | None] = [None] * len(parsed)
    for k, i in enumerate(idx):
        j = idx[(k + 1) % len(idx)]
        p, q = parsed[i], parsed[j]
        out[i] = render(p.prompt, q.replies[0][1], KL, p.tools, chat_spans, where[i], line[i])
    return out


class PreferenceRenderer:
    """The --kind preference renderer: a record -> (Parsed, its rows); kl() adds KTO's mismatched rows."""

    def __init__(self, fields: dict[str, str], fmt: str, chat_spans: ChatSpans):
        if fmt not in FORMATS:
            raise ConfigError(f"preference_format '{fmt}' is not one of {', '.join(FORMATS)}")
        self.fields = Fields(**{k: fields[f"{k}_field"] for k in ("prompt", "chosen", "rejected", "completion",
                                                                 "label", "tools")})
        self.fmt, self.chat_spans = fmt, chat_spans

    def __call__(self, obj: dict, path: str, line: int | None) -> tuple[Parsed, list[Row]]:
        parsed = parse(obj, self.fields, self.fmt, path, line)
        return parsed, rows(parsed, self.chat_spans, path, line)

    def kl(self, parsed: list[Parsed | None], where: list[str], line: list[int | None]) -> list[Row | None]:
        return kl_rows(parsed, self.chat_spans, where, line)
