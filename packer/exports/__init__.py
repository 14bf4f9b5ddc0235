"""`packer export RUN --format F --out DIR`: a verified run's packs in another trainer's format.

One module per format, each with the same function::

    write(shards: ShardSet, tmp: Path, dtype: str | None) -> dict     (what it wrote: files, counts)

    megatron   Megatron-Core indexed datasets (.bin/.idx): tokens, loss mask and cu_seqlens per pack
    hf         a `datasets` save_to_disk folder in TRL's packed schema
    parquet    one row per pack: input_ids, labels, position_ids, cu_seqlens, loss_mask, example_index

Every export reads the shards through ShardSet with verify=True (a damaged run is refused before
anything is written), is written into a temporary folder beside `out` and renamed into place with its
`_export.json` last (packer.core.formats.export), so an export is complete or absent; an existing `out` is never overwritten.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from packer.core.errors import ConfigError
from packer.exports import hf, megatron, parquet
from packer.core.formats.export import write_meta
from packer.core.manifest import remove_stale_temps
from packer.core.formats.shards import ShardSet
from packer.core.runstore import local_run

FORMATS = {"megatron": megatron, "hf": hf, "parquet": parquet}
DTYPES = ("uint16", "int32", "int64")


def export(run: str | Path, fmt: str, out: str | Path, *, dtype: str | None = None) -> dict:
    """Export the shards of `run` (a run or shards folder, or a committed URL) as `fmt` into the new
    folder `out`; returns the export's summary (also written as out/_export.json).

    dtype: the token id type where the format lets you choose (megatron: uint16 or int32; default: the
    smallest that holds the vocabulary); one too small for the vocabulary is refused."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists; remove it or choose another --out (an export never overwrites)")
    shards = ShardSet(local_run(run), verify=True)  # a URL: the committed run, fetched into the cache
    if dtype == "uint16" and shards.vocab_size > 2**16:
        raise ConfigError(f"--dtype uint16 holds ids up to 65,535, but the run's vocabulary has "
                          f"{shards.vocab_size:,} ids; choose --dtype int32")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, locked=False, names=f"{out.name}.")  # of exports killed here before
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        summary = write_meta(tmp, dict(FORMATS[fmt].write(shards, tmp, dtype), format=fmt, source=str(shards.path),
                                       source_manifest_sha256=shards.manifest.get("manifest_sha256"),
                                       pack_len=shards.pack_len, vocab_size=shards.vocab_size))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


__all__ = ["FORMATS", "export"]
