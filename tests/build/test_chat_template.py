"""Chat templates rendered as transformers renders them (tokenizer folders with chat_template.jinja and
named templates included), within limits that stop runaway templates, and masked in linear work."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import packer.build.chat_template as CT
from packer.build.chat_template import ChatTemplate
from packer.build.chats import PARTS, Chat
from packer.build.load_tokenizer import byte_tokenizer, load_tokenizer
from packer.build.templates import make_renderer
from packer.core.errors import InputError

from conftest import SHARED

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# A system prompt taken out of the loop, a closing that differs for the last turn, bos: local all the same.
LLAMA_LIKE = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}[SYS]{{ messages[0]['content'] }}[/SYS]"
              "{% set rest = messages[1:] %}{% else %}{% set rest = messages %}{% endif %}"
              "{% for m in rest %}<{{ m['role'] }}>{{ m['content'] | trim }}</{{ m['role'] }}>"
              "{% if not loop.last %}\n{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
# Not local: every header carries the turn's index, so a role's header differs from turn to turn.
NUMBERED = ("{% for m in messages %}#{{ loop.index0 }} {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}#{{ messages | length }} assistant: {% endif %}")
SPECIAL = {"eos_token": "</s>", "bos_token": "<s>"}
FIELDS = {"query_field": "query", "response_field": "response", "messages_field": "messages", "text_field": "text",
          "tools_field": "tools"}


def folder(tmp_path: Path, config: dict, files: dict[str, str]) -> Path:
    """A tokenizer folder (the byte tokenizer's tokenizer.json) with this config and these template files."""
    d = tmp_path / "tok"
    d.mkdir(exist_ok=True)
    byte_tokenizer().save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", **config}))
    for name, text in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    return d


def conversation(turns: int, seed: int = 0, system: bool = True) -> Chat:
    rng = random.Random(seed)
    msgs = [{"role": "system", "content": "Be brief."}] if system else []
    for i in range(turns):
        words = " ".join(rng.choice(["two", "apples", "x=3", "ü", "中", "\t", "{", "}"]) for _ in range(rng.randint(1, 9)))
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"t{i} {words}"})
    return Chat(msgs, None, [None] * len(msgs))


def test_a_folders_chat_template_jinja_is_the_template(tmp_path):
    """Before: a folder whose template lives in chat_template.jinja (transformers >= 4.43) was rendered with
    the built-in ChatML: every record differed from what transformers gives."""
    from transformers import PreTrainedTokenizerFast

    d = folder(tmp_path, {}, {"chat_template.jinja": LLAMA_LIKE})
    info = load_tokenizer(str(d))
    assert info.chat_template == LLAMA_LIKE
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    spans = make_renderer("chat", "auto", FIELDS, info.chat_template, info.special)(record, "d.jsonl", 1)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), eos_token="<|endoftext|>",
                                 chat_template=LLAMA_LIKE)
    assert "".join(s for s, _ in spans) == hf.apply_chat_template(record["messages"], tokenize=False)
    assert [s for s, trained in spans if trained] == ["Hello</assistant>"]


def test_named_templates_follow_transformers_choice(tmp_path):
    """chat_template.jinja is 'default', additional_chat_templates/NAME.jinja is NAME; a record with tools
    renders with tool_use, one without with default, and --template NAME picks one."""
    tool_use = "TOOLS {{ tools | length }} " + CHATML
    d = folder(tmp_path, {"chat_template": "IGNORED: the files win"},
               {"chat_template.jinja": CHATML, "additional_chat_templates/tool_use.jinja": tool_use,
                "additional_chat_templates/terse.jinja": "{% for m in messages %}{{ m['content'] }}|{% endfor %}"})
    info = load_tokenizer(str(d))
    assert info.chat_template == {"default": CHATML, "tool_use": tool_use, "terse": d.joinpath(
        "additional_chat_templates/terse.jinja").read_text()}
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    render = make_renderer("chat", "auto", FIELDS, info.chat_template, info.special)
    text = lambda r: "".join(s for s, _ in r)  # noqa: E731
    assert text(render({"messages": msgs}, "d", 1)).startswith("<|im_start|>user")
    assert text(render({"messages": msgs, "tools": []}, "d", 1)).startswith("TOOLS 0 <|im_start|>")
    terse = make_renderer("chat", "terse", FIELDS, info.chat_template, info.special)
    assert text(terse({"messages": msgs}, "d", 1)) == "Hi|Yo|"
    with pytest.raises(Exception, match="not 'nope'; the tokenizer's named templates: default, terse, tool_use"):
        make_renderer("chat", "nope", FIELDS, info.chat_template, info.special)


