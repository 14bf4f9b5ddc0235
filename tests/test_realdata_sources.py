"""Real data through the new sources and chat formats (skipped when ../shared/data is absent):
GSM8K as Parquet and as ShareGPT gives the JSON Lines shards; a tool-calling chat through published
templates; Llama 3.1's template gets one BOS, not two."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from packer.core import config as C
from packer.pipeline import pack
from packer.build.tokenize import tokenize
from packer.core.formats.tokenized import open_tokenized
from packer.build.load_tokenizer import load_tokenizer

from conftest import SHARED

GSM8K = SHARED / "gsm8k" / "train.jsonl"
GPT2, LLAMA = SHARED / "gpt2", SHARED / "llama3"
TEMPLATES = SHARED / "chat_templates"
pytestmark = [pytest.mark.realdata,
              pytest.mark.skipif(not (GSM8K.is_file() and GPT2.is_dir()), reason="../shared/data absent")]
PLAN = C.PlanConfig(pack_len=2048)


def files(run):
    return sorted(json.loads((run / "shards" / "manifest.json").read_text())["files"].items())


@pytest.fixture(scope="module")
def gsm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gsm")
    records = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(records), tmp / "gsm.parquet", row_group_size=2000)
    chats = [[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}] for r in records]
    (tmp / "openai.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    share = [{"conversations": [{"from": "human", "value": r["question"]}, {"from": "gpt", "value": r["answer"]}]}
             for r in records]
    (tmp / "sharegpt.jsonl").write_text("".join(json.dumps(s) + "\n" for s in share))
    pq.write_table(pa.Table.from_pylist(share), tmp / "sharegpt.parquet", row_group_size=3000)
    return tmp


def test_gsm8k_parquet_gives_the_jsonl_shards(gsm):
    tok = load_tokenizer(str(GPT2))
    pack([f"{GSM8K}#query=question,response=answer"], gsm / "jsonl", tokenizer=tok, plan_config=PLAN)
    pack([f"{gsm / 'gsm.parquet'}#query=question,response=answer"], gsm / "parquet", tokenizer=tok, plan_config=PLAN)
    assert files(gsm / "parquet") == files(gsm / "jsonl")


def test_gsm8k_sharegpt_gives_the_openai_shards(gsm):
    tok = load_tokenizer(str(GPT2))
    cfg = C.TokenizeConfig(kind="chat", template="chatml")
    for name in ("openai.jsonl", "sharegpt.jsonl", "sharegpt.parquet"):
        pack([str(gsm / name)], gsm / name.replace(".", "_"), tokenizer=tok, tokenize_config=cfg, plan_config=PLAN)
    assert files(gsm / "sharegpt_jsonl") == files(gsm / "openai_jsonl") == files(gsm / "sharegpt_parquet")


@pytest.mark.skipif(not LLAMA.is_dir(), reason="../shared/data/llama3 absent")
def test_llama31_template_gets_one_bos(tmp_path):
    tok = load_tokenizer(str(LLAMA))
    assert tok.add_bos and tok.bos_id == 128000
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    (tmp_path / "c.jsonl").write_text(json.dumps(chat) + "\n")
    tokenize([str(tmp_path / "c.jsonl")], tmp_path / "tok", C.TokenizeConfig(kind="chat"), tokenizer=tok)
    ids = open_tokenized(tmp_path / "tok")[1][0].column("input_ids")[0].as_py()
    assert ids[0] == 128000 and ids[1] != 128000 and ids.count(128000) == 1
    (tmp_path / "s.jsonl").write_text(json.dumps({"query": "Hi", "response": "Hello!"}) + "\n")
    tokenize([str(tmp_path / "s.jsonl")], tmp_path / "sft", C.TokenizeConfig(), tokenizer=tok)
    ids = open_tokenized(tmp_path / "sft")[1][0].column("input_ids")[0].as_py()
    assert ids[0] == 128000 and ids.count(128000) == 1, "text without a BOS still gets one"


TOOL_CHAT = {
    "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                       "required": ["city"]}}}],
    "messages": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
        {"role": "assistant", "content": "It is 18C and sunny in Paris."}],
}


@pytest.mark.skipif(not (LLAMA.is_dir() and TEMPLATES.is_dir()), reason="../shared/data absent")
@pytest.mark.parametrize("template, call", [
    ("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'),
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'),
])
def test_tool_calling_chat_trains_on_the_calls_and_the_answer(tmp_path, template, call):
    """The tokens are the published template's rendering; the loss covers the assistant's tool call and
    its answer (with the end-of-turn marker), never the tool schema, the user or the tool's result."""
    tok = load_tokenizer(str(LLAMA))
    (tmp_path / "c.jsonl").write_text(json.dumps(TOOL_CHAT) + "\n")
    cfg = C.TokenizeConfig(kind="chat", template=str(TEMPLATES / template))
    tokenize([str(tmp_path / "c.jsonl")], tmp_path / "tok", cfg, tokenizer=tok)
    table = open_tokenized(tmp_path / "tok")[1][0]
    ids = np.asarray(table.column("input_ids")[0].as_py())
    mask = np.asarray(table.column("loss_mask")[0].as_py(), bool)
    t = tok.build()
    cuts = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    trained = [t.decode(r.tolist(), skip_special_tokens=False) for r, m in zip(np.split(ids, cuts), np.split(mask, cuts))
               if m[0]]
    assert trained[0] == call
    assert trained[1].startswith("It is 18C and sunny in Paris.") and len(trained) == 2
    assert (ids == 128000).sum() == 1
