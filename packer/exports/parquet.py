"""Packed Parquet: one row per pack, for Megatron-Bridge-style packed Parquet, Spark, DuckDB and polars.

    input_ids      list<int32>   the pack's tokens
    labels         list<int32>   unshifted: the token where it is a target, else -100 (also at each
                                 packed example's first token)
    position_ids   list<int32>   restarting at 0 in every packed example
    loss_mask      list<uint8>   1 where the token is a training target
    cu_seqlens     list<int32>   0, then the end of each packed example
    example_index  list<int64>   per packed example, its record number in the inputs

One row group per shard, written as `packs.parquet`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from packer.exports._packs import list_array, shard_arrays
from packer.core.formats.shards import ShardSet

SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                    ("position_ids", pa.list_(pa.int32())), ("loss_mask", pa.list_(pa.uint8())),
                    ("cu_seqlens", pa.list_(pa.int32())), ("example_index", pa.list_(pa.int64()))])


def table(a) -> pa.Table:
    """One shard's packs as rows (the schema above)."""
    cu, cu_off = a.cu_seqlens()
    cols = [(a.tokens.astype(np.int32), a.pack_offsets), (a.labels.astype(np.int32), a.pack_offsets),
            (a.positions.astype(np.int32), a.pack_offsets), (a.loss_mask, a.pack_offsets), (cu, cu_off),
            (a.example_index.astype(np.int64), a.seg_offsets)]
    return pa.Table.from_arrays([list_array(f, o, fld.type.value_type) for (f, o), fld in zip(cols, SCHEMA)], schema=SCHEMA)


def write(shards: ShardSet, tmp: Path, dtype: str | None) -> dict:
    if dtype not in (None, "int32"):
        from packer.core.errors import ConfigError

        raise ConfigError(f"the parquet export stores ids as int32; --dtype {dtype} does not apply to it")
    rows = 0
    with pq.ParquetWriter(tmp / "packs.parquet", SCHEMA) as w:
        for a in shard_arrays(shards):
            t = table(a)
            w.write_table(t, row_group_size=max(1, t.num_rows))
            rows += t.num_rows
    return {"packs": rows, "files": ["packs.parquet"]}