@pytest.mark.parametrize("template,says", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "over its work budget"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "over 1,000,000 characters"),
    ("{{ 'x' * 10000000000 }}", "repeats a value 10,000,000,000 times"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
     "builds a value over 1,000,000 characters"),
    ("{{ raise_exception('') }}", "rejected by the chat template: TemplateError with no message"),
    ("{{ raise_exception('no system role, please') }}", "rejected by the chat template: no system role, please"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed too deep"),
    ("{{ 2 ** 100000 }}", "raises a number to the power 100000"),
])
def test_runaway_templates_stop_with_an_error_naming_the_record(template, says):
    """Before: nested range(100000) loops grew for 42 s to a MemoryError, then an IndexError in the error
    path; raise_exception('') crashed the same way even with --skip-bad. Now each is an InputError for the
    record (so --skip-bad counts it), within a deterministic budget and a character limit."""
    render = make_renderer("chat", "tokenizer", FIELDS, template, SPECIAL, max_render_chars=1_000_000,
                           render_budget=2_000_000)
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    with pytest.raises(InputError, match=f"d.jsonl:7: field 'messages' .*{says}"):
        render(record, "d.jsonl", 7)


def test_runaway_records_are_counted_with_skip_bad(tmp_path):
    from packer.build.tokenize import tokenize
    from packer.core import config as C

    d = folder(tmp_path, {}, {"chat_template.jinja": "{% if messages | length > 2 %}{{ raise_exception('') }}{% endif %}"
                                                       + CHATML})
    records = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]
                + ([{"role": "user", "content": "more"}, {"role": "assistant", "content": "b"}] if i % 10 == 0 else [])}
               for i in range(50)]
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    m = tokenize([str(data)], tmp_path / "t", C.TokenizeConfig(kind="chat", skip_bad=True, max_bad="20%"),
                 tokenizer=load_tokenizer(str(d)))
    assert m["counts"]["skipped"] == 5 and m["counts"]["examples"] == 45
    assert list(m["counts"]["skipped_by_reason"]) == ["messages: rejected by the chat template: TemplateError with no message"]


def _masks(template: str, chat: Chat, linear: bool, monkeypatch) -> list:
    with monkeypatch.context() as m:
        m.setattr(CT, "EXACT_TURNS", 16 if linear else 10**9)
        trained = [x["role"] == "assistant" for x in chat.messages]
        return ChatTemplate({"default": template}, SPECIAL).spans(chat, trained, frozenset(PARTS))


@settings(max_examples=30, deadline=None)
@given(turns=st.integers(17, 60), seed=st.integers(0, 10**6), system=st.booleans(),
       template=st.sampled_from([CHATML, LLAMA_LIKE, NUMBERED]))
def test_linear_masks_equal_every_prefix_masks(turns, seed, system, template):
    """The O(turns) mask of a long conversation is exactly the mask of rendering every prefix, for local
    templates and for one that is not (it falls back). pytest's monkeypatch is function-scoped, so the
    switch is set by hand here."""
    chat = conversation(turns, seed, system)
    trained = [x["role"] == "assistant" for x in chat.messages]
    saved = CT.EXACT_TURNS
    try:
        CT.EXACT_TURNS = 10**9
        prefix = ChatTemplate({"default": template}, SPECIAL).spans(chat, trained, frozenset(PARTS))
        CT.EXACT_TURNS = 16
        linear = ChatTemplate({"default": template}, SPECIAL).spans(chat, trained, frozenset(PARTS))
    finally:
        CT.EXACT_TURNS = saved
    assert linear == prefix


