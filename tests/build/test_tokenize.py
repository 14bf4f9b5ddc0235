"""Stage 1: input kinds, compressed files, per-file fields, and every bad input's error."""

from __future__ import annotations

import dataclasses
import gzip
import json

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from packer.core import config as C
from packer.core.config import InputSpec
from packer.core.errors import ConfigError, InputError
from packer.build.tokenize import tokenize
from packer.core.formats.tokenized import open_tokenized

from conftest import write_jsonl


def rows(folder):
    _, tables = open_tokenized(folder)
    out = []
    for t in tables:
        out.extend(t.to_pylist())
    return out


def run(tmp_path, tok, records, cfg=C.TokenizeConfig(), raw=None, name="d.jsonl"):
    data = write_jsonl(tmp_path / name, records, raw)
    return tokenize([InputSpec(str(data))], tmp_path / "tok", cfg, tokenizer=tok)


def test_sft_loss_only_on_response_and_eos(tmp_path, byte_tok):
    run(tmp_path, byte_tok, [{"query": "2+2?", "response": "4"}], C.TokenizeConfig(template="none"))
    (r,) = rows(tmp_path / "tok")
    assert r["input_ids"] == list(b"2+2?4") + [byte_tok.eos_id]
    assert r["loss_mask"] == [0, 0, 0, 0, 1, 1]
    assert r["prompt_len"] == 4 and r["length"] == 6 and r["line"] == 1 and r["example_index"] == 0


def test_bos_is_prepended_without_loss(tmp_path, byte_tok):
    import dataclasses

    info = dataclasses.replace(byte_tok, bos_id=byte_tok.eos_id, add_bos=True)
    run(tmp_path, info, [{"query": "q", "response": "r"}], C.TokenizeConfig(template="none"))
    (r,) = rows(tmp_path / "tok")
    assert r["input_ids"] == [info.eos_id, ord("q"), ord("r"), info.eos_id]
    assert r["loss_mask"] == [0, 0, 1, 1]


def test_template_file_with_suffix(tmp_path, byte_tok):
    tpl = tmp_path / "t.txt"
    tpl.write_text("Q: {query}\nA: {response}<end>")
    run(tmp_path, byte_tok, [{"query": "x", "response": "y"}], C.TokenizeConfig(template=str(tpl)))
    (r,) = rows(tmp_path / "tok")
    assert bytes(r["input_ids"][:-1]) == b"Q: x\nA: y<end>"
    assert r["loss_mask"] == [0] * 8 + [1] * 6 + [1]


def test_gz_and_zst_inputs_and_per_file_fields(tmp_path, byte_tok):
    a = tmp_path / "a.jsonl.gz"
    with gzip.open(a, "wb") as f:
        f.write(json.dumps({"question": "q1", "answer": "r1"}).encode() + b"\n\n")
        f.write(json.dumps({"question": "q2", "answer": "r2"}).encode() + b"\n")
    b = tmp_path / "b.jsonl.zst"
    b.write_bytes(zstandard.ZstdCompressor().compress(
        json.dumps({"prompt": "q3", "output": "r3"}).encode() + b"\n"))
    specs = [InputSpec.parse(f"{a}#query=question,response=answer"),
             InputSpec.parse(f"{b}#query=prompt,response=output")]
    m = tokenize(specs, tmp_path / "tok", C.TokenizeConfig(template="none"), tokenizer=byte_tok)
    rs = rows(tmp_path / "tok")
    assert [bytes(r["input_ids"][:-1]) for r in rs] == [b"q1r1", b"q2r2", b"q3r3"]
    assert [(r["file_index"], r["line"], r["example_index"]) for r in rs] == [(0, 1, 0), (0, 3, 1), (1, 1, 2)]
    assert [i["examples"] for i in m["inputs"]] == [2, 1], "both files are packed, not only the last"


def test_chat_loss_only_on_assistant_turns(tmp_path, byte_tok):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A1"}, {"role": "user", "content": "V"},
            {"role": "assistant", "content": "A2"}]
    run(tmp_path, byte_tok, [{"messages": msgs}], C.TokenizeConfig(kind="chat"))
    (r,) = rows(tmp_path / "tok")
    ids, mask = np.array(r["input_ids"]), np.array(r["loss_mask"], bool)
    trained = bytes(ids[mask][:-1].tolist())  # last is EOS
    assert trained == b"A1<|im_end|>\nA2<|im_end|>\n"
    assert ids[-1] == byte_tok.eos_id and mask[-1]


