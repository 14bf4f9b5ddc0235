"""The export metadata format: `_export.json`, written last into every folder `packer export` makes.

The leading underscore keeps an export folder a dataset by directory: Spark, pyarrow, polars and DuckDB
skip names that start with `_` or `.` (as Spark's `_SUCCESS`), so `pyarrow.parquet.read_table(OUT)`
reads the packs. One JSON object, sorted keys::

    export_version          1
    format                  the export format (megatron, hf, parquet)
    files                   the data files of the export, by name
    packs                   packs exported
    pack_len, vocab_size    of the run exported
    source                  the shards folder it was read from
    source_manifest_sha256  that folder's manifest seal: which run, exactly
    ...                     keys of the format's own (megatron: token_dtype, prefixes; hf: load)
"""

from __future__ import annotations

import json
from pathlib import Path

from packer.core.errors import FormatError

META = "_export.json"
VERSION = 1
REQUIRED = ("export_version", "format", "files", "packs", "pack_len", "vocab_size", "source", "source_manifest_sha256")
HINT = "run `packer export` again into a new folder"


def write_meta(folder: Path, summary: dict) -> dict:
    """Write `summary` (the common keys above but the version, plus the format's own) as folder/_export.json;
    returns what was written."""
    meta = dict(summary, export_version=VERSION)
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"export metadata lacks {', '.join(missing)}")
    (Path(folder) / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return meta


def read_meta(folder: str | Path) -> dict:
    """The metadata of an export folder, checked for its version and keys; FormatError names the file."""
    path = Path(folder) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(str(path), "missing: the folder is not a complete Packer export", HINT) from None
    except (OSError, ValueError) as e:
        raise FormatError(str(path), f"unreadable ({type(e).__name__})", HINT) from None
    if not isinstance(meta, dict):
        raise FormatError(str(path), f"a JSON {type(meta).__name__}, not an object", HINT)
    if meta.get("export_version") != VERSION:
        raise FormatError(str(path), f"export_version {meta.get('export_version')!r} is not the supported {VERSION}",
                          "export the run again with this version of packer")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise FormatError(str(path), f"lacks {', '.join(missing)}", HINT)
    return meta


__all__ = ["META", "VERSION", "read_meta", "write_meta"]
