"""Every input source gives the same tokens, masks and packs as the same records in JSON Lines:
Parquet (files, folders, globs; chunked by row group), Arrow IPC files and streams, save_to_disk
folders, Python data; plus the schema and type errors that name file, row group, row and column."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from packer.core import config as C
from packer.core.errors import InputError
from packer.build.sources import Columns
from packer.pipeline import pack
from packer.build.tokenize import tokenize
from packer.core.formats.tokenized import open_tokenized

from conftest import sft_records, write_jsonl

PLAN = C.PlanConfig(pack_len=512)


def shard_hashes(run) -> list[str]:
    return sorted(json.loads((run / "shards" / "manifest.json").read_text())["files"].items())


@pytest.fixture(scope="module")
def records():
    return sft_records(300, seed=11, long_every=40)


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory, records):
    tmp = tmp_path_factory.mktemp("jsonl")
    data = write_jsonl(tmp / "d.jsonl", records)
    pack([str(data)], tmp / "run", plan_config=PLAN)
    return tmp / "run"


def test_parquet_row_groups_give_the_jsonl_shards(tmp_path, records, jsonl_run):
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet", row_group_size=70)
    pack([str(tmp_path / "d.parquet")], tmp_path / "run", plan_config=PLAN,
         tokenize_config=C.TokenizeConfig(chunk_records=32))
    assert shard_hashes(tmp_path / "run") == shard_hashes(jsonl_run)
    m, tables = open_tokenized(tmp_path / "run" / "tokenized")
    assert len(m["chunks"]) == 5, "one chunk per row group (70, 70, 70, 70, 20 rows)"
    assert [b.num_rows for b in tables[0].to_batches()] == [32, 32, 6], "written chunk_records at a time"
    assert np.concatenate([t.column("line").to_numpy() for t in tables]).tolist() == list(range(300)), "row of the file"
    inp = m["inputs"][0]
    assert inp["size"] == (tmp_path / "d.parquet").stat().st_size and len(inp["sha256"]) == 64


def test_folders_globs_and_several_files_number_records_in_order(tmp_path, records, jsonl_run):
    (tmp_path / "parts").mkdir()
    for i, a in enumerate(range(0, 300, 100)):  # three files, the glob sorts them
        pq.write_table(pa.Table.from_pylist(records[a:a + 100]), tmp_path / "parts" / f"p{i}.parquet", row_group_size=40)
    for source, name in ((str(tmp_path / "parts" / "*.parquet"), "glob"), (str(tmp_path / "parts"), "folder")):
        pack([source], tmp_path / name, plan_config=PLAN)
        assert shard_hashes(tmp_path / name) == shard_hashes(jsonl_run), name
    m, tables = open_tokenized(tmp_path / "glob" / "tokenized")
    assert [i["path"].rsplit("/", 1)[-1] for i in m["inputs"]] == ["p0.parquet", "p1.parquet", "p2.parquet"]
    assert m["sources"][0]["files"] == [0, 1, 2]
    ex = np.concatenate([t.column("example_index").to_numpy() for t in tables])
    assert ex.tolist() == list(range(300))


def test_mixed_kinds_in_one_run(tmp_path, records, jsonl_run):
    write_jsonl(tmp_path / "a.jsonl", records[:120])
    pq.write_table(pa.Table.from_pylist(records[120:]), tmp_path / "b.parquet", row_group_size=50)
    pack([str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")], tmp_path / "run", plan_config=PLAN)
    assert shard_hashes(tmp_path / "run") == shard_hashes(jsonl_run)


@pytest.mark.parametrize("kind", ["file", "stream", "save_to_disk"])
def test_arrow_inputs(tmp_path, records, jsonl_run, kind):
    table = pa.Table.from_pylist(records)
    if kind == "file":
        path = tmp_path / "d.arrow"
        with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table, max_chunksize=64)
    elif kind == "stream":
        path = tmp_path / "d.arrow"
        with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
            w.write_table(table, max_chunksize=64)
    else:
        datasets = pytest.importorskip("datasets")
        path = tmp_path / "saved"
        datasets.Dataset.from_list(records).save_to_disk(str(path))
    pack([str(path)], tmp_path / "run", plan_config=PLAN, tokenize_config=C.TokenizeConfig(chunk_records=100))
    assert shard_hashes(tmp_path / "run") == shard_hashes(jsonl_run)


def test_python_data(tmp_path, records, jsonl_run):
    pack([iter(records)], tmp_path / "gen", plan_config=PLAN)
    assert shard_hashes(tmp_path / "gen") == shard_hashes(jsonl_run)
    spilled = list((tmp_path / "gen" / "inputs").iterdir())
    assert len(spilled) == 1 and spilled[0].suffix == ".jsonl"
    before = (tmp_path / "gen" / "tokenized" / "manifest.json").stat().st_mtime_ns
    pack([list(records)], tmp_path / "gen", plan_config=PLAN)
    assert (tmp_path / "gen" / "tokenized" / "manifest.json").stat().st_mtime_ns == before, "same data: no work"
    datasets = pytest.importorskip("datasets")
    pack([datasets.Dataset.from_list(records)], tmp_path / "ds", plan_config=PLAN)
    assert shard_hashes(tmp_path / "ds") == shard_hashes(jsonl_run)
    pack([datasets.Dataset.from_list(records).to_iterable_dataset()], tmp_path / "it", plan_config=PLAN)
    assert shard_hashes(tmp_path / "it") == shard_hashes(jsonl_run)
    with pytest.raises(InputError, match="item 1.* is a int, expected a dict"):
        pack([[{"query": "q", "response": "r"}, 3]], tmp_path / "bad", plan_config=PLAN)


def test_a_changed_source_is_tokenized_again(tmp_path, records, byte_tok):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(records[:50]), path)
    a = tokenize([str(path)], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    assert tokenize([str(path)], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)["digest"] == a["digest"]
    pq.write_table(pa.Table.from_pylist(records[:49]), path)
    b = tokenize([str(path)], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    assert b["digest"] != a["digest"] and b["counts"]["records"] == 49


def test_missing_column_names_file_and_columns_before_any_work(tmp_path, byte_tok):
    pq.write_table(pa.table({"question": ["q"], "answer": ["a"]}), tmp_path / "d.parquet")
    with pytest.raises(InputError, match=r"d\.parquet: field 'query' missing \(columns: question, answer\); "
                                         r"name the column with --query-field"):
        tokenize([str(tmp_path / "d.parquet")], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    assert not (tmp_path / "tok").exists()
    ok = tokenize([str(tmp_path / "d.parquet") + "#query=question,response=answer"], tmp_path / "tok",
                  C.TokenizeConfig(), tokenizer=byte_tok)
    assert ok["counts"]["examples"] == 1


def test_wrong_type_names_file_row_group_row_and_column(tmp_path, byte_tok):
    rows = [{"query": f"q{i}", "response": f"r{i}" if i != 6 else "  "} for i in range(10)]
    table = pa.Table.from_pylist(rows)
    with pq.ParquetWriter(tmp_path / "d.parquet", table.schema) as w:
        w.write_table(table.slice(0, 4))
        w.write_table(table.slice(4))
    pq.write_table(pa.table({"query": ["q"] * 3, "response": [1, 2, 3]}), tmp_path / "e.parquet")
    with pytest.raises(InputError, match=r"d\.parquet: row group 1, row 2: field 'response' is empty"):
        tokenize([str(tmp_path / "d.parquet")], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    with pytest.raises(InputError, match=r"e\.parquet: row group 0, row 0: field 'response' is int, expected a string"):
        tokenize([str(tmp_path / "e.parquet")], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    m = tokenize([str(tmp_path / "d.parquet")], tmp_path / "tok", C.TokenizeConfig(skip_bad=True, max_bad="1"),
                 tokenizer=byte_tok)
    assert m["counts"]["skipped"] == 1 and "row group 1, row 2" in m["first_skipped"][0]


def test_chat_records_in_parquet_with_absent_struct_fields(tmp_path, byte_tok):
    """Parquet gives a struct's absent fields as None: they are dropped, not passed as null."""
    rows = [{"messages": [{"role": "user", "content": "hi", "tool_calls": None},
                          {"role": "assistant", "content": "hello", "tool_calls": None}]}] * 5
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "hello"}]}] * 5)
    cfg = C.TokenizeConfig(kind="chat")
    a = tokenize([str(tmp_path / "c.parquet")], tmp_path / "a", cfg, tokenizer=byte_tok)
    b = tokenize([str(tmp_path / "c.jsonl")], tmp_path / "b", cfg, tokenizer=byte_tok)
    assert a["counts"] == b["counts"]