def test_eos_after_a_chat_ending_on_a_user_turn_is_not_trained(tmp_path, byte_tok):
    """EOS is a target only when the example ends in trained-on text: after a final user turn it would
    teach the model to stop where the user stopped."""
    ends_user = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"},
                 {"role": "user", "content": "V"}]
    ends_assistant = ends_user[:2]
    run(tmp_path, byte_tok, [{"messages": ends_user}, {"messages": ends_assistant}], C.TokenizeConfig(kind="chat"))
    user_row, assistant_row = rows(tmp_path / "tok")
    for r in (user_row, assistant_row):
        assert r["input_ids"][-1] == byte_tok.eos_id
    assert user_row["loss_mask"][-1] == 0, "EOS after the user's turn must not be a target"
    assert assistant_row["loss_mask"][-1] == 1
    assert sum(user_row["loss_mask"]) == sum(assistant_row["loss_mask"]) - 1, "only the assistant turn is trained"


def test_chat_with_tokenizer_jinja_template(tmp_path, byte_tok):
    tpl = ("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% if m.role == 'assistant' %}"
           "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    info = dataclasses.replace(byte_tok, chat_template=tpl)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    run(tmp_path, info, [{"messages": msgs}], C.TokenizeConfig(kind="chat"))
    (r,) = rows(tmp_path / "tok")
    ids, mask = np.array(r["input_ids"]), np.array(r["loss_mask"], bool)
    assert info.build().decode(ids.tolist(), skip_special_tokens=False) == "[user]hi[assistant]yo<|endoftext|>"
    assert info.build().decode(ids[mask].tolist(), skip_special_tokens=False) == "yo<|endoftext|>"


def test_text_kind_trains_on_everything(tmp_path, byte_tok):
    run(tmp_path, byte_tok, [{"text": "doc"}], C.TokenizeConfig(kind="text"))
    (r,) = rows(tmp_path / "tok")
    assert r["input_ids"] == list(b"doc") + [byte_tok.eos_id] and all(r["loss_mask"])


BAD = [
    ({0: b'{"query": "q", "response": \n'}, None, r"d\.jsonl:1: malformed JSON: .* at column \d+"),
    ({}, {"query": "q", "output": "r"}, r"d\.jsonl:1: field 'response' missing \(keys: output, query\); "
                                        r"pass --response-field"),
    ({}, {"query": "q", "response": 7}, r"d\.jsonl:1: field 'response' is int, expected a string"),
    ({}, {"query": "q", "response": "  "}, r"d\.jsonl:1: field 'response' is empty"),
    ({0: b'{"query": "\xff", "response": "r"}\n'}, None, r"d\.jsonl:1: is not valid UTF-8"),
    ({0: b'[1, 2]\n'}, None, r"d\.jsonl:1: expected a JSON object, got list"),
]


@pytest.mark.parametrize("raw,record,pattern", BAD)
def test_bad_input_stops_with_file_line_field(tmp_path, byte_tok, raw, record, pattern):
    good = {"query": "q", "response": "r"}
    records = [record or good, good]
    with pytest.raises(InputError, match=pattern):
        run(tmp_path, byte_tok, records, raw=raw)
    assert not (tmp_path / "tok").exists(), "a failed stage leaves no output folder"


def test_skip_bad_skips_and_counts_by_reason(tmp_path, byte_tok):
    good = {"query": "q", "response": "r"}
    records = [good, None, {"query": "q"}, {"query": "q", "response": ""}, good]
    raw = {1: b"not json\n"}
    with pytest.raises(InputError, match=r"3 of 5 records are bad, over --max-bad 1% \(first: .*d\.jsonl:2"):
        run(tmp_path, byte_tok, records, C.TokenizeConfig(skip_bad=True), raw=raw)
    assert not (tmp_path / "tok").exists() and not list(tmp_path.glob(".tok*")), "nothing committed or left"
    m = run(tmp_path, byte_tok, records, C.TokenizeConfig(skip_bad=True, max_bad="3"), raw=raw)
    assert m["counts"]["skipped"] == 3 and m["counts"]["examples"] == 2
    assert m["counts"]["skipped_by_reason"] == {"malformed JSON": 1, "response: is empty": 1,
                                                "response: missing": 1}
    assert [r["example_index"] for r in rows(tmp_path / "tok")] == [0, 4], "record numbers count skipped ones"
    assert "d.jsonl:2" in m["first_skipped"][0]


def test_bad_chat_records(tmp_path, byte_tok):
    cfg = C.TokenizeConfig(kind="chat")
    with pytest.raises(InputError, match=r"field 'messages\[0\]\.content' is int"):
        run(tmp_path, byte_tok, [{"messages": [{"role": "user", "content": 3}]}], cfg)
    with pytest.raises(InputError, match="has no non-empty turn to train on"):
        run(tmp_path, byte_tok, [{"messages": [{"role": "user", "content": "hi"}]}], cfg)


def test_missing_file_and_bad_options(tmp_path, byte_tok):
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        tokenize([InputSpec(str(tmp_path / "nope.jsonl"))], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    with pytest.raises(ConfigError, match="use PATH#query=F,response=F"):
        InputSpec.parse("a.jsonl#quest=x")
    with pytest.raises(ConfigError, match="neither a built-in"):
        run(tmp_path, byte_tok, [{"query": "q", "response": "r"}], C.TokenizeConfig(template="nosuch"))


def test_prefix_space_tokenizers_encode_whole_examples(tmp_path):
    """A SentencePiece-style tokenizer adds '▁' to every encode: spans must not be encoded apart."""
    import json as _json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from packer.build.load_tokenizer import load_tokenizer

    chars = sorted(set("▁abcdefghijklmnopqrstuvwxyzQRA:?0123456789.,+= \n#"))
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars + ["</s>", "<unk>"])}, merges=[],
                               unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    (tmp_path / "tk").mkdir()
    tok.save(str(tmp_path / "tk" / "tokenizer.json"))
    (tmp_path / "tk" / "tokenizer_config.json").write_text(_json.dumps({"eos_token": "</s>"}))
    info = load_tokenizer(str(tmp_path / "tk"))
    assert info.spans_concatenate is False
    run(tmp_path, info, [{"query": "Q:2+2?", "response": "4"}], C.TokenizeConfig(template="none"))
    (r,) = rows(tmp_path / "tok")
    assert info.build().decode(r["input_ids"][:-1]) == "Q:2+2?4"
    assert [bool(x) for x in r["loss_mask"]] == [False] * 7 + [True, True]  # '▁' 'Q' ':' '2' '+' '2' '?' | '4' EOS


