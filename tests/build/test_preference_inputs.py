"""--kind preference: every record format, the implicit-prompt split, pair-safe plans, and bad input named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import packer
from packer.build.preference import Fields, implicit_split, parse
from packer.core import config as C
from packer.core.errors import InputError, PackerError
from packer.core.formats.shards import ShardSet
from packer.core.formats.tokenized import open_tokenized
from packer.core.roles import CHOSEN, DESIRABLE, KL, PROMPT, REJECTED, UNDESIRABLE

F = Fields()


def rows(run):
    _, tables = open_tokenized(run / "tokenized")
    out = []
    for t in tables:
        d = t.to_pydict()
        out += list(zip(d["example_index"], d["role"], d["prompt_len"], d["input_ids"], d["loss_mask"]))
    return out


def pack(tmp_path, recs, name="run", **kw):
    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    plan = {k: kw.pop(k) for k in list(kw) if k in ("pack_len", "layout", "overlong", "algorithm")}
    run = tmp_path / name
    packer.pack([str(src)], run, tokenizer="byte", tokenize_config=C.TokenizeConfig(kind="preference", **kw),
                plan_config=C.PlanConfig(**{"pack_len": 256, "algorithm": "bfd", **plan}))
    return run


def text_of(ids):
    return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


def test_every_format_gives_prompt_then_reply_rows(tmp_path):
    recs = [
        {"prompt": "P0", "chosen": " good", "rejected": " bad"},
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
         "chosen": [{"role": "assistant", "content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}]},
        {"input": {"messages": [{"role": "user", "content": "hi"}]},
         "preferred_output": [{"role": "assistant", "content": "hello"}],
         "non_preferred_output": [{"role": "assistant", "content": "go"}]},
        {"chosen": "The sky is blue", "rejected": "The sky is green"},
        {"prompt": "K", "completion": " ok", "label": True},
        {"prompt": "L", "completion": " meh", "label": False},
    ]
    got = rows(pack(tmp_path, recs))
    roles = [(e, r) for e, r, *_ in got]
    assert roles == [(0, CHOSEN), (0, REJECTED), (1, CHOSEN), (1, REJECTED), (2, CHOSEN), (2, REJECTED),
                     (3, CHOSEN), (3, REJECTED), (4, DESIRABLE), (4, KL), (5, UNDESIRABLE), (5, KL)]
    by = {(e, r): (p, ids, m) for e, r, p, ids, m in got}
    p, ids, m = by[(0, CHOSEN)]
    assert text_of(ids[:p]) == "P0" and text_of(ids[p:]) == " good" and ids[-1] >= 256 and not any(m[:p]) and all(m[p:])
    p, ids, _ = by[(3, REJECTED)]
    assert text_of(ids[:p]) == "The sky is" and text_of(ids[p:]).startswith(" green")  # the space goes with the reply
    for e in (1, 2):  # chats: the prompt (and the assistant header) is never trained, the reply is
        p, ids, m = by[(e, CHOSEN)]
        assert "user" in text_of(ids[:p]) and not any(m[:p]) and any(m[p:])
    assert text_of(by[(4, KL)][1]) .startswith("K") and " meh" in text_of(by[(4, KL)][1])  # the next completion
    assert " ok" in text_of(by[(5, KL)][1])  # cyclically


@settings(max_examples=200, deadline=None)
@given(prefix=st.text(min_size=1, max_size=20), a=st.text(min_size=1, max_size=10), b=st.text(min_size=1, max_size=10))
def test_implicit_split_is_trls_rule(prefix, a, b):
    """The prompt is the longest common prefix, less a space just before the split; both replies non-empty."""
    chosen, rejected = prefix + a, prefix + b
    try:
        p, c, r = implicit_split(chosen, rejected, F, "f", 1)
    except InputError:
        return  # equal, no shared prefix, or a reply left empty: refused by name
    assert p + c == chosen and p + r == rejected and c and r and c != r
    i = 0
    while i < min(len(chosen), len(rejected)) and chosen[i] == rejected[i]:
        i += 1
    assert len(p) == (i - 1 if chosen[i - 1] == " " else i)


@pytest.mark.parametrize("record,field,says", [
    ({"prompt": "p", "chosen": " a"}, "rejected", "missing"),
    ({"prompt": "p", "chosen": " a", "rejected": " a"}, "rejected", "equals chosen"),
    ({"chosen": "abc", "rejected": "xyz"}, "chosen", "shares no prompt"),
    ({"prompt": "p", "completion": " c", "label": "yes"}, "label", "expected true or false"),
    ({"prompt": "p", "completion": " c", "label": 1}, "label", "expected true or false"),
    ({"prompt": "p", "chosen": "", "rejected": " b"}, "chosen", "is empty"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "x"}], "rejected": " b"}, "chosen", "no assistant"),
    ({"prompt": "p", "chosen": " a", "rejected": [{"role": "assistant", "content": "b"}]}, "rejected", "is a list"),
    ({"question": "q"}, None, "is not a preference record"),
])
def test_bad_records_are_named(tmp_path, record, field, says):
    with pytest.raises(InputError, match=says) as e:
        pack(tmp_path, [{"prompt": "ok", "chosen": " y", "rejected": " n"}, record])
    assert ":2" in str(e.value) and (field is None or field in str(e.value))  # the file, the line, the field
    run = pack(tmp_path, [{"prompt": "ok", "chosen": " y", "rejected": " n"}, record], name="skip", skip_bad=True,
               max_bad="1")
    assert json.loads((run / "shards" / "manifest.json").read_text())["counts"]["skipped_records"] == 1


def test_overlong_pairs_follow_the_policy_as_a_unit(tmp_path):
    long = {"prompt": "Q" * 40, "chosen": " " + "a" * 100, "rejected": " " + "b" * 30}
    with pytest.raises(InputError, match=r"pair has \d+ tokens in the pairs layout, more than --pack-len 128"):
        pack(tmp_path, [long], name="err", pack_len=128, overlong="error")
    run = pack(tmp_path, [long], name="trunc", pack_len=160)  # replies get 160 - 2 x 40 = 80 tokens: 48 + 32
    v = ShardSet(run / "shards").arrays(0)
    assert v["role"].tolist() == [CHOSEN, REJECTED] and int(v["seg_lens"].sum()) == 160
    assert v["seg_lens"].tolist() == [40 + 48, 40 + 32]  # the shorter reply (31 + EOS) whole, the longer one cut
    tight = ShardSet(pack(tmp_path, [long], name="tight", pack_len=128) / "shards").arrays(0)
    assert tight["seg_lens"].tolist() == [40 + 24, 40 + 24]  # 48 tokens left: an even share each
    drop = pack(tmp_path, [long, {"prompt": "p", "chosen": " y", "rejected": " n"}], name="drop", pack_len=128,
                overlong="drop")
    assert json.loads((drop / "shards" / "manifest.json").read_text())["counts"]["preference"]["pairs"] == 1
    with pytest.raises(PackerError, match="split would cut a preference pair"):
        pack(tmp_path, [long], name="split", pack_len=128, overlong="split")


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 60), st.integers(1, 60)), min_size=1, max_size=25),
       layout=st.sampled_from(["pairs", "shared-prompt"]), pack_len=st.integers(64, 200))
def test_pairs_are_never_split_and_every_row_is_packed_once(tmp_path_factory, lengths, layout, pack_len):
    tmp = tmp_path_factory.mktemp("units")
    recs = [{"prompt": "p" * a, "chosen": " " + "c" * b, "rejected": " " + "r" * (c + 1)} for a, b, c in lengths]
    try:
        run = pack(tmp, recs, layout=layout, pack_len=pack_len, overlong="drop")
    except InputError:
        return  # every pair too long for the pack: nothing to pack, said so
    ss = ShardSet(run / "shards")
    seen = []
    for i in range(len(ss)):
        v = ss.arrays(i)
        ex, role = v["example_index"].tolist(), v["role"].tolist()
        k = 3 if layout == "shared-prompt" else 2
        assert len(ex) % k == 0
        for j in range(0, len(ex), k):  # a unit: adjacent, one record, in order
            assert len(set(ex[j:j + k])) == 1
            assert role[j:j + k] == ([PROMPT, CHOSEN, REJECTED] if k == 3 else [CHOSEN, REJECTED])
            seen.append(ex[j])
    assert len(seen) == len(set(seen))
    kept = json.loads((run / "shards" / "manifest.json").read_text())["counts"]
    assert len(seen) == kept["preference"]["pairs"] == len(recs) - kept["dropped_examples"]


def test_parse_openai_with_tools_and_explicit_format_flag():
    rec = {"input": {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
           "preferred_output": [{"role": "assistant", "content": "a"}],
           "non_preferred_output": [{"role": "assistant", "content": "b"}]}
    p = parse(rec, F, "auto", "f", 1)
    assert p.tools == [{"type": "function"}] and [r for r, _ in p.replies] == [CHOSEN, REJECTED]
    with pytest.raises(InputError, match="missing"):
        parse(rec, F, "explicit", "f", 1)
    assert np.isin([r for r, _ in parse({"prompt": "p", "completion": "c", "label": False}, F, "auto", "f", 1).replies],
                   [UNDESIRABLE]).all()
