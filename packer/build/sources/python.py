"""Python data as an input: a `datasets.Dataset`, an `IterableDataset`, or any iterable of dicts.

The records are written once to a content-addressed file in a spill folder (Parquet for a Dataset, whose
Arrow types it keeps; JSON Lines otherwise), named by its sha256, and that file is the input: it has
an identity like any file, so a rerun with the same data does no work, and the chunks run anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from packer.core.errors import InputError


def spill(data: Any, folder: str | Path) -> str:
    """Write `data` to folder/<sha256>.(parquet|jsonl) (temp name, then rename) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".spill-{os.getpid()}-{id(data)}.tmp"
    suffix = ".jsonl"
    try:
        if _is_map_dataset(data):
            suffix = ".parquet"
            data.to_parquet(str(tmp))
        else:
            if isinstance(data, (str, bytes, dict)) or not hasattr(data, "__iter__"):
                raise InputError(repr(data)[:60], None, None, f"is a {type(data).__name__}, not a path, a dataset "
                                 "or an iterable of dicts", "pass a path, a datasets.Dataset or a list of dicts")
            with open(tmp, "w", encoding="utf-8") as f:
                for i, rec in enumerate(data):
                    if not isinstance(rec, dict):
                        raise InputError(f"{type(data).__name__} item {i}", None, None,
                                         f"is a {type(rec).__name__}, expected a dict")
                    try:
                        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    except (TypeError, ValueError) as e:
                        raise InputError(f"{type(data).__name__} item {i}", None, None,
                                         f"cannot be stored as JSON ({e})", "convert the value to str") from None
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        dest = folder / f"{h.hexdigest()[:32]}{suffix}"
        os.replace(tmp, dest)
        return str(dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _is_map_dataset(data: Any) -> bool:
    return type(data).__name__ == "Dataset" and hasattr(data, "to_parquet") and hasattr(data, "features")