def test_byte_level_tokenizers_encode_spans(byte_tok):
    assert byte_tok.spans_concatenate is True


def _compressed(tmp_path, kind: str, cut: float | None) -> Path:
    import gzip

    import zstandard

    data = b"".join(json.dumps({"query": f"q{i}", "response": "r" * 40}).encode() + b"\n" for i in range(3000))
    blob = gzip.compress(data) if kind == "gz" else zstandard.ZstdCompressor().compress(data)
    if cut is not None:
        blob = blob[:int(len(blob) * cut)]
    path = tmp_path / f"d.jsonl.{kind}"
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("kind", ["gz", "zst"])
@pytest.mark.parametrize("skip_bad", [False, True])
def test_truncated_compression_is_an_error_of_the_file_never_a_short_run(tmp_path, byte_tok, kind, skip_bad):
    cfg = C.TokenizeConfig(skip_bad=skip_bad, max_bad="100%")
    ok = tokenize([InputSpec(str(_compressed(tmp_path, kind, None)))], tmp_path / "ok", cfg, tokenizer=byte_tok)
    assert ok["counts"]["examples"] == 3000
    path = _compressed(tmp_path, kind, 0.5)
    with pytest.raises(InputError, match=rf"d\.jsonl\.{kind}:\d+: cannot be decompressed .*truncated or damaged"):
        tokenize([InputSpec(str(path))], tmp_path / "tok", cfg, tokenizer=byte_tok)
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_a_file_that_is_not_compressed_as_named_is_an_error(tmp_path, byte_tok, kind):
    path = tmp_path / f"d.jsonl.{kind}"
    path.write_bytes(b'{"query": "q", "response": "r"}\n' * 10)
    with pytest.raises(InputError, match=rf"d\.jsonl\.{kind}:1: cannot be decompressed"):
        tokenize([InputSpec(str(path))], tmp_path / "tok", C.TokenizeConfig(skip_bad=True), tokenizer=byte_tok)


