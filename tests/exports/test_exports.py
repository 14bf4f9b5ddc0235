"""`packer export`: each format opened by its consumer's own reader and compared with PackedShards pack by pack."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from packer.core import config as C
from packer.train.reader import PackedShards
from packer.core.errors import ConfigError, FormatError
from packer.exports import export
from packer.pipeline import pack

from conftest import sft_records, write_jsonl


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    data = write_jsonl(tmp / "d.jsonl", sft_records(260, seed=6, long_every=25))
    pack([str(data)], tmp / "run", plan_config=C.PlanConfig(pack_len=512),
         write_config=C.WriteConfig(shard_bytes=24 << 10))
    assert len(list((tmp / "run" / "shards").glob("shard-*.bin"))) > 2, "several shards: exports must join them in order"
    return tmp / "run"


def _items(run):
    ds = PackedShards(run)
    return [ds[i] for i in range(len(ds))]


def test_megatron_export_is_read_by_megatron_core_as_the_same_packs(run, tmp_path):
    pytest.importorskip("megatron.core")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    summary = export(run, "megatron", tmp_path / "mg")
    assert summary["token_dtype"] == "uint16"
    tokens = IndexedDataset(str(tmp_path / "mg" / "packed"))
    mask = IndexedDataset(str(tmp_path / "mg" / "packed_loss_mask"))
    cu = IndexedDataset(str(tmp_path / "mg" / "packed_cu_seqlens"))
    items = _items(run)
    assert len(tokens) == len(mask) == len(cu) == len(items)
    assert np.array_equal(tokens.document_indices, np.arange(len(items) + 1)), "one document per pack"
    shards = PackedShards(run)
    for i, it in enumerate(items):
        assert np.array_equal(tokens[i].astype(np.int64), it["input_ids"].numpy())
        assert np.array_equal(mask[i], shards.arrays(i)["loss_mask"])
        assert np.array_equal(cu[i], it["cu_seqlens"].numpy())


def test_parquet_export_has_one_row_per_pack_equal_to_packedshards(run, tmp_path):
    import pyarrow.parquet as pq

    export(run, "parquet", tmp_path / "pq")
    # the folder itself is the dataset (as Spark, polars and DuckDB read it): the metadata file is
    # named with a leading underscore, so readers by directory skip it
    rows = pq.read_table(tmp_path / "pq").to_pylist()
    items = _items(run)
    assert len(rows) == len(items)
    for row, it in zip(rows, items):
        for key in ("input_ids", "labels", "position_ids", "cu_seqlens", "example_index"):
            assert row[key] == it[key].tolist(), key


def test_hf_export_loads_from_disk_and_trains_through_trls_padding_free_collator(run, tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("trl")

    export(run, "hf", tmp_path / "hf")
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    items = _items(run)
    assert len(ds) == len(items)
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    for a in range(0, len(items), 3):
        rows = [ds[i] for i in range(a, min(a + 3, len(items)))]
        batch = collate(rows)
        mine = items[a:a + 3]
        assert batch["input_ids"][0].tolist() == sum((m["input_ids"].tolist() for m in mine), [])
        assert batch["position_ids"][0].tolist() == sum((m["position_ids"].tolist() for m in mine), [])
        assert batch["labels"][0].tolist() == sum((m["labels"].tolist() for m in mine), []), "same targets"


def test_exports_refuse_damage_existing_folders_and_small_dtypes(run, tmp_path, big_vocab_tok):
    import shutil

    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        export(run, "parquet", tmp_path / "taken")
    broken = tmp_path / "broken"
    shutil.copytree(run / "shards", broken)
    shard = sorted(broken.glob("shard-*.bin"))[0]
    body = bytearray(shard.read_bytes())
    body[-3] ^= 1
    shard.write_bytes(bytes(body))
    with pytest.raises(FormatError, match="checksum"):
        export(broken, "megatron", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*")), "nothing partial"
    big = tmp_path / "big"
    pack([str(write_jsonl(tmp_path / "w.jsonl", [{"query": "w1 w2", "response": "w3"}] * 4))], big,
         tokenizer=big_vocab_tok, plan_config=C.PlanConfig(pack_len=64))
    with pytest.raises(ConfigError, match="uint16 holds ids up to 65,535.*70,000"):
        export(big, "megatron", tmp_path / "big-mg", dtype="uint16")
    assert export(big, "megatron", tmp_path / "big-mg")["token_dtype"] == "int32"


def test_cli_export(run, tmp_path):
    from packer.cli import main

    r = CliRunner().invoke(main, ["export", str(run), "--format", "parquet", "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e" / "_export.json").read_text())["packs"] == len(PackedShards(run))
    r = CliRunner().invoke(main, ["export", str(run), "--format", "parquet", "--out", str(tmp_path / "e")])
    assert r.exit_code != 0 and "already exists" in r.output


def test_export_metadata_golden_and_checked(run, tmp_path):
    """_export.json: its one module (packer.core.formats.export) writes and reads it; the keys below are
    its documented schema (docs/FORMAT.md), and a foreign or edited file is refused by name."""
    from packer.core.errors import FormatError
    from packer.core.formats.export import META, read_meta

    summary = export(run, "megatron", tmp_path / "mg")
    meta = read_meta(tmp_path / "mg")
    assert META == "_export.json" and meta == summary
    assert sorted(meta) == ["export_version", "files", "format", "pack_len", "packs", "prefixes", "source",
                            "source_manifest_sha256", "token_dtype", "vocab_size"]
    assert meta["export_version"] == 1 and meta["format"] == "megatron"
    (tmp_path / "mg" / META).write_text(json.dumps(dict(meta, export_version=0)))
    with pytest.raises(FormatError, match="_export.json: export_version 0"):
        read_meta(tmp_path / "mg")
    (tmp_path / "mg" / META).write_text("[]")
    with pytest.raises(FormatError, match="_export.json"):
        read_meta(tmp_path / "mg")
