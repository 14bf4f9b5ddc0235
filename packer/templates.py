"""Rendering records into text spans, each flagged as trained on (loss) or not.

An sft record {query, response} through the alpaca template becomes::

    [("Below is an instruction ... ### Instruction:\n" + query + "\n\n### Response:\n", False),
     (response, True)]

and the tokenizer stage appends EOS (trained on). Spans are tokenized separately and concatenated,
so the loss mask follows the span boundaries exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from packer.errors import ConfigError, InputError

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


def _messages(obj: dict, field: str, path: str, line: int) -> list[dict[str, str]]:
    if field not in obj:
        keys = ", ".join(sorted(obj)) or "none"
        raise InputError(path, line, field, f"missing (keys: {keys})", "pass --messages-field")
    msgs = obj[field]
    if not isinstance(msgs, list) or not msgs:
        raise InputError(path, line, field, "must be a non-empty list of {role, content} objects")
    for i, m in enumerate(msgs):
        where = f"{field}[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InputError(path, line, where, "needs a string 'role'")
        if not isinstance(m.get("content"), str):
            raise InputError(path, line, f"{where}.content",
                             f"is {type(m.get('content')).__name__}, expected a string")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
        raise InputError(path, line, field, "has no non-empty assistant message: nothing to train on",
                         "remove the record or pass --skip-bad")
    return msgs


def chatml_spans(msgs: list[dict[str, str]]) -> list[Span]:
    """ChatML turns; loss on each assistant's content and its end marker, never on headers."""
    spans: list[Span] = []
    for m in msgs:
        assistant = m["role"] == "assistant"
        spans.append((f"<|im_start|>{m['role']}\n", False))
        spans.append((m["content"] + "<|im_end|>\n", assistant))
    return spans


def jinja_chat_renderer(template: str, special: dict[str, str]) -> Callable[[list[dict]], list[Span]]:
    """Spans from a tokenizer's Jinja chat template, by rendering growing prefixes of the messages.

    Each assistant turn's span is what the template adds after the generation prompt, so role
    headers stay out of the loss. Templates whose renders are not prefixes of each other are rejected.
    """
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)

    def render(msgs: list[dict], gen: bool) -> str:
        return compiled.render(messages=msgs, add_generation_prompt=gen, **special)

    def spans(msgs: list[dict]) -> list[Span]:
        out: list[Span] = []
        done = ""
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                head = render(msgs[:i], True)
                if not head.startswith(done):
                    raise ConfigError("the chat template does not render prefixes consistently; "
                                      "pass --template chatml or a template file")
                out.append((head[len(done):], False))
                done = head
            full = render(msgs[: i + 1], False)
            if not full.startswith(done):
                raise ConfigError("the chat template does not render prefixes consistently; "
                                  "pass --template chatml")
            out.append((full[len(done):], m["role"] == "assistant"))
            done = full
        return [s for s in out if s[0]]

    return spans


def make_renderer(kind: str, template: str, fields: dict[str, str], chat_template: str | None,
                  special: dict[str, str]) -> Callable[[dict, str, int], list[Span]]:
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
    mf = fields["messages_field"]
    if template == "chatml" or (template == "auto" and not chat_template):
        return lambda obj, path, line: chatml_spans(_messages(obj, mf, path, line))
    if template in ("auto", "tokenizer"):
        if not chat_template:
            raise ConfigError("the tokenizer has no chat_template in tokenizer_config.json; "
                              "pass --template chatml")
        render: Any = jinja_chat_renderer(chat_template, special)

        def chat(obj: dict, path: str, line: int) -> list[Span]:
            from jinja2.exceptions import TemplateError

            msgs = _messages(obj, mf, path, line)
            try:
                return render(msgs)
            except TemplateError as e:  # the template's own raise_exception, or a render error
                raise InputError(path, line, mf, f"rejected by the chat template: {e}",
                                 "fix the record or pass --skip-bad") from None

        return chat
    raise ConfigError(f"chat inputs take --template auto, tokenizer or chatml, not '{template}'")
