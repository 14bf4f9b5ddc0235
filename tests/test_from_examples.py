"""pack_dataset and packed_dataset_from_files: the few-lines API on top of the pipeline."""

from __future__ import annotations

import threading
import time

import pytest

import packer
from packer.core.errors import InputError

from conftest import write_jsonl


def test_pack_dataset_items_and_over_long(tmp_path):
    exs = [{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}, {"input_ids": [5, 6], "labels": [5, 6]},
           {"input_ids": list(range(10, 30)), "labels": list(range(10, 30))}]
    ds = packer.pack_dataset(exs, 8, out=tmp_path / "run")
    seen = _by_example(ds)
    assert seen[0] == ([1, 2, 3, 4], [-100, -100, 3, 4])
    assert seen[1] == ([5, 6], [-100, 6])
    assert seen[2] == (list(range(10, 18)), [-100] + list(range(11, 18))), "truncated to the pack length"
    assert ds.manifest["counts"]["truncated_examples"] == 1 and ds.manifest["counts"]["truncated_tokens"] == 12
    before = (tmp_path / "run" / "shards" / "manifest.json").stat().st_mtime_ns
    again = packer.pack_dataset(exs, 8, out=tmp_path / "run")
    assert (tmp_path / "run" / "shards" / "manifest.json").stat().st_mtime_ns == before, "reused, not rebuilt"
    assert len(again) == len(ds)


def test_pack_dataset_from_hf_datasets():
    datasets = pytest.importorskip("datasets")
    d = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3, 4, 5], [6, 7, 8]],
                                    "labels": [[1, 2], [-100, -100, 5], [-100, 7, -100]]})
    ds = packer.pack_dataset(d, 8)
    assert len(ds) == 1, "8 tokens fill one pack of 8"
    assert _by_example(ds) == {0: ([1, 2], [-100, 2]), 1: ([3, 4, 5], [-100, -100, 5]), 2: ([6, 7, 8], [-100, 7, -100])}, \
        "the Dataset's labels decide the loss, exactly as a list of dicts would"
    again = packer.pack_dataset(d, 8)
    assert again[0]["input_ids"].tolist() == ds[0]["input_ids"].tolist(), \
        "the pack order is deterministic"


@pytest.mark.parametrize("bad,pattern", [
    ([{"ids": [1]}], r"examples:0: field 'input_ids' missing \(keys: ids\)"),
    ([{"input_ids": [1, 2], "labels": [1]}], r"examples:0: field 'labels' has 1 entries, input_ids has 2"),
    ([{"input_ids": [1]}, {"input_ids": []}], r"examples:1: field 'input_ids' is empty"),
    ([{"input_ids": [1], "labels": [1]}, {"input_ids": [2]}], r"examples:1: field 'labels' present in some"),
    ([{"input_ids": ["a"]}], r"examples:0: field 'input_ids' must be a list of integer"),
])
def test_pack_dataset_bad_examples(bad, pattern):
    with pytest.raises(InputError, match=pattern):
        packer.pack_dataset(bad, 8)