@pytest.mark.parametrize("template,linear", [(CHATML, True), (LLAMA_LIKE, True), (NUMBERED, False)])
def test_masking_work_is_linear_in_turns(template, linear):
    """Before: a 10,000-turn chat took 203 s for one record (every prefix rendered: quadratic). Counted in
    renderings, not seconds: a local template's long conversation takes a fixed handful, independent of the
    number of turns; one that is not local falls back to every prefix and stops at the work budget."""
    counts = []
    for turns in (200, 2000):
        tpl = ChatTemplate({"default": template}, SPECIAL, budget=5_000_000)
        calls = [0]
        real = tpl.render

        def counted(*a, _real=real, **k):
            calls[0] += 1
            return _real(*a, **k)

        tpl.render = counted
        chat = conversation(turns)
        try:
            tpl.spans(chat, [x["role"] == "assistant" for x in chat.messages], frozenset(PARTS))
        except CT.RenderLimit:
            calls[0] = -1
        counts.append(calls[0])
    if linear:
        assert counts[0] == counts[1] < 40, counts
    else:
        assert counts[1] == -1, "the fallback stops at the budget instead of running for minutes"


@pytest.mark.realdata
def test_every_shared_template_renders_as_transformers(tmp_path):
    """Every chat template in ../shared/data, in a tokenizer folder as chat_template.jinja beside the Llama 3
    tokenizer, on real chats (GSM8K questions and answers, several turns; a tool call; reasoning): Packer's
    rendering equals transformers' apply_chat_template, and where transformers refuses, so does Packer."""
    from transformers import AutoTokenizer

    gsm, templates = SHARED / "gsm8k", sorted((SHARED / "chat_templates").glob("*.jinja"))
    if not (SHARED / "llama3").is_dir() or not templates or not list(gsm.glob("*.jsonl")):
        pytest.skip("../shared/data is absent")
    rows = [json.loads(x) for x in next(gsm.glob("*.jsonl")).read_text().splitlines()[:12]]
    tools = [{"type": "function", "function": {"name": "calc", "description": "Evaluate arithmetic",
                                               "parameters": {"type": "object", "properties": {"expr": {"type": "string"}},
                                                              "required": ["expr"]}}}]
    chats = [([{"role": "system", "content": "Answer step by step."}]
              + [m for r in rows[k:k + 3] for m in ({"role": "user", "content": r["question"]},
                                                     {"role": "assistant", "content": r["answer"]})], None)
             for k in (0, 3, 6)]
    chats.append((chats[0][0][1:], None))
    chats.append(([{"role": "user", "content": rows[9]["question"]},
                   {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
                       "name": "calc", "arguments": {"expr": "48/2"}}}]},
                   {"role": "tool", "content": "24"}, {"role": "assistant", "content": rows[9]["answer"]}], tools))
    chats.append(([{"role": "user", "content": rows[10]["question"]},
                   {"role": "assistant", "content": rows[10]["answer"], "reasoning_content": "Work it out."}], None))
    compared = 0
    for tpl in templates:
        d = tmp_path / tpl.stem
        d.mkdir()
        (d / "tokenizer.json").symlink_to(SHARED / "llama3" / "tokenizer.json")
        config = json.loads((SHARED / "llama3" / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (d / "tokenizer_config.json").write_text(json.dumps(config))
        (d / "chat_template.jinja").write_text(tpl.read_text())
        info, hf = load_tokenizer(str(d)), AutoTokenizer.from_pretrained(str(d))
        ours = ChatTemplate(CT.as_templates(info.chat_template), info.special)
        for msgs, tl in chats:
            for gen in (False, True):
                try:
                    want = hf.apply_chat_template(msgs, tools=tl, tokenize=False, add_generation_prompt=gen)
                except Exception as e:
                    with pytest.raises(type(e)):
                        ours.render(msgs, tl, gen)
                    continue
                assert ours.render(msgs, tl, gen) == want, (tpl.name, gen, msgs[0]["content"][:40])
                compared += 1
    assert compared >= 30


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.text(max_size=12), st.text(max_size=12))
def test_common_prefix_and_suffix_lengths(head, x, y):
    """_lcp and _lcs (the span boundaries come from them) equal a character-by-character count."""
    from packer.build.chat_template import _lcp, _lcs

    a, b = head + x, head + y
    for s, t in ((a, b), (b, a), (x + head, y + head), (a, a), ("", b)):
        assert _lcp(s, t) == next((i for i, (c, d) in enumerate(zip(s, t)) if c != d), min(len(s), len(t)))
        assert _lcs(s, t) == _lcp(s[::-1], t[::-1])
        assert _lcs(s, t) == next((i for i, (c, d) in enumerate(zip(s[::-1], t[::-1])) if c != d), min(len(s), len(t)))