def test_empty_input_is_an_error_before_anything_is_committed(tmp_path, byte_tok):
    (tmp_path / "e.jsonl").write_bytes(b"\n\n")
    with pytest.raises(InputError, match=r"e\.jsonl: holds no records"):
        tokenize([InputSpec(str(tmp_path / "e.jsonl"))], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    assert list(tmp_path.iterdir()) == [tmp_path / "e.jsonl"], "no stage folder, no temp folder"


@pytest.mark.parametrize("raw,match", [
    (b'{"query": "\\ud800 lone", "response": "r"}\n', "lone UTF-16 surrogate"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply"),
    (b'{"query": "\xff\xfe", "response": "r"}\n', "not valid UTF-8"),
])
def test_hostile_lines_are_one_line_errors_or_skipped(tmp_path, byte_tok, raw, match):
    good = {"query": "q", "response": "r"}
    with pytest.raises(InputError, match=r"d\.jsonl:2: .*" + match):
        run(tmp_path, byte_tok, [good, None, good], C.TokenizeConfig(), raw={1: raw})
    m = run(tmp_path, byte_tok, [good, None, good], C.TokenizeConfig(skip_bad=True, max_bad="1"), raw={1: raw})
    assert m["counts"]["skipped"] == 1 and m["counts"]["examples"] == 2


def test_max_bad_value_is_checked_up_front():
    with pytest.raises(ConfigError, match="max_bad 'lots'"):
        C.TokenizeConfig(max_bad="lots")
    assert C.bad_limit("1%", 1000) == 10 and C.bad_limit("7", 10) == 7 and C.bad_limit("0%", 5) == 0


def test_chat_template_raise_exception_is_a_one_line_error(tmp_path, byte_tok):
    tpl = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
           "{% endif %}{{ m['content'] }}{% endfor %}")
    tok = dataclasses.replace(byte_tok, chat_template=tpl)
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                         {"role": "assistant", "content": "a"}]}
    ok = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(InputError, match=r"d\.jsonl:2: field 'messages' rejected by the chat template: System role"):
        run(tmp_path, tok, [ok, chat], C.TokenizeConfig(kind="chat"))
    m = run(tmp_path, tok, [ok, chat, ok], C.TokenizeConfig(kind="chat", skip_bad=True, max_bad="1"))
    assert m["counts"]["skipped"] == 1


_ODD_LINES = [
    b'{"query": "q", "response": "r", "n": NaN}',                   # msgspec refuses NaN, json reads it
    b'{"query": "\\ud83d\\ude00 pair", "response": "ok"}',           # an escaped surrogate pair
    b'{"query": "x", "response": "y", "big": 123456789012345678901234567890}',
    b'{"query": "dup", "query": "last wins", "response": "r"}',
    b'  {"query": "lead", "response": "space"}\r',                   # whitespace and CRLF
    b'{"query": "  ", "response": "r"}',                             # empty after strip: an error
    b'{"query": 5, "response": "r"}',                                # not a string: an error
    b'{"response": "r"}',                                            # missing: an error
    b'[1, 2]',                                                       # not an object
    b'{"query": "\\ud800", "response": "r"}',                         # a lone surrogate: an error
    b'{"query": "caf\xc3\xa9 \xe4\xb8\xad", "response": "\xf0\x9f\x99\x82"}',
    b'',                                                             # a blank line
]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_ODD_LINES),
                          st.builds(lambda q, r: json.dumps({"query": q, "response": r}).encode(),
                                    st.text(min_size=1, max_size=12), st.text(min_size=1, max_size=12))),
                min_size=1, max_size=40),
       st.sampled_from(["sft", "text"]), st.integers(1, 9))
def test_the_whole_batch_path_equals_the_per_record_path(tmp_path_factory, byte_tok, lines, kind, chunk_records):
    """JSON Lines of sft and text records are decoded and rendered a batch at a time; any record that is not
    plainly good sends its batch to the per-record path. Both give the same tokenized bytes and the same
    skips, whatever the lines hold."""
    _same_both_ways(tmp_path_factory.mktemp("fastpath"), byte_tok, lines, kind, chunk_records)


@pytest.mark.parametrize("odd", _ODD_LINES)
@pytest.mark.parametrize("kind", ["sft", "text"])
def test_each_odd_line_between_good_ones_gives_the_per_record_result(tmp_path, byte_tok, odd, kind):
    good = b'{"query": "good", "response": "one"}'
    _same_both_ways(tmp_path, byte_tok, [good, odd, good, good], kind, 4)


def _same_both_ways(tmp, byte_tok, lines, kind, chunk_records):
    import packer.build.tokenize as T

    if kind == "text":
        lines = [x.replace(b'"query"', b'"text"') for x in lines]
    data = tmp / "d.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    cfg = C.TokenizeConfig(kind=kind, skip_bad=True, max_bad="100%", chunk_records=chunk_records)
    outs = []
    for fast in (True, False):
        saved = T._fast_fields
        if not fast:
            T._fast_fields = lambda job, source: None
        try:
            m = tokenize([str(data)], tmp / f"t{fast}", cfg, tokenizer=byte_tok)
        except InputError as e:  # nothing usable at all: both paths must say the same
            outs.append(str(e))
            continue
        finally:
            T._fast_fields = saved
        outs.append((m["counts"], m["files"]))
    assert outs[0] == outs[1]
