"""Chat formats and which tokens are trained on: OpenAI messages (parts, tool calls, tools, null
content, reasoning), ShareGPT, --train-on roles and parts, the per-message weight, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from packer.core import config as C
from packer.core.errors import ConfigError, InputError
from packer.build.templates import make_renderer
from packer.build.tokenize import tokenize
from packer.core.formats.tokenized import open_tokenized

from conftest import write_jsonl

# A ChatML-style template written for these tests: tools in a system block, tool calls as JSON in
# <tool_call> tags, reasoning in <think> kept only after the last user turn (as reasoning models'
# templates do), tool results in a `tool` turn.
TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\nTools: ' + tools | tojson + '<|im_end|>\\n' }}{%- endif %}"
    "{%- set ns = namespace(last=-1) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if m.reasoning_content is defined and loop.index0 > ns.last %}"
    "{{- '<think>\\n' + m.reasoning_content + '\\n</think>\\n\\n' }}{%- endif %}"
    "{%- if m.content %}{{- m.content }}{%- endif %}"
    "{%- if m.tool_calls is defined %}{%- for c in m.tool_calls %}"
    "{{- '\\n<tool_call>' + c.function | tojson + '</tool_call>' }}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
TOOL_CHAT = {
    "tools": TOOLS,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]},
        {"role": "assistant", "content": None, "reasoning_content": "I should call the tool.",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "assistant", "content": "It is 18C.", "reasoning_content": "The tool said 18C."},
    ],
}


@pytest.fixture
def template_file(tmp_path):
    path = tmp_path / "chat.jinja"
    path.write_text(TEMPLATE)
    return str(path)


def spans(template, record, **kw):
    render = make_renderer("chat", template, {"messages_field": "messages"}, None, {"bos_token": "", "eos_token": ""},
                           **kw)
    return render(record, "d.jsonl", 1)


def trained(sp):
    return "".join(t for t, loss in sp if loss)


def test_tool_calling_chat_renders_whole_and_trains_on_assistant_turns(template_file):
    sp = spans(template_file, TOOL_CHAT)
    text = "".join(t for t, _ in sp)
    # the tools list reached the template, parts were joined, the null content turn rendered its call
    assert text.startswith('<|im_start|>system\nTools: [{"type": "function"')
    assert "<|im_start|>user\nWeather in Paris?<|im_end|>\n" in text
    assert trained(sp) == (
        '<think>\nI should call the tool.\n</think>\n\n\n<tool_call>{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}</tool_call><|im_end|>\n'
        "<think>\nThe tool said 18C.\n</think>\n\nIt is 18C.<|im_end|>\n")
    assert all(not loss for t, loss in sp if "<|im_start|>" in t), "headers are never trained on"


def test_train_on_parts_and_roles(template_file):
    no_reasoning = trained(spans(template_file, TOOL_CHAT, train_on="text,tool_calls"))
    assert "should call" not in no_reasoning and "The tool said" not in no_reasoning
    assert '<tool_call>{"name": "get_weather"' in no_reasoning and "It is 18C.<|im_end|>\n" in no_reasoning
    calls = trained(spans(template_file, TOOL_CHAT, train_on="tool_calls"))
    assert calls == '\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>\n'
    reasoning = trained(spans(template_file, TOOL_CHAT, train_on="reasoning"))
    assert "I should call the tool." in reasoning and "The tool said 18C." in reasoning
    assert "tool_call" not in reasoning and "It is 18C.<" not in reasoning
    with_tool = trained(spans(template_file, TOOL_CHAT, train_on="assistant,tool"))
    assert "18C<|im_end|>" in with_tool and "Weather in" not in with_tool
    with pytest.raises(ConfigError, match="'bogus' is not a role"):
        C.TokenizeConfig(kind="chat", train_on="assistant,bogus")


def test_per_message_weight_overrides_the_role(template_file):
    rec = json.loads(json.dumps(TOOL_CHAT))
    rec["messages"][2]["weight"] = 0  # do not learn the tool call
    rec["messages"][1]["weight"] = 1  # but do learn the user's question
    t = trained(spans(template_file, rec))
    assert "get_weather" not in t.split("Tools:")[-1] and "Weather in Paris?" in t and "It is 18C." in t
    rec["messages"][2]["train"] = rec["messages"][2].pop("weight")
    assert "tool_call" in trained(spans(template_file, rec)), "the default field name is 'weight'"
    assert "tool_call" not in trained(spans(template_file, rec, weight_field="train"))
    rec["messages"][2]["train"] = 0.5
    with pytest.raises(InputError, match=r"messages\[2\]\.train' is 0\.5; a message's weight is 0 or 1"):
        spans(template_file, rec, weight_field="train")


def test_reasoning_dropped_from_earlier_turns_is_trained_as_rendered(template_file):
    """The template keeps only the last turn's reasoning: the tokens are the whole conversation's
    rendering, and the first assistant turn is trained on without its (dropped) reasoning."""
    rec = {"messages": [{"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4", "reasoning_content": "add them"},
                        {"role": "user", "content": "3+3?"},
                        {"role": "assistant", "content": "6", "reasoning_content": "add again"}]}
    sp = spans(template_file, rec)
    assert "add them" not in "".join(t for t, _ in sp)
    assert trained(sp) == "4<|im_end|>\n<think>\nadd again\n</think>\n\n6<|im_end|>\n"


def test_sharegpt_equals_openai(template_file):
    openai = {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18C"}, {"role": "assistant", "content": "It is 18C."}]}
    sharegpt = {"tools": TOOLS, "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "18C"}, {"from": "gpt", "value": "It is 18C."}]}
    assert spans(template_file, sharegpt) == spans(template_file, openai)
    assert spans(template_file, sharegpt, chat_format="sharegpt") == spans(template_file, openai)
    with_system = {**sharegpt, "system": "Be brief."}
    openai_system = {**openai, "messages": [{"role": "system", "content": "Be brief."}, *openai["messages"]]}
    assert spans(template_file, with_system) == spans(template_file, openai_system), "top-level system prompt"
    with pytest.raises(InputError, match="field 'messages' missing"):
        spans(template_file, sharegpt, chat_format="openai")
    role_turns = {"tools": TOOLS, "conversations": openai["messages"]}  # OpenAI turns kept under `conversations`
    assert spans(template_file, role_turns) == spans(template_file, openai)


@pytest.mark.parametrize("record, match", [
    ({"messages": [{"role": "wizard", "content": "x"}]}, r"messages\[0\]\.role' 'wizard' is not a known role"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None,
                                                       "tool_calls": [{"function": {"arguments": "{}"}}]}]},
     r"messages\[1\]\.tool_calls\[0\]\.function\.name' is missing: a tool call needs a name"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     r"messages\[0\]\.content\[0\]' is a 'image_url' part; Packer packs text, and images"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
     r"messages\[1\]\.content' is null, and the message calls no tool"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, r"conversations\[0\]\.from' 'alien' is not a known ShareGPT"),
    ({"messages": [{"role": "user", "content": "q"}]}, "messages' has no non-empty turn to train on"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": {"a": 1}},
     "tools' is dict, expected a list"),
])
def test_bad_chats_name_record_and_field(template_file, record, match):
    with pytest.raises(InputError, match=r"d\.jsonl:1: field '" + match):
        spans(template_file, record)


def test_builtin_chatml_refuses_tool_calls_rather_than_inventing_a_format():
    with pytest.raises(ConfigError, match="built-in chatml template does not render tools"):
        spans("chatml", TOOL_CHAT)


def test_template_error_and_skip_bad_count(tmp_path, byte_tok, template_file):
    records = [TOOL_CHAT, {"messages": [{"role": "wizard", "content": "x"}]},
               {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}]}] * 40
    data = write_jsonl(tmp_path / "d.jsonl", records)
    cfg = C.TokenizeConfig(kind="chat", template=template_file, skip_bad=True, max_bad="50%")
    m = tokenize([str(data)], tmp_path / "tok", cfg, tokenizer=byte_tok)
    assert m["counts"]["skipped"] == 40 and m["counts"]["examples"] == 80
    assert "messages.role: 'wizard' is not a known role" in json.dumps(m["counts"]["skipped_by_reason"])


def test_loss_mask_follows_the_rendered_tokens(tmp_path, byte_tok, template_file):
    """End to end with the byte tokenizer: the tokens decode to the template's rendering, and the
    trained tokens decode to exactly the trained spans."""
    data = write_jsonl(tmp_path / "d.jsonl", [TOOL_CHAT])
    tokenize([str(data)], tmp_path / "tok", C.TokenizeConfig(kind="chat", template=template_file), tokenizer=byte_tok)
    _, tables = open_tokenized(tmp_path / "tok")
    ids = np.asarray(tables[0].column("input_ids")[0].as_py())
    mask = np.asarray(tables[0].column("loss_mask")[0].as_py(), bool)
    tok = byte_tok.build()
    sp = spans(template_file, TOOL_CHAT)
    assert tok.decode(ids.tolist()) == "".join(t for t, _ in sp)
    runs = np.split(ids, np.flatnonzero(np.diff(mask.astype(int))) + 1)
    flags = [bool(m[0]) for m in np.split(mask, np.flatnonzero(np.diff(mask.astype(int))) + 1)]
    assert "".join(tok.decode(r.tolist()) for r, f in zip(runs, flags) if f) == trained(sp)
