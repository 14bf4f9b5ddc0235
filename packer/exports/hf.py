"""A `datasets` dataset on disk in TRL's packed schema: `datasets.load_from_disk(OUT)` opens it and TRL's
padding-free collator (`DataCollatorForLanguageModeling(padding_free=True)`) trains on it as it is.
The whole run is held in memory while it is written (one copy of its packs as int32).

    input_ids        list<int32>   one row per pack
    seq_lengths      list<int32>   the packed examples' lengths (TRL derives position_ids from them)
    position_ids     list<int32>   restarting at 0 in every packed example
    labels           list<int32>   unshifted, -100 where no loss (TRL reads `labels` when present)
    completion_mask  list<uint8>   1 where the token is a training target

Written with `datasets.Dataset.save_to_disk` (pip install datasets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from packer.core.errors import ConfigError
from packer.exports._packs import list_array, shard_arrays
from packer.core.formats.shards import ShardSet


def write(shards: ShardSet, tmp: Path, dtype: str | None) -> dict:
    try:
        import datasets
    except ImportError:
        raise ConfigError("the hf export needs datasets: pip install datasets") from None
    if dtype not in (None, "int32"):
        raise ConfigError(f"the hf export stores ids as int32; --dtype {dtype} does not apply to it")
    tables = []
    for a in shard_arrays(shards):
        tables.append(pa.table({
            "input_ids": list_array(a.tokens.astype(np.int32), a.pack_offsets, pa.int32()),
            "seq_lengths": list_array(a.seg_lens.astype(np.int32), a.seg_offsets, pa.int32()),
            "position_ids": list_array(a.positions.astype(np.int32), a.pack_offsets, pa.int32()),
            "labels": list_array(a.labels.astype(np.int32), a.pack_offsets, pa.int32()),
            "completion_mask": list_array(a.loss_mask, a.pack_offsets, pa.uint8()),
        }))
    ds = datasets.Dataset(pa.concat_tables(tables))
    ds.save_to_disk(str(tmp))
    return {"packs": len(ds), "files": sorted(p.name for p in tmp.iterdir()), "load": "datasets.load_from_disk(OUT)"}
