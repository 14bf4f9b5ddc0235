"""Rendering records into text spans, each flagged as trained on (loss) or not.

An sft record {query, response} through the alpaca template becomes::

    [("Below is an instruction ... ### Instruction:\n" + query + "\n\n### Response:\n", False),
     (response, True)]

and the tokenizer stage appends EOS (trained on). Spans are tokenized separately and concatenated,
so the loss mask follows the span boundaries exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from packer.build.chats import PARTS, Chat, TrainOn, normalize
from packer.core.errors import ConfigError, InputError

Span = tuple[str, bool]

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{query}\n\n### Response:\n"
)


@dataclass(frozen=True)
class PromptTemplate:
    """An sft template: `prompt` with a {query} slot (no loss), then the response and `suffix` (loss)."""

    name: str
    prompt: str
    suffix: str = ""

    def render(self, query: str, response: str) -> list[Span]:
        spans = [(self.prompt.replace("{query}", query), False), (response, True)]
        if self.suffix:
            spans.append((self.suffix, True))
        return spans


SFT_TEMPLATES = {
    "alpaca": PromptTemplate("alpaca", ALPACA),
    "chatml": PromptTemplate(
        "chatml", "<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n"
    ),
    "none": PromptTemplate("none", "{query}"),
}


def load_sft_template(name_or_path: str) -> PromptTemplate:
    """A built-in template by name, or a file whose text has {query} and optionally {response}.

    In a file, text before {response} is the prompt (no loss) and text after it is trained on.
    """
    if name_or_path in SFT_TEMPLATES:
        return SFT_TEMPLATES[name_or_path]
    p = Path(name_or_path)
    if not p.is_file():
        raise ConfigError(
            f"template '{name_or_path}' is neither a built-in ({', '.join(SFT_TEMPLATES)}) nor a file"
        )
    text = p.read_text(encoding="utf-8")
    if "{query}" not in text:
        raise ConfigError(f"{p}: a template file needs a {{query}} slot")
    prompt, _, suffix = text.partition("{response}")
    return PromptTemplate(str(p), prompt, suffix)


def _string_field(obj: dict, name: str, path: str, line: int, flag: str) -> str:
    """obj[name] as a non-empty string, or an InputError that lists the keys the record has."""
    if name not in obj:
        keys = ", ".join(sorted(obj)) or "none"
        raise InputError(path, line, name, f"missing (keys: {keys})", f"pass {flag} with the right name")
    value = obj[name]
    if not isinstance(value, str):
        raise InputError(path, line, name, f"is {type(value).__name__}, expected a string")
    if not value.strip():
        raise InputError(path, line, name, "is empty", "remove the record or pass --skip-bad")
    return value


def sft_spans(obj: dict, template: PromptTemplate, query_field: str, response_field: str,
              path: str, line: int) -> list[Span]:
    query = _string_field(obj, query_field, path, line, "--query-field")
    response = _string_field(obj, response_field, path, line, "--response-field")
    return template.render(query, response)


def text_spans(obj: dict, text_field: str, path: str, line: int) -> list[Span]:
    return [(_string_field(obj, text_field, path, line, "--text-field"), True)]


def chatml_spans(chat: Chat, trained: list[bool]) -> list[Span]:
    """ChatML turns; loss on each trained turn's content and its end marker, never on headers.

    The built-in template renders plain text turns only: tool calls, tool schemas and reasoning need
    the model's own template, and are refused rather than rendered in a format the model never saw.
    """
    if chat.tools or any("tool_calls" in m or "reasoning_content" in m for m in chat.messages):
        raise ConfigError("the built-in chatml template does not render tools, tool calls or reasoning; "
                          "pass --template tokenizer (the tokenizer's chat template) or --template FILE.jinja")
    spans: list[Span] = []
    for m, train in zip(chat.messages, trained):
        spans.append((f"<|im_start|>{m['role']}\n", False))
        spans.append((m["content"] + "<|im_end|>\n", train))
    return spans


def _lcp(a: str, b: str) -> int:
    """Length of the longest common prefix (os.path.commonprefix is C-speed on two strings)."""
    import os.path

    return len(os.path.commonprefix([a, b]))


def _lcs(a: str, b: str) -> int:
    """Length of the longest common suffix."""
    return _lcp(a[::-1], b[::-1])


class JinjaChat:
    """Spans from a Jinja chat template: the whole conversation is rendered once, and each trained
    turn's region is found in that text by rendering prefixes of the conversation.

    For a turn i, the region starts where the template's rendering of messages[:i] (with the
    generation prompt, for an assistant turn) ends, and stops where the rendering of messages[:i+1]
    ends; a template that closes the last turn differently (Hermes closes a final tool turn without
    its newline) is matched by searching for the generation prompt after the common prefix. So the
    tokens are exactly the template's rendering of the whole conversation, with the loss on what the
    model says in each trained turn, never on the headers that introduce it::

        <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n  Hello!<|im_end|>\n
        |------------------- no loss ---------------------------||---- loss -------|

    Within an assistant turn, parts (reasoning, text, tool calls) are located by rendering the
    conversation without that part of that turn: the part is where the two renderings differ. A
    template that rewrites earlier turns when later ones follow, so that no region can be placed, is
    refused with an error, never masked approximately.
    """

    def __init__(self, template: str, special: dict[str, str]):
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        def strftime_now(fmt: str) -> str:
            # Shards never depend on the clock: a template that asks for today's date is refused.
            raise ConfigError("the chat template calls strftime_now (today's date), which would make the shards "
                              "depend on the day they are built; pass a template that takes date_string, or edit it")

        # As transformers compiles chat templates (same options, filters and globals), so the text is the same.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = strftime_now
        env.filters["tojson"] = _tojson
        self._compiled = env.from_string(template)
        self._special = special

    def render(self, messages: list[dict], tools: list | None, gen: bool) -> str:
        kw = dict(self._special)
        if tools:
            kw["tools"] = tools
        return self._compiled.render(messages=messages, add_generation_prompt=gen, **kw)

    def spans(self, chat: Chat, trained: list[bool], parts: frozenset[str]) -> list[Span]:
        msgs, tools = chat.messages, chat.tools
        full = self.render(msgs, tools, False)
        marks: list[tuple[int, int]] = []
        for i, m in enumerate(msgs):
            if not trained[i]:
                continue
            before = self.render(msgs[:i], tools, False) if i else ""
            start = _lcp(full, before)
            if m["role"] == "assistant":
                head = self.render(msgs[:i], tools, True)
                gen = head[len(before):] if head.startswith(before) else ""
                if full.startswith(head):
                    start = len(head)
                elif gen and full.find(gen, start) >= 0:
                    start = full.find(gen, start) + len(gen)
                else:
                    raise ConfigError(f"the chat template does not render turn {i} ({m['role']}) after its "
                                      "generation prompt; pass --template chatml or a template file")
            alone = self.render(msgs[: i + 1], tools, False)  # the turn rendered as the last one
            if full.startswith(alone):
                end = len(alone)
            else:  # rendered otherwise when later turns follow: reasoning dropped, or a different close
                k = _dropped_prefix_match(alone[start:], full, start) if alone.startswith(full[:start]) else 0
                end = start + k if k else _lcp(full, alone)
            if end <= start:
                raise ConfigError(f"the chat template renders turn {i} ({m['role']}) differently when later turns "
                                  "follow (it rewrites history), so its loss mask cannot be placed; pass "
                                  "--template FILE.jinja with a template that does not, or --train-on without it")
            if m["role"] == "assistant" and parts != frozenset(PARTS):
                marks.extend(self._parts(chat, i, full, start, end, parts))
            else:
                marks.append((start, end))
        out: list[Span] = []
        done = 0
        for a, b in marks:  # regions come in conversation order and never overlap
            if a > done:
                out.append((full[done:a], False))
            if b > max(a, done):
                out.append((full[max(a, done):b], True))
            done = max(done, b)
        if done < len(full):
            out.append((full[done:], False))
        return [s for s in out if s[0]]

    def _parts(self, chat: Chat, i: int, full: str, start: int, end: int, parts: frozenset[str]
               ) -> list[tuple[int, int]]:
        """The trained sub-regions of assistant turn i: [start, end) less the parts not trained."""
        m = chat.messages[i]
        region = {"text": (start, end)}
        tool_at = end
        if "tool_calls" in m:
            without = self.render(self._without(chat.messages, i, "tool_calls"), chat.tools, False)
            tool_at = min(max(_lcp(full, without), start), end)
            region["tool_calls"] = (tool_at, end)
        if m.get("reasoning_content"):
            without = self.render(self._without(chat.messages, i, "reasoning_content"), chat.tools, False)
            a, b = _lcp(full, without), len(full) - _lcs(full, without)
            if b > a:  # the template renders this turn's reasoning (some drop it): it lies in [a, b)
                region["reasoning"] = (max(a, start), min(b, tool_at))
        elif isinstance(m.get("content"), str) and "<think>" in m["content"] and "</think>" in m["content"]:
            a = full.find("<think>", start, tool_at)
            b = full.find("</think>", max(a, start), tool_at)
            if a >= 0 and b >= 0:  # reasoning written inline and rendered verbatim
                region["reasoning"] = (a, b + len("</think>"))
        keep = np.zeros(end - start, dtype=bool)
        keep[:] = "text" in parts
        for part in ("reasoning", "tool_calls"):
            if part in region:
                a, b = region[part]
                keep[max(a, start) - start:max(b, start) - start] = part in parts
        edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
        return [(start + int(a), start + int(b)) for a, b in zip(edges[::2], edges[1::2])]

    @staticmethod
    def _without(msgs: list[dict], i: int, key: str) -> list[dict]:
        m = {k: v for k, v in msgs[i].items() if k != key}
        if key == "tool_calls" and m.get("content") is None:
            m["content"] = ""
        return msgs[:i] + [m] + msgs[i + 1:]


def _dropped_prefix_match(turn: str, full: str, start: int) -> int:
    """How much of `full` from `start` is a suffix of `turn` (the turn as rendered when it is last).

    Templates that drop an earlier turn's reasoning once later turns follow render that turn as a
    suffix of its last-turn form (`<think>R</think>C<|im_end|>` becomes `C<|im_end|>`): the longest
    such suffix that `full` continues with is the turn as the conversation renders it. 0: none.
    """
    first = full[start:start + 1]
    p = turn.find(first) if first else -1
    while p >= 0:  # candidates are the places the first character recurs: few in one turn
        if full.startswith(turn[p:], start):
            return len(turn) - p
        p = turn.find(first, p + 1)
    return 0


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """tojson as transformers defines it for chat templates (no HTML escaping, keys in their order)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def trained_turns(chat: Chat, train_on: TrainOn) -> list[bool]:
    """Per message: its weight when it has one, else whether its role is trained on."""
    alias = {"developer": "system", "ipython": "tool"}
    return [w if w is not None else alias.get(m["role"], m["role"]) in train_on.roles
            for m, w in zip(chat.messages, chat.weights)]