@pytest.mark.parametrize("make, match", [
    (lambda p: str(p / "none-*.parquet"), r"none-\*\.parquet: matches no files"),
    (lambda p: str(p / "missing.parquet"), r"missing\.parquet: no such file"),
    (lambda p: (p / "x.parquet").write_bytes(b"not parquet") and str(p / "x.parquet"),
     r"x\.parquet: is not a readable Parquet file"),
])
def test_bad_paths(tmp_path, byte_tok, make, match):
    with pytest.raises(InputError, match=match):
        tokenize([make(tmp_path)], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)


def test_dataset_dict_folder_says_which_split(tmp_path, byte_tok):
    datasets = pytest.importorskip("datasets")
    d = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"query": "q", "response": "r"}]),
                              "test": datasets.Dataset.from_list([{"query": "q", "response": "r"}])})
    d.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"dd: is a DatasetDict with splits .*train.*; pass one split's folder"):
        tokenize([str(tmp_path / "dd")], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    ok = tokenize([str(tmp_path / "dd" / "train")], tmp_path / "tok", C.TokenizeConfig(), tokenizer=byte_tok)
    assert ok["counts"]["examples"] == 1


def test_sharegpt_parquet_reads_the_system_column(tmp_path, byte_tok):
    rows = [{"system": "Be brief.", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    pq.write_table(pa.Table.from_pylist(rows * 3), tmp_path / "s.parquet")
    write_jsonl(tmp_path / "o.jsonl", [{"messages": [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "yo"}]}] * 3)
    cfg = C.TokenizeConfig(kind="chat")
    a = tokenize([str(tmp_path / "s.parquet")], tmp_path / "a", cfg, tokenizer=byte_tok)
    b = tokenize([str(tmp_path / "o.jsonl")], tmp_path / "b", cfg, tokenizer=byte_tok)
    assert a["counts"] == b["counts"]
    ta, tb = (open_tokenized(tmp_path / d)[1][0] for d in ("a", "b"))
    assert ta.column("input_ids").to_pylist() == tb.column("input_ids").to_pylist()


# JSON Lines byte ranges: the driver learns sizes and counts only; workers read their own bytes.

line_text = st.one_of(st.just(""), st.just("   "), st.integers(0, 10**6).map(lambda n: json.dumps({"q": "x" * (n % 97), "n": n})))


@settings(max_examples=80, deadline=None)
@given(st.lists(line_text, min_size=0, max_size=40), st.sampled_from([b"\n", b"\r\n"]), st.booleans(),
       st.integers(1, 200), st.integers(1, 7), st.integers(1, 64), st.booleans())
def test_jsonl_byte_ranges_read_every_record_once_with_its_line(tmp_path_factory, lines, eol, final_eol, range_bytes,
                                                                chunk_records, read_bytes, gz):
    """However a file is cut into ranges (lines longer than a range, blank lines, CRLF, no final newline)
    and into reads (lines longer than a read, newlines at a read's edge), plain or gzipped, scan + read give every non-blank line exactly once, in order, with its 1-based line number, in chunks
    of at most chunk_records records numbered in order."""
    from packer.build.sources import jsonl, read, scan

    path = tmp_path_factory.mktemp("r") / ("d.jsonl.gz" if gz else "d.jsonl")
    data = eol.join(line.encode() for line in lines) + (eol if final_eol and lines else b"")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    expect = [(i + 1, json.loads(line)) for i, line in enumerate(lines) if line.strip()]
    old = jsonl.RANGE_BYTES, jsonl.READ_BYTES
    try:
        jsonl.RANGE_BYTES, jsonl.READ_BYTES = range_bytes, read_bytes
        chunks = scan([str(path)], chunk_records, [Columns()], sizes=[path.stat().st_size])
        got = [(r.line, r.value) for c in chunks for r in read(c, Columns())]
    finally:
        jsonl.RANGE_BYTES, jsonl.READ_BYTES = old
    assert got == expect
    assert [c.first_record for c in chunks] == list(np.cumsum([0] + [c.records for c in chunks])[:-1])
    assert all(1 <= c.records <= (len(lines) if gz else chunk_records) for c in chunks)  # a stream: one chunk
    assert all(not isinstance(c.payload[0], list) for c in chunks), "no lines travel in a chunk"


def test_jsonl_ranges_give_the_same_run_as_one_range_and_name_the_bad_line(tmp_path, monkeypatch):
    """Many small ranges (counted and read by the pool's workers) give byte-identical shards to one range,
    and a bad line deep in the file is named by its true line number."""
    from packer.build.sources import jsonl

    recs = sft_records(300, seed=5)
    data = write_jsonl(tmp_path / "d.jsonl", recs)
    pack([str(data)], tmp_path / "one", plan_config=PLAN, workers=2)
    monkeypatch.setattr(jsonl, "RANGE_BYTES", 997)
    pack([str(data)], tmp_path / "many", plan_config=PLAN, workers=2)
    tok = json.loads((tmp_path / "many" / "tokenized" / "manifest.json").read_text())
    assert len(tok["chunks"]) > 10
    assert shard_hashes(tmp_path / "one") == shard_hashes(tmp_path / "many")
    lines = data.read_text().splitlines()
    lines[250] = '{"q": "broken'
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:251: malformed JSON"):
        pack([str(tmp_path / "bad.jsonl")], tmp_path / "bad", plan_config=PLAN, workers=2)


def test_a_truncated_arrow_stream_names_the_file(tmp_path, byte_tok):
    """Before: the error of an Arrow stream cut inside a batch named no file ('packer: Expected to be able
    to read 6384 bytes...')."""
    import pyarrow as pa

    from packer.build.tokenize import tokenize
    from packer.core import config as C
    from packer.core.errors import InputError

    t = pa.table({"query": [f"q{i}" for i in range(2000)], "response": ["r" * 50] * 2000})
    with pa.OSFile(str(tmp_path / "s.arrow"), "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
        for b in t.to_batches(max_chunksize=100):
            w.write_batch(b)
    data = (tmp_path / "s.arrow").read_bytes()
    (tmp_path / "cut.arrow").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"cut.arrow: is truncated or damaged \(Expected to be able to read"):
        tokenize([str(tmp_path / "cut.arrow")], tmp_path / "t", C.TokenizeConfig(), tokenizer=byte_tok)


_cell = st.one_of(st.text(st.characters(codec="utf-8"), min_size=1, max_size=12), st.just(" "), st.none())


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(_cell, _cell), min_size=1, max_size=30), st.integers(1, 9), st.integers(1, 7),
       st.sampled_from(["parquet", "arrow"]), st.sampled_from(["sft", "text"]))