def test_several_files_each_with_its_fields_are_all_packed(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"question": f"qa{i}", "answer": f"ra{i}"} for i in range(5)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"qb{i}", "output": f"rb{i}"} for i in range(3)])
    files = [f"{a}#query=question,response=answer", f"{b}#query=prompt,response=output"]
    ds = packer.packed_dataset_from_files(files, "byte", 512, cache_dir=tmp_path / "cache")
    examples = sorted(e for i in range(len(ds)) for e in ds[i]["example_index"].tolist())
    assert examples == list(range(8)), "records of both files, not only the last file's"
    assert [f["examples"] for f in ds.manifest["inputs"]] == [5, 3]
    runs = list((tmp_path / "cache").iterdir())
    ds2 = packer.packed_dataset_from_files(files, "byte", 512, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == runs and len(ds2) == len(ds), "second call reuses the cache"
    with pytest.raises(InputError, match=r"b\.jsonl:1: field 'query' missing \(keys: output, prompt\)"):
        packer.packed_dataset_from_files([files[0], str(b)], "byte", 512, cache_dir=tmp_path / "cache")


def test_non_zero_rank_waits_for_rank_zero(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", [{"query": "q", "response": "r"}] * 4)
    got = {}

    def rank1():
        monkeypatch.setenv("RANK", "1")
        got["ds"] = packer.packed_dataset_from_files([str(data)], "byte", 512, cache_dir=tmp_path / "c",
                                                     wait_seconds=30)

    monkeypatch.setenv("RANK", "1")
    t = threading.Thread(target=rank1)
    t.start()
    time.sleep(1.0)
    assert "ds" not in got, "rank 1 must wait for rank 0"
    monkeypatch.setenv("RANK", "0")
    ds0 = packer.packed_dataset_from_files([str(data)], "byte", 512, cache_dir=tmp_path / "c")
    t.join(30)
    assert len(got["ds"]) == len(ds0)


def _by_example(ds):
    seen = {}
    for i in range(len(ds)):
        item = ds[i]
        cu = item["cu_seqlens"].tolist()
        for s, ex in enumerate(item["example_index"].tolist()):
            seen[ex] = (item["input_ids"][cu[s]:cu[s + 1]].tolist(), item["labels"][cu[s]:cu[s + 1]].tolist())
    return seen


def test_pack_dataset_takes_pre_shifted_labels():
    exs = [{"input_ids": [1, 2, 3, 4], "labels": [-100, 3, 4, -100]}, {"input_ids": [5, 6, 7], "labels": [6, 7, -100]}]
    seen = _by_example(packer.pack_dataset(exs, 16, input_labels="shifted"))
    assert seen[0] == ([1, 2, 3, 4], [-100, -100, 3, 4])
    assert seen[1] == ([5, 6, 7], [-100, 6, 7])
    shifted = _by_example(packer.pack_dataset(exs, 16, input_labels="shifted", label_mode="shifted"))
    assert shifted[0][1] == exs[0]["labels"] and shifted[1][1] == exs[1]["labels"], "round trip"


@pytest.mark.parametrize("labels,mode,match", [
    ([-100, 9, 3, 4], "unshifted", r"\[1\] is 9, expected 2 or -100"),         # custom target
    ([-100, 3, 4, -100], "unshifted", r"\[1\] is 3, expected 2 or -100.*input_labels='shifted'"),  # shifted given
    ([2, 3, 4, 5], "shifted", r"\[3\] is 5, expected -100"),                        # last token predicts past the end
    ([1, 2, 3, 4], "shifted", r"\[0\] is 1, expected 2 or -100.*input_labels='unshifted'"),
])
def test_pack_dataset_refuses_labels_it_would_change(labels, mode, match):
    with pytest.raises(InputError, match="examples:0: field 'labels' " + match):
        packer.pack_dataset([{"input_ids": [1, 2, 3, 4], "labels": labels}], 8, input_labels=mode)
    with pytest.raises(packer.ConfigError, match="input_labels 'both'"):
        packer.pack_dataset([{"input_ids": [1, 2], "labels": [1, 2]}], 8, input_labels="both")


def test_pack_dataset_output_feeds_the_loader_without_an_eos_id(tmp_path):
    """pack_dataset leaves eos_id None; the loader pads with an inert 0 instead of failing."""
    exs = [{"input_ids": list(range(1, 1 + n))} for n in (5, 9, 3, 12, 7, 2)]
    ds = packer.pack_dataset(exs, 16, out=tmp_path / "run")
    assert ds.manifest["tokenizer"]["eos_id"] is None
    batches = list(packer.PackedLoader(tmp_path / "run", 2, drop_last=False))
    assert batches and all(int(b["input_ids"][b["labels"] == -100].min()) >= 0 for b in batches)
    assert sum(b["num_tokens"] for b in batches) >= sum(len(e["input_ids"]) for e in exs)


@pytest.mark.parametrize("pack_len", [5, 13, 25, 1001])
def test_odd_pack_lengths_pack_without_context_parallelism(pack_len):
    """Only context parallelism needs pack lengths divisible by 2 x cp_size; at cp_size 1 any length packs
    (other projects' packing tests use 5, 13 and 25), every token exactly once and no pack over the length."""
    lengths = [1, 2, 3, 4, 5, 3, 2, 5, 1]
    exs = [{"input_ids": [10 * i + j + 1 for j in range(n)]} for i, n in enumerate(lengths)]
    ds = packer.pack_dataset(exs, pack_len, overlong="drop")
    got = sorted(t for i in range(len(ds)) for t in ds[i]["input_ids"].tolist())
    assert got == sorted(t for e in exs for t in e["input_ids"]) and all(len(ds[i]["input_ids"]) <= pack_len
                                                                         for i in range(len(ds)))


def test_odd_pack_length_with_context_parallelism_is_still_refused():
    from packer.core.config import PlanConfig
    from packer.core.errors import ConfigError

    PlanConfig(pack_len=1001)  # no CP: fine
    with pytest.raises(ConfigError, match="not divisible by 2 x cp_size = 4"):
        PlanConfig(pack_len=1001, cp_size=2)