def make_renderer(kind: str, template: str, fields: dict[str, str], chat_template: str | None,
                  special: dict[str, str], chat_format: str = "auto", train_on: str = "assistant",
                  tools_field: str = "tools", weight_field: str = "weight") -> Callable[[dict, str, int | None], list[Span]]:
    """The function turning one parsed record into spans, for a kind and template choice."""
    if kind == "sft":
        tpl = load_sft_template("alpaca" if template == "auto" else template)
        q, r = fields["query_field"], fields["response_field"]
        return lambda obj, path, line: sft_spans(obj, tpl, q, r, path, line)
    if kind == "text":
        if template not in ("auto", "none"):
            raise ConfigError("text inputs take no template; drop --template")
        t = fields["text_field"]
        return lambda obj, path, line: text_spans(obj, t, path, line)
    policy = TrainOn.parse(train_on)
    mf = fields["messages_field"]
    if template not in ("auto", "tokenizer", "chatml") and not Path(template).is_file():
        raise ConfigError(f"chat inputs take --template auto, tokenizer, chatml or a Jinja template file, "
                          f"not '{template}'")
    builtin = template == "chatml" or (template == "auto" and not chat_template)
    if template == "tokenizer" and not chat_template:
        raise ConfigError("the tokenizer has no chat_template in tokenizer_config.json; pass --template chatml "
                          "or --template FILE.jinja")
    jinja = None if builtin else JinjaChat(
        chat_template if template in ("auto", "tokenizer") else Path(template).read_text(encoding="utf-8"), special)

    def chat(obj: dict, path: str, line: int | None) -> list[Span]:
        c = normalize(obj, messages_field=mf, chat_format=chat_format, tools_field=tools_field,
                      weight_field=weight_field, where=path, line=line)
        trained = trained_turns(c, policy)
        if not any(t and (m.get("content") or m.get("tool_calls")) for m, t in zip(c.messages, trained)):
            raise InputError(path, line, mf, f"has no non-empty turn to train on (--train-on {train_on})",
                             "remove the record or pass --skip-bad")
        if jinja is None:
            return chatml_spans(c, trained)
        try:
            return jinja.spans(c, trained, policy.parts)
        except ConfigError:
            raise
        except Exception as e:  # the template's raise_exception, or a render error on this record
            raise InputError(path, line, mf, f"rejected by the chat template: {str(e).splitlines()[0][:200]}",
                             "fix the record or pass --skip-bad") from None

    return chat