def test_tables_rendered_by_column_give_the_per_record_paths_bytes(tmp_path_factory, rows, stored, chunk_records,
                                                                   fmt, kind):
    """The column-at-a-time path for sft and text tables writes the same stage files, byte for byte, as the
    per-record path, whatever the stored row groups or batches and chunk_records, with empty, blank and null
    fields among good ones (skipped with --skip-bad, each counted and placed as the per-record path does)."""
    from packer.build import tokenize as T

    tmp = tmp_path_factory.mktemp("t")
    names = ("query", "response") if kind == "sft" else ("text", "other")
    table = pa.table({names[0]: [a for a, _ in rows], names[1]: [b for _, b in rows]},
                     schema=pa.schema([(names[0], pa.string()), (names[1], pa.string())]))
    path = tmp / f"d.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=stored)
    else:
        with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table, max_chunksize=stored)
    config = C.TokenizeConfig(kind=kind, chunk_records=chunk_records, skip_bad=True, max_bad="100%")
    from packer.build.load_tokenizer import load_tokenizer

    def run(out: str) -> tuple[dict | None, dict[str, bytes]]:
        try:
            manifest = tokenize([str(path)], tmp / out, config, tokenizer=load_tokenizer("byte"))
        except InputError as e:  # every row bad: both paths must say the same
            return {"error": str(e)}, {}
        files = {p.name: p.read_bytes() for p in sorted((tmp / out).iterdir()) if p.suffix == ".arrow"}
        return {k: manifest[k] for k in ("counts", "first_skipped") if k in manifest}, files

    fast = run("fast")
    fields = T._fast_fields
    try:
        T._fast_fields = lambda job, source: None  # every record through the per-record path
        slow = run("slow")
    finally:
        T._fast_fields = fields
    assert fast == slow
