"""Rendering records into text spans, each flagged as trained on (loss) or not.

An sft record {query, response} through the alpaca template becomes::

    [("Below is an instruction ... ### Instruction:\n" + query + "\n\n### Response:\n", False),
     (response, True)]

and the tokenizer stage appends EOS (trained on). Spans are tokenized separately and concatenated,
so the loss mask follows the span boundaries exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packer.build.chat_template import MAX_RENDER_CHARS, RENDER_BUDGET, ChatTemplate, as_templates, render_error
from packer.build.chats import Chat, TrainOn, normalize
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


def trained_turns(chat: Chat, train_on: TrainOn) -> list[bool]:
    """Per message: its weight when it has one, else whether its role is trained on."""
    alias = {"developer": "system", "ipython": "tool"}
    return [w if w is not None else alias.get(m["role"], m["role"]) in train_on.roles
            for m, w in zip(chat.messages, chat.weights)]


BUILTIN = ("auto", "tokenizer", "chatml")


def uses_jinja(template: str, chat_template: str | dict | None) -> bool:
    """Whether chat records render through a Jinja template (the tokenizer's, a named one or a file) rather
    than the built-in ChatML (chatml, or auto with a tokenizer that has none)."""
    return not (template == "chatml" or (template == "auto" and not chat_template))


def make_renderer(kind: str, template: str, fields: dict[str, str], chat_template: str | dict[str, str] | None,
                  special: dict[str, str], chat_format: str = "auto", train_on: str = "assistant",
                  tools_field: str = "tools", weight_field: str = "weight", max_render_chars: int = MAX_RENDER_CHARS,
                  render_budget: int = RENDER_BUDGET, preference_format: str = "auto", vision=None
                  ) -> Callable[[dict, str, int | None], list[Span]]:
    """The function turning one parsed record into spans, for a kind and template choice.

    Chats (--template): auto is the tokenizer's chat template(s), else the built-in ChatML; tokenizer its
    chat template(s); chatml the built-in; a file a Jinja template; any other word one of the tokenizer's
    named templates (chat_template.jinja is 'default', additional_chat_templates/NAME.jinja is NAME).
    Preference records (packer.build.preference) render text pairs as sft does without a template and chats
    as the chat kind does; their renderer returns the record's rows. vision (a packer.build.images.VisionProcessor,
    chats only): image parts are kept, and the spans come back with the images (packer.build.images.image_spans).
    """
    if vision is not None and kind != "chat":
        raise ConfigError(f"images (--processor) are packed for --kind chat, not --kind {kind}")
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
    jinja = _chat_template(template, chat_template, special, max_render_chars, render_budget)

    def render(c: Chat, trained: list[bool], path: str, line: int | None) -> list[Span]:
        if jinja is None:
            return chatml_spans(c, trained)
        try:
            return jinja.spans(c, trained, policy.parts)
        except ConfigError:
            raise
        except Exception as e:  # the template's raise_exception, a render error, or a limit, on this record
            raise InputError(path, line, mf, render_error(e), "fix the record or pass --skip-bad") from None

    if kind == "preference":
        from packer.build.preference import PreferenceRenderer

        def chat_spans(messages: list, trained: list[bool], tools, path: str, line: int | None) -> list[Span]:
            obj = {mf: messages} if tools is None else {mf: messages, tools_field: tools}
            c = normalize(obj, messages_field=mf, chat_format="openai", tools_field=tools_field,
                          weight_field=weight_field, where=path, line=line)
            if not any(t and (m.get("content") or m.get("tool_calls")) for m, t in zip(c.messages, trained)):
                raise InputError(path, line, mf, "has an empty reply", "remove the record or pass --skip-bad")
            return render(c, trained, path, line)

        return PreferenceRenderer(fields, preference_format, chat_spans)

    def chat(obj: dict, path: str, line: int | None) -> list[Span]:
        c = normalize(obj, messages_field=mf, chat_format=chat_format, tools_field=tools_field,
                      weight_field=weight_field, where=path, line=line, images=vision is not None)
        trained = trained_turns(c, policy)
        if not any(t and (m.get("content") or m.get("tool_calls")) for m, t in zip(c.messages, trained)):
            raise InputError(path, line, mf, f"has no non-empty turn to train on (--train-on {train_on})",
                             "remove the record or pass --skip-bad")
        if vision is None:
            return render(c, trained, path, line)
        from packer.build.images import image_spans

        return image_spans(vision, c, render(c, trained, path, line), path, line, mf)

    return chat


def _chat_template(template: str, chat_template: str | dict[str, str] | None, special: dict[str, str],
                   max_render_chars: int, render_budget: int) -> ChatTemplate | None:
    """The Jinja template chats render through (see make_renderer), or None for the built-in ChatML."""
    templates, name = as_templates(chat_template), None
    if template == "tokenizer" and not templates:
        raise ConfigError("the tokenizer has no chat template (tokenizer_config.json, chat_template.jinja); pass "
                          "--template chatml or --template FILE.jinja")
    if template not in BUILTIN:
        if Path(template).is_file():
            templates = {"default": Path(template).read_text(encoding="utf-8")}
        elif template in templates:
            name = template
        else:
            named = f"; the tokenizer's named templates: {', '.join(sorted(templates))}" if templates else ""
            raise ConfigError(f"chat inputs take --template auto, tokenizer, chatml, a Jinja template file or the name "
                              f"of one of the tokenizer's templates, not '{template}'{named}")
    return ChatTemplate(templates, special, name=name, max_chars=max_render_chars, budget=render_budget) \
        if uses_jinja(template, templates) else None
